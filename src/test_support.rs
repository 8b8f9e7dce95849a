//! What the unit tests of several modules share: a single-threaded tokio runtime and
//! an event log that drops its lines. Test builds only.

use crate::server::{EventLog, LogLevel};

/// A current-thread runtime with I/O and timers.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Runs `future` to completion on a fresh `runtime()`.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    runtime().block_on(future)
}

/// An event log that keeps nothing.
pub struct Quiet;

impl EventLog for Quiet {
    fn log(&self, _level: LogLevel, _message: String) {}
}

//! What the unit tests of several modules share: a single-threaded tokio runtime, an
//! event log that drops its lines, a parsed request head and a Unix connection's
//! facts. Test builds only.

use std::sync::Arc;

use bytes::BytesMut;

use crate::http::request::{HeadParser, RequestHead};
use crate::server::conn_info::{ConnInfo, ListenerInfo, ListenerKind, Peer};
use crate::server::shutdown::ShutdownSignal;
use crate::server::{EventLog, LogLevel};

/// The head of `raw`, a complete request head.
pub fn head(raw: &[u8]) -> RequestHead {
    HeadParser::new()
        .parse(&mut BytesMut::from(raw), &Default::default())
        .expect("a valid head")
        .expect("a complete head")
}

/// What the application side knows of a connection on a Unix listener.
pub fn unix_conn_info(shutdown: Arc<ShutdownSignal>) -> ConnInfo {
    let listener = Arc::new(ListenerInfo {
        kind: ListenerKind::Unix,
        security: crate::server::conn_info::Security::Cleartext,
        server_port: "test".into(),
        app_data: Default::default(),
    });
    ConnInfo::new(Peer::Unix, listener, shutdown)
}

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

//! Log lines to Python's `logging` (loggers `tapster` and `tapster.queue`).
//!
//! Worker threads hold the GIL and log directly. The I/O threads must never take the
//! GIL, so their lines are queued on the `Control` and written by the thread blocked in
//! `Server.run()`, which wakes for them.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::server::{EventLog, LogLevel};

pub fn python_level(level: LogLevel) -> i32 {
    match level {
        LogLevel::Debug => 10,
        LogLevel::Info => 20,
        LogLevel::Warning => 30,
        LogLevel::Error => 40,
    }
}

/// The Python loggers Tapster writes to.
pub struct Loggers {
    pub main: Py<PyAny>,
    pub queue: Py<PyAny>,
}

impl Loggers {
    pub fn new(py: Python<'_>) -> PyResult<Loggers> {
        let logging = py.import("logging")?;
        Ok(Loggers {
            main: logging.call_method1("getLogger", ("tapster",))?.unbind(),
            queue: logging
                .call_method1("getLogger", ("tapster.queue",))?
                .unbind(),
        })
    }

    /// Logs `message` on the `tapster` logger. Logging errors are reported by `logging`
    /// itself and never escape.
    pub fn log(&self, py: Python<'_>, level: LogLevel, message: &str) {
        log_to(py, &self.main, level, message, None);
    }

    /// Logs `message` with the traceback of `err` (like `logger.exception`).
    pub fn exception(&self, py: Python<'_>, message: &str, err: &PyErr) {
        let info = PyTuple::new(
            py,
            [
                err.get_type(py).into_any(),
                err.value(py).clone().into_any(),
                err.traceback(py)
                    .map(|t| t.into_any())
                    .unwrap_or_else(|| py.None().into_bound(py)),
            ],
        )
        .ok();
        log_to(py, &self.main, LogLevel::Error, message, info.as_ref());
    }
}

pub fn log_to(
    py: Python<'_>,
    logger: &Py<PyAny>,
    level: LogLevel,
    message: &str,
    exc_info: Option<&Bound<'_, PyTuple>>,
) {
    let logger = logger.bind(py);
    let result = match exc_info {
        Some(info) => {
            let kwargs = pyo3::types::PyDict::new(py);
            let _ = kwargs.set_item("exc_info", info);
            logger.call_method("log", (python_level(level), "%s", message), Some(&kwargs))
        }
        None => logger.call_method1("log", (python_level(level), "%s", message)),
    };
    if let Err(err) = result {
        err.print(py);
    }
}

/// What the I/O side asks of the thread running `Server.run()`.
#[derive(Default)]
struct ControlState {
    close_requested: bool,
    /// (to the queue logger?, level, line)
    lines: Vec<(bool, LogLevel, String)>,
}

/// The mailbox of the thread blocked in `Server.run()`: close requests and log lines.
#[derive(Default)]
pub struct Control {
    state: Mutex<ControlState>,
    wake: Condvar,
}

impl Control {
    fn lock(&self) -> std::sync::MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn request_close(&self) {
        self.lock().close_requested = true;
        self.wake.notify_all();
    }

    pub fn close_requested(&self) -> bool {
        self.lock().close_requested
    }

    /// Blocks until there is something to do or `timeout` passes (call without the GIL).
    pub fn wait(&self, timeout: Option<Duration>) {
        let state = self.lock();
        if state.close_requested || !state.lines.is_empty() {
            return;
        }
        let _unused = match timeout {
            Some(t) => {
                self.wake
                    .wait_timeout(state, t)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => self.wake.wait(state).unwrap_or_else(|e| e.into_inner()),
        };
    }

    /// Writes queued lines to the `tapster` logger.
    pub fn flush_logs(&self, py: Python<'_>, loggers: &Loggers) {
        let lines = std::mem::take(&mut self.lock().lines);
        for (queue, level, line) in lines {
            let logger = if queue { &loggers.queue } else { &loggers.main };
            log_to(py, logger, level, &line, None);
        }
    }
}

impl EventLog for Control {
    fn log(&self, level: LogLevel, message: String) {
        self.lock().lines.push((false, level, message));
        self.wake.notify_all();
    }

    fn log_queue(&self, level: LogLevel, message: String) {
        self.lock().lines.push((true, level, message));
        self.wake.notify_all();
    }
}

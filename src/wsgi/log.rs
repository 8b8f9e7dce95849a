//! Log lines to Python's `logging` (loggers `tapster` and `tapster.queue`).
//!
//! Worker threads hold the GIL and log directly. The I/O threads must never take the
//! GIL, so their lines are queued on the `Control` and written by the thread blocked in
//! `Server.run()`, which wakes for them.
//!
//! A logging call on the main thread may run a pending signal handler, and what that
//! raises (SystemExit, KeyboardInterrupt) is the signal's meaning: it is kept, not
//! printed, for `Server.run()` to act on (`take_interrupt`).

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
    /// What a signal handler raised inside a logging call, until `take_interrupt`.
    interrupt: Mutex<Option<PyErr>>,
}

impl Loggers {
    pub fn new(py: Python<'_>) -> PyResult<Loggers> {
        let logging = py.import("logging")?;
        Ok(Loggers {
            main: logging.call_method1("getLogger", ("tapster",))?.unbind(),
            queue: logging
                .call_method1("getLogger", ("tapster.queue",))?
                .unbind(),
            interrupt: Mutex::new(None),
        })
    }

    /// What a signal handler raised during a logging call since the last call (the
    /// first such exception; later ones are dropped, as a second identical signal).
    pub fn take_interrupt(&self) -> Option<PyErr> {
        self.interrupt
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Logs `message` on the `tapster` logger. Logging errors are reported by `logging`
    /// itself and never escape.
    pub fn log(&self, py: Python<'_>, level: LogLevel, message: &str) {
        self.write(py, &self.main, level, message, None);
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
        self.write(py, &self.main, LogLevel::Error, message, info.as_ref());
    }

    fn write(
        &self,
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
        let Err(err) = result else { return };
        if err.is_instance_of::<pyo3::exceptions::PyException>(py) {
            // A broken handler: report it as logging would, and go on.
            err.print(py);
        } else {
            let mut kept = self.interrupt.lock().unwrap_or_else(|e| e.into_inner());
            kept.get_or_insert(err);
        }
    }
}

/// What the I/O side asks of the thread running `Server.run()`.
#[derive(Default)]
struct ControlState {
    close_requested: bool,
    /// A signal arrived (see `Control::wake`): look at it now.
    woken: bool,
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

    /// Makes `wait` return now (a signal arrived).
    pub fn wake(&self) {
        self.lock().woken = true;
        self.wake.notify_all();
    }

    /// Blocks until there is something to do or `timeout` passes (call without the GIL).
    pub fn wait(&self, timeout: Option<Duration>) {
        let mut state = self.lock();
        if std::mem::take(&mut state.woken) || state.close_requested || !state.lines.is_empty() {
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
            loggers.write(py, logger, level, &line, None);
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

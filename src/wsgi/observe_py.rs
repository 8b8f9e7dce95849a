//! The Python side of observability: the access log's Python-logger sink
//! (`access_log_logger`, which costs the GIL once per batch, on the writer thread), and
//! the functions the supervisor and the tests call to manage the metrics region.

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;

use crate::observe::access_log::LineSink;
use crate::observe::metrics;

/// Sends access-log lines to the Python logger `tapster.access` at INFO.
pub struct LoggerSink {
    logger: Py<PyAny>,
}

impl LoggerSink {
    pub fn new(py: Python<'_>) -> PyResult<LoggerSink> {
        let logger = py
            .import("logging")?
            .call_method1("getLogger", ("tapster.access",))?
            .unbind();
        Ok(LoggerSink { logger })
    }
}

impl LineSink for LoggerSink {
    fn write_lines(&mut self, lines: &[u8]) {
        Python::attach(|py| {
            let logger = self.logger.bind(py);
            for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                // Lines are ASCII (the format escapes everything else).
                let text = String::from_utf8_lossy(line);
                if let Err(err) = logger.call_method1("info", ("%s", text.as_ref())) {
                    err.print(py);
                }
            }
        });
    }
}

/// Makes the metrics region shared with the processes forked from now on (the
/// supervisor, before its first fork), recording `supervisor_pid` as its maker.
#[pyfunction]
pub fn metrics_create(supervisor_pid: u32) -> PyResult<()> {
    metrics::create().map_err(|e| PyOSError::new_err(format!("metrics region: {e}")))?;
    metrics::set_supervisor(supervisor_pid);
    Ok(())
}

/// A metrics slot no process uses, other than those in `taken` (None: all in use).
#[pyfunction]
pub fn metrics_free_slot(taken: Vec<usize>) -> Option<usize> {
    metrics::free_slot(&taken)
}

/// This process records its metrics in `slot` (a worker, right after the fork).
#[pyfunction]
pub fn metrics_attach(slot: usize) -> PyResult<()> {
    metrics::attach(slot).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// The worker that had `slot` is gone.
#[pyfunction]
pub fn metrics_release(slot: usize) {
    metrics::release(slot);
}

#[pyfunction]
pub fn metrics_worker_started() {
    metrics::worker_started();
}

/// A worker ended for `reason` (one of the `reason` label's values).
#[pyfunction]
pub fn metrics_worker_exited(reason: &str) -> PyResult<()> {
    metrics::worker_exited(reason).map_err(PyValueError::new_err)
}

/// The Prometheus text, as `/metrics` serves it (None: no metrics here).
#[pyfunction]
pub fn metrics_text() -> Option<String> {
    metrics::render()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(metrics_create, m)?)?;
    m.add_function(wrap_pyfunction!(metrics_free_slot, m)?)?;
    m.add_function(wrap_pyfunction!(metrics_attach, m)?)?;
    m.add_function(wrap_pyfunction!(metrics_release, m)?)?;
    m.add_function(wrap_pyfunction!(metrics_worker_started, m)?)?;
    m.add_function(wrap_pyfunction!(metrics_worker_exited, m)?)?;
    m.add_function(wrap_pyfunction!(metrics_text, m)?)?;
    Ok(())
}

//! Tapster: a WSGI server whose HTTP engine is written in Rust.
//!
//! `http` is the sans-IO protocol layer, `server` owns sockets and the async runtime,
//! `wsgi` is the only module that touches Python. This file only exposes the Python
//! module `tapster._tapster`.

pub mod config;
pub mod http;
pub mod observe;
pub mod proxy;
pub mod server;
#[cfg(test)]
pub mod test_support;
pub mod threads;
pub mod watch;
pub mod wsgi;

use pyo3::prelude::*;

#[pymodule]
fn _tapster(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<wsgi::py_server::PyServer>()?;
    m.add_class::<wsgi::options::EngineConfig>()?;
    m.add_class::<wsgi::file_wrapper::FileWrapper>()?;
    m.add_class::<wsgi::input::Input>()?;
    m.add_class::<wsgi::watcher::FileWatcher>()?;
    m.add(
        "ClientDisconnected",
        py.get_type::<wsgi::start_response::ClientDisconnected>(),
    )?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(pyo3::wrap_pyfunction!(stats, m)?)?;
    wsgi::observe_py::register(m)?;
    m.add("ENGINE_OPTIONS", wsgi::options::ENGINE_OPTIONS.to_vec())?;
    m.add("ACCESS_LOG_COMBINED", observe::access_format::COMBINED)?;
    Ok(())
}

/// Process-wide counters, for tests and monitoring: how many requests went to the
/// application, how many responses went out with `sendfile(2)` and how many bytes,
/// and how many worker threads a shutdown left inside the application.
#[pyfunction]
fn stats(py: Python<'_>) -> PyResult<Bound<'_, pyo3::types::PyDict>> {
    use std::sync::atomic::Ordering;
    let d = pyo3::types::PyDict::new(py);
    d.set_item(
        "sendfile_responses",
        server::responder::SENDFILE_RESPONSES.load(Ordering::Relaxed),
    )?;
    d.set_item(
        "sendfile_bytes",
        server::responder::SENDFILE_BYTES.load(Ordering::Relaxed),
    )?;
    d.set_item("requests", wsgi::pool::REQUESTS.load(Ordering::Relaxed))?;
    d.set_item(
        "request_timeouts",
        wsgi::monitor::TIMED_OUT.load(Ordering::Relaxed),
    )?;
    d.set_item(
        "abandoned_threads",
        wsgi::pool::ABANDONED_THREADS.load(Ordering::Relaxed),
    )?;
    Ok(d)
}

//! Tapster: a WSGI server whose HTTP engine is written in Rust.
//!
//! `http` is the sans-IO protocol layer, `server` owns sockets and the async runtime,
//! `wsgi` is the only module that touches Python. This file only exposes the Python
//! module `tapster._tapster`.

pub mod config;
pub mod http;
pub mod server;
pub mod wsgi;

use pyo3::prelude::*;

#[pymodule]
fn _tapster(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<wsgi::py_server::PyServer>()?;
    m.add_class::<wsgi::file_wrapper::FileWrapper>()?;
    m.add_class::<wsgi::input::Input>()?;
    m.add(
        "ClientDisconnected",
        py.get_type::<wsgi::start_response::ClientDisconnected>(),
    )?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

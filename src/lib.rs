//! Tapster: a WSGI server whose HTTP engine is written in Rust.
//!
//! `http` is the sans-IO protocol layer, `server` owns sockets and the async runtime,
//! `wsgi` is the only module that touches Python. This file only exposes the Python
//! module `tapster._tapster`.

pub mod http;

//! The only part of Tapster that touches Python: the engine options as Python hands
//! them over, the worker pool that runs the application with the GIL, the exchange
//! driver, the environ, `wsgi.input`, `start_response` and `write`,
//! `wsgi.file_wrapper`, error pages and logging.
//!
//! Everything that could block on a socket is handed to `server::Responder` with the
//! GIL released.

pub mod environ;
pub mod exchange;
pub mod file_wrapper;
pub mod input;
pub mod log;
pub mod monitor;
pub mod observe_py;
pub mod options;
pub mod pool;
pub mod py_server;
pub mod signals;
pub mod start_response;
pub mod watcher;

/// The options that shape what the application sees (the rest live in `Config`).
#[derive(Clone, Debug)]
pub struct WsgiConfig {
    /// Default `wsgi.url_scheme`.
    pub url_scheme: String,
    /// SCRIPT_NAME; stripped from the front of PATH_INFO.
    pub url_prefix: String,
    /// SERVER_NAME for every request.
    pub server_name: String,
    /// Put the traceback in the body of a 500 page.
    pub expose_tracebacks: bool,
    /// Trusted proxies and what to believe from them; also whether to remove and log
    /// forwarding headers that are not trusted.
    pub proxy: crate::proxy::ProxyConfig,
}

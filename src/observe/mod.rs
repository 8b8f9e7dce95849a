//! What the server tells its operator: the access log's format and its writer, and the
//! metrics kept in shared memory across worker processes. Plain data, files and atomics:
//! no sockets (the metrics listener is `server/`'s) and no Python (the logger sink is
//! `wsgi/`'s).

pub mod access_format;
pub mod access_log;
pub mod metrics;

/// Who answered a request, for the metrics' `handler` label and the JSON access log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Handler {
    /// The WSGI application.
    #[default]
    Application,
    /// A `static` mount.
    Static,
    /// The server itself, for a request that never reached either (400, 408, 413...).
    Server,
}

impl Handler {
    pub const ALL: [Handler; 3] = [Handler::Application, Handler::Static, Handler::Server];

    pub fn name(self) -> &'static str {
        match self {
            Handler::Application => "application",
            Handler::Static => "static",
            Handler::Server => "server",
        }
    }
}

//! What the server tells its operator: the access log's format and its writer, and the
//! metrics kept in shared memory across worker processes. Plain data, files and atomics:
//! no sockets (the metrics listener is `server/`'s) and no Python (the logger sink is
//! `wsgi/`'s).

pub mod access_format;
pub mod access_log;
pub mod metrics;

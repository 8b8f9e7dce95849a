//! What crosses from the server to the application side and back: a complete
//! `Request` (head, body, connection facts and the response's `Responder`), the
//! `Dispatcher` that takes it, and the `EventLog` the server writes its own lines to.
//! Plain types and traits; no sockets, no Python.

use std::sync::Arc;

use super::conn_info::ConnInfo;
use super::responder::Responder;
use super::spool::Body;
use crate::http::RequestHead;

/// One complete request, head and body, handed to the application side.
pub struct Request {
    pub head: RequestHead,
    pub body: Body,
    pub conn: Arc<ConnInfo>,
    pub responder: Arc<Responder>,
}

/// Receives complete requests. Implementations must not block: queue and return.
pub trait Dispatcher: Send + Sync + 'static {
    /// Queues a complete request. Waking whoever will run it may be deferred until
    /// `flush`, so a burst of requests read together costs one wake-up.
    fn dispatch(&self, request: Request);

    /// Called by an I/O thread just before it goes to sleep: start the work that
    /// `dispatch` deferred. Must be cheap when there is none.
    fn flush(&self) {}
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Debug,
    Info,
    Warning,
    Error,
}

/// Where the server's own log lines go (the Python `logging` module, in production).
pub trait EventLog: Send + Sync + 'static {
    /// A line for the main logger (`tapster`).
    fn log(&self, level: LogLevel, message: String);

    /// A line about the request queue (logger `tapster.queue`).
    fn log_queue(&self, level: LogLevel, message: String) {
        self.log(level, message);
    }
}

//! Sockets and the async runtime: listeners, the accept loop, one task per connection
//! (read, parse, buffer the body, dispatch, write, keep-alive, timeouts), buffers that
//! spill to temporary files, sendfile, and graceful shutdown.
//!
//! Nothing here knows about Python. A complete request goes out through the
//! `Dispatcher` trait; its response comes back through a `Responder`; log lines go out
//! through the `EventLog` trait.

pub mod budget;
pub mod connection;
pub mod listener;
pub mod responder;
pub mod socket;
pub mod spool;

use std::any::Any;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use crate::http::RequestHead;

pub use listener::{start, ListenerInfo, ListenerKind, ListenerSpec, Running};
pub use responder::{ClientGone, FileSegment, Responder};
pub use spool::Body;

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

/// The client's address.
#[derive(Clone, Debug)]
pub enum Peer {
    Tcp(SocketAddr),
    Unix,
}

/// Where the application side may keep its own data about a connection or a listener
/// (ready-made Python strings, say), built once and reused by every request on it. The
/// server never looks inside.
#[derive(Default)]
pub struct AppSlot(OnceLock<Box<dyn Any + Send + Sync>>);

impl AppSlot {
    /// The cached value, built by `init` on first use. `None` if a value of another
    /// type was stored.
    pub fn get_or_try_init<T, E>(
        &self,
        init: impl FnOnce() -> Result<T, E>,
    ) -> Result<Option<&T>, E>
    where
        T: Any + Send + Sync,
    {
        if self.0.get().is_none() {
            let value = init()?;
            let _ = self.0.set(Box::new(value));
        }
        Ok(self.0.get().and_then(|v| v.downcast_ref::<T>()))
    }
}

/// What the application side may know about the connection a request came on.
pub struct ConnInfo {
    pub peer: Peer,
    pub listener: Arc<ListenerInfo>,
    /// Per-connection data of the application side.
    pub app_data: AppSlot,
    disconnected: AtomicBool,
    closing: Arc<AtomicBool>,
}

impl ConnInfo {
    pub fn new(peer: Peer, listener: Arc<ListenerInfo>, closing: Arc<AtomicBool>) -> ConnInfo {
        ConnInfo {
            peer,
            listener,
            app_data: AppSlot::default(),
            disconnected: AtomicBool::new(false),
            closing,
        }
    }

    /// The client closed or reset the connection, or a write to it failed.
    pub fn client_disconnected(&self) -> bool {
        self.disconnected.load(Ordering::Acquire)
    }

    pub(crate) fn set_disconnected(&self) {
        self.disconnected.store(true, Ordering::Release);
    }

    /// The server is shutting down: responses should close their connection.
    pub fn server_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }
}

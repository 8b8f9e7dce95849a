//! What the application side may know about a connection and the listener it came
//! on, and where it may keep its own per-connection data. Plain data; the connection
//! task sets the flags, nothing here does I/O.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use super::shutdown::ShutdownSignal;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    Tcp,
    Unix,
}

/// What a request learns about the listener it arrived on.
pub struct ListenerInfo {
    pub kind: ListenerKind,
    /// SERVER_PORT: the bound port, or the socket path for a Unix socket.
    pub server_port: String,
    /// Per-listener data of the application side.
    pub app_data: AppSlot,
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
    shutdown: Arc<ShutdownSignal>,
}

impl ConnInfo {
    pub fn new(peer: Peer, listener: Arc<ListenerInfo>, shutdown: Arc<ShutdownSignal>) -> ConnInfo {
        ConnInfo {
            peer,
            listener,
            app_data: AppSlot::default(),
            disconnected: AtomicBool::new(false),
            shutdown,
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
        self.shutdown.is_closing()
    }
}

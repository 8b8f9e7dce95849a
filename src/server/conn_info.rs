//! What the application side may know about a connection and the listener it came
//! on, and where it may keep its own per-connection data. Plain data; the connection
//! task sets the flags, nothing here does I/O.

use std::any::Any;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use super::shutdown::ShutdownSignal;
use super::tls::TlsInfo;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    Tcp,
    Unix,
}

/// What a listener's connections speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Security {
    /// HTTP as it is.
    Cleartext,
    /// TLS first (`certfile`), HTTP inside it.
    Tls,
}

/// What a request learns about the listener it arrived on.
pub struct ListenerInfo {
    pub kind: ListenerKind,
    pub security: Security,
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

impl Peer {
    /// REMOTE_ADDR: the IP address (an IPv4-mapped IPv6 address as IPv4), or
    /// `localhost` on a Unix socket. Also what `trusted_proxy` is matched against.
    pub fn remote_addr(&self) -> String {
        match self {
            Peer::Tcp(addr) => match addr.ip() {
                IpAddr::V6(v6) => v6
                    .to_ipv4_mapped()
                    .map_or(IpAddr::V6(v6), IpAddr::V4)
                    .to_string(),
                v4 => v4.to_string(),
            },
            Peer::Unix => "localhost".to_owned(),
        }
    }
}

impl fmt::Display for Peer {
    /// For log lines: `address:port`, or `localhost (Unix socket)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(addr) => write!(f, "{addr}"),
            Peer::Unix => f.write_str("localhost (Unix socket)"),
        }
    }
}

/// How the client reached the server, as far as the server knows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientTransport {
    /// Nothing known: `wsgi.url_scheme` is the `url_scheme` option.
    #[default]
    AsConfigured,
    /// Over TLS, terminated here or by a load balancer (its PROXY header's SSL TLV
    /// says so): `wsgi.url_scheme` is `https` unless trusted forwarding headers say
    /// otherwise.
    Tls,
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
    /// The client: the socket's peer, or the source a PROXY header named.
    pub peer: Peer,
    pub transport: ClientTransport,
    /// The TLS session's facts, when this server terminated TLS for the connection.
    pub tls: Option<TlsInfo>,
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
            transport: ClientTransport::AsConfigured,
            tls: None,
            listener,
            app_data: AppSlot::default(),
            disconnected: AtomicBool::new(false),
            shutdown,
        }
    }

    /// The same connection as a load balancer's PROXY header describes it: another
    /// client, maybe over TLS. Made before the first request, so nothing of the
    /// application side is cached yet.
    pub fn relayed(&self, peer: Peer, transport: ClientTransport) -> ConnInfo {
        ConnInfo {
            transport,
            ..ConnInfo::new(peer, self.listener.clone(), self.shutdown.clone())
        }
    }

    /// The same connection once its TLS handshake finished (before the first request).
    pub fn secured(&self, tls: TlsInfo) -> ConnInfo {
        ConnInfo {
            transport: ClientTransport::Tls,
            tls: Some(tls),
            ..ConnInfo::new(
                self.peer.clone(),
                self.listener.clone(),
                self.shutdown.clone(),
            )
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

//! Sockets and the async runtime: listeners, the accept loop, one task per connection
//! (read, parse, buffer the body, dispatch, write, keep-alive, timeouts), buffers that
//! spill to temporary files, sendfile, and graceful shutdown.
//!
//! Nothing here knows about Python. A complete request goes out through the
//! `Dispatcher` trait; its response comes back through a `Responder`; log lines go out
//! through the `EventLog` trait.

pub mod budget;
pub mod cert_subject;
pub mod conn_info;
pub mod connection;
pub mod dispatch;
pub mod exclusive;
pub mod h2_io;
pub mod http2;
pub mod listener;
pub mod metrics_endpoint;
pub mod proxy_header;
pub mod ratelimit;
pub mod responder;
pub mod shared;
pub mod shutdown;
pub mod socket;
pub mod spool;
pub mod static_files;
pub mod static_open;
pub mod stopfd;
pub mod tls;
pub mod tracking;

pub use conn_info::{
    AppSlot, ClientTransport, ConnInfo, ListenerInfo, ListenerKind, Peer, Security,
};
pub use dispatch::{Dispatcher, EventLog, LogLevel, Request};
pub use listener::{start, ListenerSpec, Running, Services, Sharing};
pub use responder::{ClientGone, FileSegment, Responder};
pub use spool::Body;

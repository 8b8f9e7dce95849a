//! The PROXY protocol on a connection (`proxy_protocol`), before its first request:
//! checks that the peer may send a PROXY header at all (`trusted_proxy`), receives the
//! header within `header_timeout`, and says who the connection's client is. A
//! connection that cannot go on is closed unanswered, with a WARNING naming the peer
//! and the reason (rate-limited: a flood of bad connections does not flood the log).
//!
//! It owns the reading and what a header changes: the client address (the header's
//! source, for PROXY with TCP addresses) and the transport (TLS, from the SSL TLV).
//! The wire format is `http/proxy_protocol.rs`'s, who is trusted `proxy.rs`'s. It never
//! writes to the socket, and leaves the bytes after the header (the start of the first
//! request) in the read buffer.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::time::sleep_until;

use super::conn_info::{ClientTransport, ConnInfo, Peer};
use super::dispatch::{EventLog, LogLevel};
use super::ratelimit::{suppressed_note, SharedRateLimit, Verdict};
use super::shutdown::{first_request_deadline, Shutdown};
use super::socket::Conn;
use crate::config::{Config, ProxyProtocol};
use crate::http::proxy_protocol::{self, Addresses, Command, Parsed, ProxyError, ProxyHeader};

/// Refusals are logged at most this often.
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// Where one server's refusals are logged, rate-limited across its connections.
pub struct Refusals {
    log: Arc<dyn EventLog>,
    limit: SharedRateLimit,
}

impl Refusals {
    pub fn new(log: Arc<dyn EventLog>) -> Refusals {
        Refusals {
            log,
            limit: SharedRateLimit::new(REPORT_EVERY),
        }
    }

    fn refuse(&self, peer: &Peer, refusal: &Refusal) {
        crate::observe::metrics::count(crate::observe::metrics::Counter::RefusedProxyProtocol, 1);
        if let Verdict::Say { suppressed } = self.limit.hit() {
            let note = suppressed_note(suppressed);
            self.log.log(
                LogLevel::Warning,
                format!(
                    "PROXY protocol: closed the connection from {peer} unanswered: {refusal}{note}"
                ),
            );
        }
    }
}
/// The smallest read while waiting for the header.
const MIN_READ: usize = 512;

/// Why a connection is closed before its first request.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// The peer is not a `trusted_proxy`: its header is not even read.
    Untrusted,
    Malformed(ProxyError),
    /// No complete header within `header_timeout`.
    TimedOut,
    /// The peer closed inside its header.
    Truncated,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Untrusted => f.write_str("the peer is not a trusted_proxy"),
            Refusal::Malformed(err) => write!(f, "{err}"),
            Refusal::TimedOut => f.write_str("no complete PROXY header within header_timeout"),
            Refusal::Truncated => f.write_str("the peer closed inside its PROXY header"),
        }
    }
}

/// How waiting for the header ended.
enum Received {
    Header(ProxyHeader),
    Refused(Refusal),
    /// The peer left before sending anything, the socket failed, or the server is
    /// shutting down: nothing worth a log line.
    Gone,
}

/// The connection as its PROXY header describes it (with `proxy_protocol` off: as it
/// is). `None`: close it now, unanswered. The header's bytes are taken out of `rbuf`;
/// whatever followed them stays.
pub async fn receive(
    conn: &Conn,
    info: Arc<ConnInfo>,
    rbuf: &mut BytesMut,
    config: &Config,
    refusals: &Refusals,
    shutdown: &mut Shutdown,
) -> Option<Arc<ConnInfo>> {
    let ProxyProtocol::Required { trusted } = &config.proxy_protocol else {
        return Some(info);
    };
    if !trusted.trusts(&info.peer.remote_addr()) {
        refusals.refuse(&info.peer, &Refusal::Untrusted);
        return None;
    }
    match read_header(conn, rbuf, config, shutdown).await {
        Received::Header(header) => Some(relayed(info, &header)),
        Received::Refused(refusal) => {
            refusals.refuse(&info.peer, &refusal);
            None
        }
        Received::Gone => None,
    }
}

/// Reads until `rbuf` starts with a whole header, or it cannot.
async fn read_header(
    conn: &Conn,
    rbuf: &mut BytesMut,
    config: &Config,
    shutdown: &mut Shutdown,
) -> Received {
    let accepted = Instant::now();
    let deadline = accepted + config.header_timeout;
    loop {
        match proxy_protocol::parse(rbuf) {
            Ok(Parsed::Complete { header, consumed }) => {
                rbuf.advance(consumed);
                return Received::Header(header);
            }
            Ok(Parsed::Incomplete) => {}
            Err(err) => return Received::Refused(Refusal::Malformed(err)),
        }
        // Shutting down: a header on its way still has FIRST_REQUEST_GRACE.
        let closing = shutdown.is_closing();
        let until = if closing {
            deadline.min(first_request_deadline(accepted))
        } else {
            deadline
        };
        // The room the buffer has (it is sized for most request heads), as the
        // connection's own reads do: the header rarely needs more.
        let want = (rbuf.capacity() - rbuf.len())
            .max(MIN_READ)
            .min(config.recv_bytes);
        let outcome = tokio::select! {
            biased;
            r = conn.read_cleartext(rbuf, want) => r,
            _ = sleep_until(until.into()) => {
                return if closing && until < deadline {
                    Received::Gone
                } else {
                    Received::Refused(Refusal::TimedOut)
                };
            }
            _ = shutdown.recv(), if !shutdown.seen() => continue,
        };
        match outcome {
            Ok(0) if rbuf.is_empty() => return Received::Gone,
            Ok(0) => return Received::Refused(Refusal::Truncated),
            Ok(_) => {}
            Err(_) => return Received::Gone,
        }
    }
}

/// PROXY with TCP addresses: the client is the header's source; with the SSL TLV it
/// came over TLS. LOCAL (a health check) and other families keep the real peer.
fn relayed(info: Arc<ConnInfo>, header: &ProxyHeader) -> Arc<ConnInfo> {
    if header.command == Command::Local {
        return info;
    }
    let peer = match header.addresses {
        Addresses::Inet { source, .. } => Peer::Tcp(source),
        Addresses::Unix | Addresses::Unspecified => info.peer.clone(),
    };
    let transport = if header.ssl {
        ClientTransport::Tls
    } else {
        ClientTransport::AsConfigured
    };
    Arc::new(info.relayed(peer, transport))
}

#[cfg(test)]
mod tests {
    //! `relayed`'s decisions; the reading is tested over real sockets by the
    //! connection tests and end to end (tests/test_proxy_protocol.py).

    use super::*;
    use crate::http::proxy_protocol::Version;
    use crate::server::conn_info::{ListenerInfo, ListenerKind};
    use crate::server::shutdown::ShutdownSignal;

    fn info(peer: Peer) -> Arc<ConnInfo> {
        let listener = Arc::new(ListenerInfo {
            kind: ListenerKind::Tcp,
            security: crate::server::conn_info::Security::Cleartext,
            server_port: "8080".into(),
            app_data: Default::default(),
        });
        Arc::new(ConnInfo::new(peer, listener, ShutdownSignal::new()))
    }

    fn header(command: Command, addresses: Addresses, ssl: bool) -> ProxyHeader {
        ProxyHeader {
            version: Version::V2,
            command,
            addresses,
            ssl,
        }
    }

    #[test]
    fn proxy_with_addresses_names_the_client_and_ssl_its_transport() {
        let real = Peer::Tcp("10.0.0.1:40000".parse().unwrap());
        let inet = Addresses::Inet {
            source: "192.0.2.7:5555".parse().unwrap(),
            destination: "198.51.100.1:443".parse().unwrap(),
        };
        let out = relayed(info(real.clone()), &header(Command::Proxy, inet, true));
        assert_eq!(out.peer.to_string(), "192.0.2.7:5555");
        assert_eq!(out.transport, ClientTransport::Tls);
        for addresses in [Addresses::Unspecified, Addresses::Unix] {
            let out = relayed(
                info(real.clone()),
                &header(Command::Proxy, addresses, false),
            );
            assert_eq!(out.peer.to_string(), "10.0.0.1:40000");
            assert_eq!(out.transport, ClientTransport::AsConfigured);
        }
        let out = relayed(
            info(real),
            &header(Command::Local, Addresses::Unspecified, false),
        );
        assert_eq!(out.peer.to_string(), "10.0.0.1:40000");
    }

    #[test]
    fn refusals_read_as_reasons() {
        let reason = Refusal::Malformed(ProxyError::NoSignature).to_string();
        assert_eq!(reason, "not a PROXY protocol header");
        assert_eq!(Peer::Unix.to_string(), "localhost (Unix socket)");
    }
}

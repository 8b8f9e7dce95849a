//! The HTTP versions Tapster speaks, shared by requests, responses and errors. HTTP/2
//! requests are handled as HTTP/1.1 ones inside the server (their heads and responses
//! are translated at the connection: `server/http2.rs`); the version says which.

/// The protocol version a request is handled with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
    /// A stream of an HTTP/2 connection.
    Http2,
}

impl Version {
    /// `HTTP/1.0`, `HTTP/1.1` or `HTTP/2`, as written on a status line and in
    /// SERVER_PROTOCOL.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
            Version::Http2 => "HTTP/2",
        }
    }
}

//! The HTTP/1.x versions Tapster speaks, shared by requests, responses and errors.

/// The protocol version a request is handled with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

impl Version {
    /// `HTTP/1.0` or `HTTP/1.1`, as written on a status line and in SERVER_PROTOCOL.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }
    }
}

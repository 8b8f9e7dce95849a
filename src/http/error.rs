//! Protocol errors found while reading a request, and the status each one maps to.
//!
//! Every error here ends the connection: the server answers with the status, a short
//! plain-text body, `Connection: close`, and reads nothing more from that client.

use std::fmt;

/// The HTTP status classes a malformed or unacceptable request can produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400: the bytes are not a valid HTTP/1.1 request.
    BadRequest,
    /// 408: the request head did not arrive in time.
    RequestTimeout,
    /// 413: the declared or received body is larger than `max_request_body_size`.
    BodyTooLarge,
    /// 414: the request line is longer than the configured limit.
    UriTooLong,
    /// 431: the request head is larger than `max_request_header_size`, or has too many fields.
    HeadersTooLarge,
    /// 501: a transfer coding other than a single final `chunked`.
    NotImplemented,
    /// 505: an HTTP major version other than 1.
    VersionNotSupported,
}

impl ErrorKind {
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::RequestTimeout => 408,
            ErrorKind::BodyTooLarge => 413,
            ErrorKind::UriTooLong => 414,
            ErrorKind::HeadersTooLarge => 431,
            ErrorKind::NotImplemented => 501,
            ErrorKind::VersionNotSupported => 505,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "Bad Request",
            ErrorKind::RequestTimeout => "Request Timeout",
            ErrorKind::BodyTooLarge => "Request Entity Too Large",
            ErrorKind::UriTooLong => "URI Too Long",
            ErrorKind::HeadersTooLarge => "Request Header Fields Too Large",
            ErrorKind::NotImplemented => "Not Implemented",
            ErrorKind::VersionNotSupported => "HTTP Version Not Supported",
        }
    }
}

/// A request the server refuses, with a human-readable detail for the error page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpError {
    pub kind: ErrorKind,
    pub detail: String,
    /// The request's HTTP version, when it was read before the error (the error page
    /// then answers in it; otherwise in HTTP/1.0, as Waitress does).
    pub version: Option<super::version::Version>,
}

impl HttpError {
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        HttpError {
            kind,
            detail: detail.into(),
            version: None,
        }
    }

    /// The same error, answered in the request's version.
    pub fn in_version(mut self, version: super::version::Version) -> Self {
        self.version.get_or_insert(version);
        self
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, detail)
    }

    pub fn status(&self) -> u16 {
        self.kind.status()
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.kind.status(),
            self.kind.reason(),
            self.detail
        )
    }
}

impl std::error::Error for HttpError {}

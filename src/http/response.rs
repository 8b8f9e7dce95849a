//! Response framing, sans-IO: how a response is delimited (Content-Length, chunked or
//! connection close), whether the connection survives it, and the bytes of the status
//! line, header block, chunk framing and server-generated error pages.

use super::date;
use super::error::HttpError;
use super::request::Version;

/// The final chunk of a chunked body, with an empty trailer section.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";
/// What follows every chunk's data.
pub const CHUNK_END: &[u8] = b"\r\n";
/// The interim response sent for `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The numeric code of a WSGI status string such as `"200 OK"`: three digits, then a
/// space or the end of the string.
pub fn status_code(status: &[u8]) -> Option<u16> {
    match status {
        [a @ b'1'..=b'9', b @ b'0'..=b'9', c @ b'0'..=b'9', rest @ ..]
            if rest.is_empty() || rest[0] == b' ' =>
        {
            Some(u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'))
        }
        _ => None,
    }
}

/// 1xx, 204 and 304 responses never carry a body (RFC 9110 section 6.4.1).
pub fn status_allows_body(code: u16) -> bool {
    !(code < 200 || code == 204 || code == 304)
}

/// How the body of a response is delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyMode {
    /// Nothing may follow the head (HEAD, 1xx, 204, 304).
    Suppressed,
    /// Exactly this many bytes.
    Length(u64),
    /// HTTP/1.1 chunked transfer coding.
    Chunked,
    /// HTTP/1.0 without a length: the body ends when the connection closes.
    UntilClose,
}

/// What the server must put in the head, and what happens to the connection after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Framing {
    pub body: BodyMode,
    /// The `Content-Length` header to send, if any (also sent for HEAD when known).
    pub content_length_header: Option<u64>,
    /// A HEAD response announces `Transfer-Encoding: chunked` (as the GET would be
    /// framed) without sending a body.
    pub announce_chunked: bool,
    pub keep_alive: bool,
}

/// The facts about one exchange that decide its framing.
#[derive(Clone, Copy, Debug)]
pub struct FramingInput {
    pub version: Version,
    pub head_request: bool,
    /// The request allows keep-alive (and the server is not shutting down).
    pub client_keep_alive: bool,
    pub status: u16,
    /// The body length, if the application declared it or the server could compute it.
    pub content_length: Option<u64>,
}

impl Framing {
    pub fn decide(input: FramingInput) -> Framing {
        let keep = input.client_keep_alive;
        if !status_allows_body(input.status) {
            return Framing {
                body: BodyMode::Suppressed,
                content_length_header: None,
                announce_chunked: false,
                // An interim status as a final answer leaves the client confused: close.
                keep_alive: keep && input.status >= 200,
            };
        }
        if input.head_request {
            // The same head as the GET would get (RFC 9110 section 9.3.2), no body.
            let get = Framing::decide(FramingInput {
                head_request: false,
                ..input
            });
            return Framing {
                body: BodyMode::Suppressed,
                announce_chunked: get.body == BodyMode::Chunked,
                ..get
            };
        }
        let (body, keep_alive) = match (input.content_length, input.version) {
            (Some(n), _) => (BodyMode::Length(n), keep),
            // HTTP/2 frames the body itself; chunks let its translation tell a complete
            // body from one the application cut short.
            (None, Version::Http11 | Version::Http2) => (BodyMode::Chunked, keep),
            (None, Version::Http10) => (BodyMode::UntilClose, false),
        };
        Framing {
            body,
            content_length_header: input.content_length,
            announce_chunked: false,
            keep_alive,
        }
    }
}

/// Who the server says it is: `Server: ident`, or `Via: ident` when the application
/// sent its own Server header, or nothing when ident is empty.
#[derive(Clone, Copy, Debug)]
pub enum ServerHeader<'a> {
    Server(&'a [u8]),
    Via(&'a [u8]),
    None,
}

/// Writes a complete response head.
///
/// `app_fields` is the application's header block, already validated and serialized as
/// `Name: value\r\n` lines (without any Content-Length, which `framing` supplies).
pub fn write_head(
    out: &mut Vec<u8>,
    version: Version,
    status: &[u8],
    app_fields: &[u8],
    app_sent_date: bool,
    server: ServerHeader<'_>,
    framing: &Framing,
) {
    out.reserve(status.len() + app_fields.len() + 128);
    out.extend_from_slice(version.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(app_fields);
    if let Some(n) = framing.content_length_header {
        out.extend_from_slice(b"Content-Length: ");
        push_decimal(out, n);
        out.extend_from_slice(b"\r\n");
    }
    if framing.body == BodyMode::Chunked || framing.announce_chunked {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    if version == Version::Http2 {
        // No connection-specific fields: one stream ending is not the connection's.
    } else if !framing.keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if version == Version::Http10 {
        out.extend_from_slice(b"Connection: Keep-Alive\r\n");
    }
    if !app_sent_date {
        out.extend_from_slice(b"Date: ");
        out.extend_from_slice(&date::now());
        out.extend_from_slice(b"\r\n");
    }
    match server {
        ServerHeader::Server(ident) => push_field(out, b"Server", ident),
        ServerHeader::Via(ident) => push_field(out, b"Via", ident),
        ServerHeader::None => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends the header line `name: value`.
pub fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal.
pub fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// The line that opens a chunk of `len` bytes: upper-case hex size and CRLF.
pub fn chunk_header(len: usize) -> ([u8; 18], usize) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut buf = [0u8; 18];
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = len;
    loop {
        i -= 1;
        digits[i] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    let count = digits.len() - i;
    buf[..count].copy_from_slice(&digits[i..]);
    buf[count..count + 2].copy_from_slice(b"\r\n");
    (buf, count + 2)
}

/// The length of a serialized response's head (through its blank line): all of it
/// when it has no blank line.
pub fn head_len(response: &[u8]) -> usize {
    memchr::memmem::find(response, b"\r\n\r\n").map_or(response.len(), |i| i + 4)
}

/// A complete server-generated page (parse errors, 500s), always closing the connection:
/// `{reason}\r\n\r\n{detail}\r\n\r\n(generated by {ident})` in UTF-8 text/plain.
pub fn error_page(
    version: Version,
    status: u16,
    reason: &str,
    detail: &str,
    ident: Option<&str>,
) -> Vec<u8> {
    let body = format!(
        "{reason}\r\n\r\n{detail}\r\n\r\n(generated by {})",
        ident.unwrap_or("server")
    );
    let mut out = Vec::with_capacity(body.len() + 256);
    out.extend_from_slice(version.as_str().as_bytes());
    out.push(b' ');
    push_decimal(&mut out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\nConnection: close\r\nContent-Length: ");
    push_decimal(&mut out, body.len() as u64);
    out.extend_from_slice(b"\r\nContent-Type: text/plain; charset=utf-8\r\nDate: ");
    out.extend_from_slice(&date::now());
    out.extend_from_slice(b"\r\n");
    if let Some(ident) = ident {
        push_field(&mut out, b"Server", ident.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    out
}

/// The page for a request the parser refused.
pub fn protocol_error_page(
    version: Option<Version>,
    err: &HttpError,
    ident: Option<&str>,
) -> Vec<u8> {
    error_page(
        err.version.or(version).unwrap_or(Version::Http10),
        err.kind.status(),
        err.kind.reason(),
        &err.detail,
        ident,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(version: Version, status: u16, cl: Option<u64>) -> FramingInput {
        FramingInput {
            version,
            head_request: false,
            client_keep_alive: true,
            status,
            content_length: cl,
        }
    }

    #[test]
    fn status_codes() {
        assert_eq!(status_code(b"200 OK"), Some(200));
        assert_eq!(status_code(b"404"), Some(404));
        assert_eq!(status_code(b"2000 OK"), None);
        assert_eq!(status_code(b"20 OK"), None);
        assert_eq!(status_code(b"099 x"), None);
        assert_eq!(status_code(b"OK 200"), None);
    }

    #[test]
    fn framing_rules() {
        let f = Framing::decide(input(Version::Http11, 200, Some(5)));
        assert_eq!((f.body, f.keep_alive), (BodyMode::Length(5), true));
        let f = Framing::decide(input(Version::Http11, 200, None));
        assert_eq!((f.body, f.keep_alive), (BodyMode::Chunked, true));
        let f = Framing::decide(input(Version::Http10, 200, None));
        assert_eq!((f.body, f.keep_alive), (BodyMode::UntilClose, false));
        let f = Framing::decide(input(Version::Http11, 204, Some(5)));
        assert_eq!(
            (f.body, f.content_length_header, f.keep_alive),
            (BodyMode::Suppressed, None, true)
        );
        let f = Framing::decide(input(Version::Http11, 304, None));
        assert_eq!((f.body, f.keep_alive), (BodyMode::Suppressed, true));
        let f = Framing::decide(input(Version::Http11, 101, None));
        assert!(!f.keep_alive);
        let mut head = input(Version::Http11, 200, Some(9));
        head.head_request = true;
        let f = Framing::decide(head);
        assert_eq!(
            (f.body, f.content_length_header),
            (BodyMode::Suppressed, Some(9))
        );
    }

    #[test]
    fn head_bytes() {
        let framing = Framing::decide(input(Version::Http10, 200, Some(2)));
        let mut out = Vec::new();
        write_head(
            &mut out,
            Version::Http10,
            b"200 OK",
            b"Content-Type: text/plain\r\n",
            true,
            ServerHeader::Server(b"tapster"),
            &framing,
        );
        assert_eq!(
            out,
            b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: Keep-Alive\r\nServer: tapster\r\n\r\n"
        );
    }

    #[test]
    fn chunk_headers() {
        let (b, n) = chunk_header(0);
        assert_eq!(&b[..n], b"0\r\n");
        let (b, n) = chunk_header(255);
        assert_eq!(&b[..n], b"FF\r\n");
        let (b, n) = chunk_header(usize::MAX);
        assert_eq!(n, 2 + 2 * std::mem::size_of::<usize>());
        assert!(b[..n].starts_with(b"FFFF"));
    }

    #[test]
    fn error_page_layout() {
        let page = error_page(
            Version::Http11,
            400,
            "Bad Request",
            "Invalid header",
            Some("tapster"),
        );
        let text = String::from_utf8(page).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\nConnection: close\r\n"));
        assert!(text
            .ends_with("\r\n\r\nBad Request\r\n\r\nInvalid header\r\n\r\n(generated by tapster)"));
        let body = "Bad Request\r\n\r\nInvalid header\r\n\r\n(generated by tapster)";
        assert!(text.contains(&format!("Content-Length: {}\r\n", body.len())));
    }
}

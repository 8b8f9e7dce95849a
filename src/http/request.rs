//! Request-head parsing: the request line and header fields, validated strictly per
//! RFC 9112, turned into a `RequestHead` that owns its bytes.
//!
//! This module decides how the body is framed (none, Content-Length or chunked) and
//! whether the client wants the connection kept alive. It never reads a socket: the
//! caller appends bytes to a `BytesMut` and calls `HeadParser::parse` again.

use std::ops::Range;
use std::sync::Arc;

use bytes::{Buf, BytesMut};

use super::error::{ErrorKind, HttpError};

/// Size and count limits applied while parsing a request head.
#[derive(Clone, Debug)]
pub struct HeadLimits {
    /// Request line plus header fields plus the blank line (`max_request_header_size`).
    /// A head of this size or more gets 431.
    pub max_head_bytes: usize,
    /// The request line alone, without its CRLF; longer gets 414.
    pub max_request_line: usize,
    /// Number of header fields; more gets 431.
    pub max_headers: usize,
    /// A Content-Length of this size or more gets 413 before any body is read.
    pub max_body_bytes: u64,
}

/// The defaults of the matching server options.
impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits {
            max_head_bytes: 262_144,
            max_request_line: 65_536,
            max_headers: 100,
            max_body_bytes: 1_073_741_824,
        }
    }
}

pub use super::version::Version;

/// How the request body is delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body at all.
    None,
    /// Exactly this many bytes (never zero: zero is `None`).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed, validated request head. Field names and values are byte slices of the
/// original head, so nothing is copied.
#[derive(Clone, Debug)]
pub struct RequestHead {
    /// The head's bytes, copied out of the read buffer so that buffer stays unshared
    /// (and reusable without a new allocation for the next read). Shared, so the
    /// access log can keep them without a copy.
    raw: Arc<[u8]>,
    method: Range<usize>,
    target: Range<usize>,
    fields: Vec<FieldSpan>,
    pub version: Version,
    pub framing: BodyFraming,
    /// The client allows the connection to stay open after this request.
    pub keep_alive: bool,
    /// HTTP/1.1 `Expect: 100-continue` was sent.
    pub expect_continue: bool,
}

#[derive(Clone, Copy, Debug)]
struct FieldSpan {
    name_start: u32,
    name_len: u32,
    value_start: u32,
    value_len: u32,
}

impl RequestHead {
    pub fn method(&self) -> &[u8] {
        &self.raw[self.method.clone()]
    }

    /// The request target exactly as sent (origin-form, absolute-form, `*` or authority).
    pub fn target(&self) -> &[u8] {
        &self.raw[self.target.clone()]
    }

    pub fn is_head(&self) -> bool {
        self.method() == b"HEAD"
    }

    /// Header fields in arrival order, names as sent (not case-folded), values trimmed.
    pub fn fields(&self) -> impl ExactSizeIterator<Item = (&[u8], &[u8])> + '_ {
        self.fields.iter().map(move |f| {
            let n = f.name_start as usize;
            let v = f.value_start as usize;
            (
                &self.raw[n..n + f.name_len as usize],
                &self.raw[v..v + f.value_len as usize],
            )
        })
    }

    /// The first value of a field, matched case-insensitively.
    pub fn field(&self, name: &[u8]) -> Option<&[u8]> {
        self.fields()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The size of the head on the wire, request line to blank line inclusive.
    pub fn wire_len(&self) -> usize {
        self.raw.len()
    }

    /// The head's bytes, shared; the `*_span` methods say where things are in them.
    pub fn bytes(&self) -> &Arc<[u8]> {
        &self.raw
    }

    pub fn method_span(&self) -> Range<usize> {
        self.method.clone()
    }

    pub fn target_span(&self) -> Range<usize> {
        self.target.clone()
    }

    /// Where the first value of a field (matched case-insensitively) is in `bytes()`.
    pub fn field_span(&self, name: &[u8]) -> Option<Range<usize>> {
        self.fields
            .iter()
            .find(|f| {
                let n = f.name_start as usize;
                self.raw[n..n + f.name_len as usize].eq_ignore_ascii_case(name)
            })
            .map(|f| f.value_start as usize..(f.value_start + f.value_len) as usize)
    }
}

/// Finds and parses one request head at the front of a growing buffer.
///
/// Call `parse` each time bytes are appended; it remembers how far it has looked so a
/// head trickled in byte by byte costs linear, not quadratic, time.
#[derive(Debug, Default)]
pub struct HeadParser {
    /// Bytes at the front of the buffer already known not to contain the terminator.
    scanned: usize,
    /// Empty lines skipped before the request line (they count toward the head limit).
    skipped: usize,
}

const HEAD_END: &[u8] = b"\r\n\r\n";

/// The searcher for `HEAD_END`, built once (building one per call costs more than
/// searching a typical head).
static HEAD_END_FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(HEAD_END));

impl HeadParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes of the current head seen so far (0 when between requests).
    pub fn pending(&self, buf: &BytesMut) -> usize {
        self.skipped + buf.len()
    }

    /// Tries to take one complete request head off the front of `buf`.
    ///
    /// Returns `Ok(None)` when more bytes are needed. On success the head's bytes are
    /// removed from `buf`; whatever follows (body, next request) stays in it. On an
    /// error `buf` is left as it was.
    pub fn parse(
        &mut self,
        buf: &mut BytesMut,
        limits: &HeadLimits,
    ) -> Result<Option<RequestHead>, HttpError> {
        // RFC 9112 section 2.2: ignore empty lines received before the request line.
        while buf.starts_with(b"\r\n") {
            buf.advance(2);
            self.skipped += 2;
            self.scanned = 0;
        }
        if self.skipped >= limits.max_head_bytes {
            return Err(head_too_large(limits));
        }
        let from = self.scanned.saturating_sub(HEAD_END.len() - 1);
        let Some(pos) = HEAD_END_FINDER.find(&buf[from..]) else {
            // Refuse a bare CR or LF as soon as it arrives rather than waiting (perhaps
            // forever) for a CRLFCRLF that an LF-only client will never send.
            check_line_endings(buf, from, true)?;
            self.scanned = buf.len();
            if self.skipped + buf.len() >= limits.max_head_bytes {
                return Err(head_too_large(limits));
            }
            check_request_line_length(buf, limits)?;
            return Ok(None);
        };
        let head_len = from + pos + HEAD_END.len();
        if self.skipped + head_len >= limits.max_head_bytes {
            return Err(head_too_large(limits));
        }
        let raw: Arc<[u8]> = buf[..head_len].into();
        *self = HeadParser::default();
        let head = parse_head(raw, limits)?;
        // A refused head stays in `buf`: its request line names it in the access log.
        buf.advance(head_len);
        Ok(Some(head))
    }
}

fn head_too_large(limits: &HeadLimits) -> HttpError {
    HttpError::new(
        ErrorKind::HeadersTooLarge,
        format!("exceeds max_header of {}", limits.max_head_bytes),
    )
}

/// A request line that is already too long is refused before the rest of the head arrives.
fn check_request_line_length(buf: &[u8], limits: &HeadLimits) -> Result<(), HttpError> {
    let line_len = memchr::memchr(b'\n', buf).unwrap_or(buf.len());
    if line_len > limits.max_request_line + 1 {
        return Err(uri_too_long(limits));
    }
    Ok(())
}

fn uri_too_long(limits: &HeadLimits) -> HttpError {
    HttpError::new(
        ErrorKind::UriTooLong,
        format!("request line exceeds {} bytes", limits.max_request_line),
    )
}

/// Header fields parsed onto the stack when the limit allows; beyond it, on the heap.
const STACK_FIELDS: usize = 64;

fn parse_head(raw: Arc<[u8]>, limits: &HeadLimits) -> Result<RequestHead, HttpError> {
    check_line_endings(&raw, 0, false)?;
    // The head ends with CRLFCRLF and has no bare CR or LF, so the first LF ends the
    // request line and follows its CR.
    let line_end = memchr::memchr(b'\n', &raw).map_or(raw.len(), |lf| lf.saturating_sub(1));
    if line_end > limits.max_request_line {
        return Err(uri_too_long(limits));
    }
    let line = parse_request_line(&raw[..line_end])?;

    let field_block = &raw[line_end + 2..];
    let mut stack = [httparse::EMPTY_HEADER; STACK_FIELDS];
    let mut heap;
    let storage: &mut [httparse::Header] = if limits.max_headers <= STACK_FIELDS {
        &mut stack[..limits.max_headers]
    } else {
        heap = vec![httparse::EMPTY_HEADER; limits.max_headers];
        &mut heap
    };
    let parsed = match httparse::parse_headers(field_block, storage) {
        Ok(httparse::Status::Complete((_, parsed))) => parsed,
        Ok(httparse::Status::Partial) => return Err(invalid_fields(field_block)),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HttpError::new(
                ErrorKind::HeadersTooLarge,
                format!("more than {} header fields", limits.max_headers),
            ))
        }
        Err(_) => return Err(invalid_fields(field_block)),
    };

    let base = raw.as_ptr() as usize;
    let mut fields = Vec::with_capacity(parsed.len());
    let mut semantics = FieldSemantics::default();
    for field in parsed.iter() {
        let name = field.name.as_bytes();
        let value = field.value;
        semantics
            .observe(name, value)
            .map_err(|e| e.in_version(line.version))?;
        fields.push(FieldSpan {
            name_start: (name.as_ptr() as usize - base) as u32,
            name_len: name.len() as u32,
            value_start: (value.as_ptr() as usize - base) as u32,
            value_len: value.len() as u32,
        });
    }

    let framing = semantics
        .framing(line.version, limits)
        .map_err(|e| e.in_version(line.version))?;
    let keep_alive = match line.version {
        // (The request line is never parsed as HTTP/2: its streams are translated.)
        Version::Http11 | Version::Http2 => !semantics.connection_close,
        Version::Http10 => semantics.connection_keep_alive && !semantics.connection_close,
    };
    Ok(RequestHead {
        raw,
        method: line.method,
        target: line.target,
        fields,
        version: line.version,
        framing,
        keep_alive,
        expect_continue: line.version == Version::Http11 && semantics.expect_continue,
    })
}

/// Rejects a CR not followed by LF, and an LF not preceded by CR (CVE-2019-16785's
/// class), looking at `head[start..]`. With `partial`, a CR at the very end may still
/// get its LF and is accepted.
fn check_line_endings(head: &[u8], start: usize, partial: bool) -> Result<(), HttpError> {
    for pos in memchr::memchr2_iter(b'\r', b'\n', &head[start..]).map(|p| p + start) {
        let ok = match head[pos] {
            b'\r' => match head.get(pos + 1) {
                Some(&next) => next == b'\n',
                None => partial,
            },
            _ => pos > 0 && head[pos - 1] == b'\r',
        };
        if !ok {
            return Err(bare_line_ending(head, pos));
        }
    }
    Ok(())
}

/// Waitress's wording: the request line is "the HTTP message"; a header line is quoted.
fn bare_line_ending(head: &[u8], pos: usize) -> HttpError {
    let start = memchr::memmem::rfind(&head[..pos], b"\r\n").map(|p| p + 2);
    let Some(start) = start else {
        return HttpError::bad_request("Bare CR or LF found in HTTP message");
    };
    let end = memchr::memmem::find(&head[pos..], b"\r\n").map_or(head.len(), |p| pos + p);
    HttpError::bad_request(format!(
        "Bare CR or LF found in header line \"{}\"",
        latin1_text(&head[start..end])
    ))
}

/// Bytes shown as latin-1 text in an error page.
fn latin1_text(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

/// Why httparse refused the header fields, in words: a folded line (obs-fold; as the
/// first line, Waitress's "Malformed header line"), or some other invalid field.
fn invalid_fields(block: &[u8]) -> HttpError {
    for (index, line) in block.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.starts_with(b" ") || line.starts_with(b"\t") {
            let text = latin1_text(line);
            return HttpError::bad_request(if index == 0 {
                format!("Malformed header line \"{text}\"")
            } else {
                format!("Obsolete line folding is not accepted: \"{text}\"")
            });
        }
    }
    HttpError::bad_request("Invalid header")
}

struct RequestLine {
    method: Range<usize>,
    target: Range<usize>,
    version: Version,
}

/// `method SP request-target SP HTTP-version`, single spaces, nothing else.
fn parse_request_line(line: &[u8]) -> Result<RequestLine, HttpError> {
    let invalid = || HttpError::bad_request("Start line is invalid");
    let sp1 = memchr::memchr(b' ', line).ok_or_else(invalid)?;
    let sp2 = memchr::memchr(b' ', &line[sp1 + 1..])
        .map(|p| sp1 + 1 + p)
        .ok_or_else(|| {
            HttpError::bad_request("Request line has no HTTP version (HTTP/0.9 is not supported)")
        })?;
    let method = &line[..sp1];
    let target = &line[sp1 + 1..sp2];
    let version = &line[sp2 + 1..];
    if method.is_empty() || target.is_empty() || version.contains(&b' ') {
        return Err(invalid());
    }
    if !method.iter().all(|&b| is_tchar(b)) {
        return Err(invalid());
    }
    if method.iter().any(u8::is_ascii_lowercase) {
        return Err(HttpError::bad_request(format!(
            "Malformed HTTP method \"{}\"",
            String::from_utf8_lossy(method)
        )));
    }
    let version = parse_version(version)?;
    check_target(method, target).map_err(|e| e.in_version(version))?;
    Ok(RequestLine {
        method: 0..sp1,
        target: sp1 + 1..sp2,
        version,
    })
}

fn parse_version(v: &[u8]) -> Result<Version, HttpError> {
    match v {
        [b'H', b'T', b'T', b'P', b'/', major @ b'0'..=b'9', b'.', minor @ b'0'..=b'9'] => {
            match (major, minor) {
                (b'1', b'0') => Ok(Version::Http10),
                // RFC 9110 section 2.5: a higher minor version is handled as the highest we speak.
                (b'1', _) => Ok(Version::Http11),
                _ => Err(HttpError::new(
                    ErrorKind::VersionNotSupported,
                    format!(
                        "HTTP/{}.{} is not supported on this port",
                        *major as char, *minor as char
                    ),
                )
                .in_version(Version::Http11)),
            }
        }
        _ => Err(HttpError::bad_request("Start line is invalid")),
    }
}

/// RFC 9112 section 3.2: origin-form for everything, absolute-form (http/https),
/// authority-form only with CONNECT, asterisk-form only with OPTIONS.
fn check_target(method: &[u8], target: &[u8]) -> Result<(), HttpError> {
    let bad_uri = || HttpError::bad_request("Bad URI");
    if !target.iter().all(|&b| (0x21..0x7f).contains(&b)) {
        return Err(bad_uri());
    }
    if method == b"CONNECT" {
        return if is_authority_form(target) {
            Ok(())
        } else {
            Err(bad_uri())
        };
    }
    match target[0] {
        b'/' => Ok(()),
        b'*' if target.len() == 1 && method == b"OPTIONS" => Ok(()),
        _ if has_http_scheme(target) => Ok(()),
        _ => Err(bad_uri()),
    }
}

/// `http://` or `https://`, scheme case-insensitive, followed by a non-empty authority
/// made of Host characters (no userinfo: RFC 9110 section 4.2.4 calls it an error).
pub(crate) fn has_http_scheme(target: &[u8]) -> bool {
    let rest = if target.len() > 7 && target[..7].eq_ignore_ascii_case(b"http://") {
        &target[7..]
    } else if target.len() > 8 && target[..8].eq_ignore_ascii_case(b"https://") {
        &target[8..]
    } else {
        return false;
    };
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    end > 0 && rest[..end].iter().all(|&b| is_host_char(b))
}

fn is_authority_form(target: &[u8]) -> bool {
    match memchr::memrchr(b':', target) {
        Some(colon) => {
            colon > 0
                && colon + 1 < target.len()
                && target[colon + 1..].iter().all(u8::is_ascii_digit)
                && !target.contains(&b'/')
        }
        None => false,
    }
}

/// A byte allowed in a Host value: RFC 3986 `host [ ":" port ]` (reg-name, IPv4, or a
/// bracketed IPv6 literal), so unreserved, sub-delims, `%`, `:`, `[` and `]`.
fn is_host_char(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'%'
                | b':'
                | b'['
                | b']'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
        )
}

/// RFC 9110 `tchar`: the characters allowed in a token (methods, field names, codings).
pub fn is_tchar(b: u8) -> bool {
    matches!(b,
        b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.'
        | b'^' | b'_' | b'`' | b'|' | b'~' | b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z')
}

/// What the framing-relevant fields said, gathered in one pass.
#[derive(Default)]
struct FieldSemantics {
    content_length: Option<u64>,
    content_length_seen: bool,
    transfer_encoding: Vec<u8>,
    transfer_encoding_seen: bool,
    host_seen: bool,
    content_type_seen: bool,
    connection_close: bool,
    connection_keep_alive: bool,
    expect_continue: bool,
}

impl FieldSemantics {
    fn observe(&mut self, name: &[u8], value: &[u8]) -> Result<(), HttpError> {
        let duplicate = |what: &str| HttpError::bad_request(format!("Duplicate header: {what}"));
        if name.eq_ignore_ascii_case(b"content-length") {
            if self.content_length_seen {
                return Err(HttpError::bad_request("Content-Length is invalid"));
            }
            self.content_length_seen = true;
            self.content_length = Some(parse_content_length(value)?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if self.transfer_encoding_seen {
                self.transfer_encoding.push(b',');
            }
            self.transfer_encoding_seen = true;
            self.transfer_encoding.extend_from_slice(value);
        } else if name.eq_ignore_ascii_case(b"host") {
            if self.host_seen {
                return Err(duplicate("Host"));
            }
            self.host_seen = true;
            if !value.iter().all(|&b| is_host_char(b)) {
                return Err(HttpError::bad_request("Invalid Host header"));
            }
        } else if name.eq_ignore_ascii_case(b"content-type") {
            if self.content_type_seen {
                return Err(duplicate("Content-Type"));
            }
            self.content_type_seen = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in list_elements(value) {
                if token.eq_ignore_ascii_case(b"close") {
                    self.connection_close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    self.connection_keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            self.expect_continue = value.eq_ignore_ascii_case(b"100-continue");
        }
        Ok(())
    }

    fn framing(&self, version: Version, limits: &HeadLimits) -> Result<BodyFraming, HttpError> {
        if self.transfer_encoding_seen {
            if version == Version::Http10 {
                // RFC 9112 section 6.1: Transfer-Encoding in HTTP/1.0 means faulty framing.
                return Err(HttpError::bad_request(
                    "Transfer-Encoding is not allowed in HTTP/1.0 requests",
                ));
            }
            if self.content_length_seen {
                return Err(HttpError::bad_request(
                    "Content-Length and Transfer-Encoding must not be sent together",
                ));
            }
            let codings: Vec<&[u8]> = list_elements(&self.transfer_encoding).collect();
            if codings.is_empty() {
                return Err(HttpError::bad_request("Transfer-Encoding is empty"));
            }
            let chunked = |c: &&[u8]| c.eq_ignore_ascii_case(b"chunked");
            if codings.len() != 1 || !chunked(&codings[0]) {
                return Err(HttpError::new(
                    ErrorKind::NotImplemented,
                    "Transfer-Encoding requested is not supported.",
                ));
            }
            return Ok(BodyFraming::Chunked);
        }
        match self.content_length {
            Some(n) if n >= limits.max_body_bytes => Err(HttpError::new(
                ErrorKind::BodyTooLarge,
                format!("exceeds max_body of {}", limits.max_body_bytes),
            )),
            Some(0) | None => Ok(BodyFraming::None),
            Some(n) => Ok(BodyFraming::Length(n)),
        }
    }
}

/// `1*DIGIT`, nothing else, no overflow (CVE-2019-16792 / CVE-2022-24761's class).
fn parse_content_length(value: &[u8]) -> Result<u64, HttpError> {
    let invalid = || HttpError::bad_request("Content-Length is invalid");
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(invalid());
    }
    value.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(d - b'0')))
            .ok_or_else(invalid)
    })
}

/// The non-empty elements of a comma-separated list, with optional whitespace trimmed.
pub fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

/// Removes spaces and tabs from both ends.
pub fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &[u8]) -> Result<Option<RequestHead>, HttpError> {
        let mut buf = BytesMut::from(input);
        HeadParser::new().parse(&mut buf, &HeadLimits::default())
    }

    fn ok(input: &[u8]) -> RequestHead {
        parse(input).expect("valid request").expect("complete head")
    }

    fn status(input: &[u8]) -> u16 {
        parse(input).expect_err("must be rejected").status()
    }

    #[test]
    fn simple_get() {
        let head = ok(b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-Y: z  \r\n\r\n");
        assert_eq!(head.method(), b"GET");
        assert_eq!(head.target(), b"/a?b=c");
        assert_eq!(head.version, Version::Http11);
        assert_eq!(head.framing, BodyFraming::None);
        assert!(head.keep_alive);
        let fields: Vec<_> = head.fields().collect();
        assert_eq!(
            fields,
            vec![(&b"Host"[..], &b"x"[..]), (&b"X-Y"[..], &b"z"[..])]
        );
    }

    #[test]
    fn leaves_following_bytes_in_buffer() {
        let mut buf = BytesMut::from(&b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET"[..]);
        let head = HeadParser::new()
            .parse(&mut buf, &HeadLimits::default())
            .unwrap()
            .unwrap();
        assert_eq!(head.framing, BodyFraming::Length(3));
        assert_eq!(&buf[..], b"abcGET");
    }

    #[test]
    fn partial_then_complete() {
        let mut parser = HeadParser::new();
        let limits = HeadLimits::default();
        let mut buf = BytesMut::new();
        let whole = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for (i, b) in whole.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            let r = parser.parse(&mut buf, &limits).unwrap();
            assert_eq!(r.is_some(), i == whole.len() - 1);
        }
    }

    #[test]
    fn skips_leading_empty_lines() {
        let head = ok(b"\r\n\r\nGET / HTTP/1.0\r\n\r\n");
        assert_eq!(head.version, Version::Http10);
        assert!(!head.keep_alive);
    }

    #[test]
    fn http10_keep_alive() {
        assert!(ok(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(!ok(b"GET / HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n").keep_alive);
        assert!(!ok(b"GET / HTTP/1.1\r\nConnection: TE, close\r\n\r\n").keep_alive);
    }

    #[test]
    fn bare_line_endings_rejected() {
        assert_eq!(status(b"GET / HTTP/1.1\nHost: a\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\n\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n"), 400);
    }

    #[test]
    fn bare_lf_is_refused_before_the_head_ends() {
        // Feeds `buf` to an incremental parser: Ok(true) for a complete head,
        // Ok(false) for "need more", Err(status) for a rejection.
        fn feed(parser: &mut HeadParser, buf: &mut BytesMut) -> Result<bool, u16> {
            parser
                .parse(buf, &HeadLimits::default())
                .map(|head| head.is_some())
                .map_err(|e| e.status())
        }
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\nHost: a\n"[..]);
        assert_eq!(feed(&mut HeadParser::new(), &mut buf), Err(400));
        let mut parser = HeadParser::new();
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r"[..]);
        assert_eq!(feed(&mut parser, &mut buf), Ok(false));
        buf.extend_from_slice(b"\nHost: a\r\n");
        assert_eq!(feed(&mut parser, &mut buf), Ok(false));
        buf.extend_from_slice(b"\n");
        assert_eq!(feed(&mut parser, &mut buf), Err(400));
    }

    #[test]
    fn request_line_shapes() {
        assert_eq!(status(b"GET  / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1 \r\n\r\n"), 400);
        assert_eq!(status(b"GET /\r\n\r\n"), 400);
        assert_eq!(status(b"get / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"G(T / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.x\r\n\r\n"), 400);
        assert_eq!(status(b"GET / http/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/2.0\r\n\r\n"), 505);
        assert_eq!(status(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 505);
        assert_eq!(status(b"GET / HTTP/0.9\r\n\r\n"), 505);
        assert_eq!(ok(b"GET / HTTP/1.2\r\n\r\n").version, Version::Http11);
        assert_eq!(ok(b"M-SEARCH / HTTP/1.1\r\n\r\n").method(), b"M-SEARCH");
    }

    #[test]
    fn target_forms() {
        ok(b"OPTIONS * HTTP/1.1\r\n\r\n");
        assert_eq!(status(b"GET * HTTP/1.1\r\n\r\n"), 400);
        ok(b"GET http://example.com/x HTTP/1.1\r\n\r\n");
        ok(b"GET HTTPS://example.com HTTP/1.1\r\n\r\n");
        assert_eq!(
            status(b"GET http://user:pw@example.com/ HTTP/1.1\r\n\r\n"),
            400
        );
        assert_eq!(status(b"GET http:///x HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET ftp://example.com/ HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET example.com:80 HTTP/1.1\r\n\r\n"), 400);
        ok(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n");
        assert_eq!(status(b"CONNECT / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET /\xe9 HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET /\x7f HTTP/1.1\r\n\r\n"), 400);
    }

    #[test]
    fn field_syntax() {
        assert_eq!(status(b"GET / HTTP/1.1\r\nFoo : bar\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nFoo\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nF(o: bar\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nFoo: a\x00b\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nFoo: a\x7fb\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nFoo: a\r\n  folded\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\n Foo: a\r\n\r\n"), 400);
        let head = ok(b"GET / HTTP/1.1\r\nFoo: a\xe9\tb\r\nEmpty:\r\n\r\n");
        assert_eq!(head.field(b"foo"), Some(&b"a\xe9\tb"[..]));
        assert_eq!(head.field(b"EMPTY"), Some(&b""[..]));
    }

    #[test]
    fn content_length_rules() {
        assert_eq!(
            ok(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").framing,
            BodyFraming::None
        );
        assert_eq!(
            ok(b"POST / HTTP/1.1\r\nContent-Length: 007\r\n\r\n").framing,
            BodyFraming::Length(7)
        );
        for bad in ["+1", "-1", "0x3", "1 2", "", "1,1", "99999999999999999999"] {
            let req = format!("POST / HTTP/1.1\r\nContent-Length: {bad}\r\n\r\n");
            assert_eq!(status(req.as_bytes()), 400, "{bad:?}");
        }
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n"),
            400
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nContent-Length: 1073741824\r\n\r\n"),
            413
        );
    }

    #[test]
    fn transfer_encoding_rules() {
        let te = |v: &str| format!("POST / HTTP/1.1\r\nTransfer-Encoding: {v}\r\n\r\n");
        assert_eq!(ok(te("chunked").as_bytes()).framing, BodyFraming::Chunked);
        assert_eq!(ok(te("Chunked").as_bytes()).framing, BodyFraming::Chunked);
        assert_eq!(status(te("gzip, chunked").as_bytes()), 501);
        assert_eq!(status(te("chunked, gzip").as_bytes()), 501);
        assert_eq!(status(te("chunked, chunked").as_bytes()), 501);
        assert_eq!(status(te("identity").as_bytes()), 501);
        assert_eq!(status(te("").as_bytes()), 400);
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
            501
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400
        );
        assert_eq!(
            status(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400
        );
    }

    #[test]
    fn host_values() {
        ok(b"GET / HTTP/1.1\r\nHost: example.com:8080\r\n\r\n");
        ok(b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n");
        ok(b"GET / HTTP/1.1\r\nHost:\r\n\r\n");
        ok(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: \xe9\r\n\r\n"), 400);
    }

    #[test]
    fn duplicates() {
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"), 400);
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nContent-Type: a\r\nContent-Type: b\r\n\r\n"),
            400
        );
        let head = ok(b"GET / HTTP/1.1\r\nAccept: a\r\nAccept: b\r\n\r\n");
        assert_eq!(head.fields().len(), 2);
    }

    #[test]
    fn expect_continue_only_on_http11() {
        assert!(
            ok(b"POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n")
                .expect_continue
        );
        assert!(
            !ok(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
                .expect_continue
        );
        assert!(!ok(b"POST / HTTP/1.1\r\nExpect: 100-continue, x\r\n\r\n").expect_continue);
    }

    #[test]
    fn size_limits() {
        let limits = HeadLimits {
            max_head_bytes: 64,
            max_request_line: 32,
            max_headers: 2,
            ..HeadLimits::default()
        };
        let run = |input: &[u8]| {
            let mut buf = BytesMut::from(input);
            HeadParser::new().parse(&mut buf, &limits)
        };
        let long_line = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(40));
        assert_eq!(run(long_line.as_bytes()).unwrap_err().status(), 414);
        let partial_line = format!("GET /{}", "a".repeat(40));
        assert_eq!(run(partial_line.as_bytes()).unwrap_err().status(), 414);
        let big = format!("GET / HTTP/1.1\r\nA: {}\r\n\r\n", "b".repeat(60));
        assert_eq!(run(big.as_bytes()).unwrap_err().status(), 431);
        let partial = format!("GET / HTTP/1.1\r\nA: {}", "b".repeat(60));
        assert_eq!(run(partial.as_bytes()).unwrap_err().status(), 431);
        assert_eq!(
            run(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n")
                .unwrap_err()
                .status(),
            431
        );
        assert!(run(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n")
            .unwrap()
            .is_some());
    }

    #[test]
    fn many_fields_above_stack_storage() {
        let mut req = String::from("GET / HTTP/1.1\r\n");
        for i in 0..90 {
            req.push_str(&format!("X-{i}: v\r\n"));
        }
        req.push_str("\r\n");
        assert_eq!(ok(req.as_bytes()).fields().len(), 90);
    }
}

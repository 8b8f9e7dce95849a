//! HTTP/2 requests and responses in the HTTP/1.1 form the rest of the server speaks,
//! sans-IO. `request_head` writes an HTTP/2 request's pseudo-headers and fields as an
//! HTTP/1.1 head for `HeadParser`, so one set of rules (limits, field syntax, framing)
//! judges both protocols. `ResponseReader` reads back the HTTP/1.1 bytes a response
//! was produced as (status line, fields, Content-Length or chunked body) into a status,
//! fields and body pieces for HEADERS and DATA frames, and says whether the body was
//! complete. It knows nothing of frames, sockets or Python, and it reads only heads
//! Tapster itself wrote.

use bytes::Bytes;

use super::body::BodyDecoder;
use super::error::{ErrorKind, HttpError};
use super::request::{is_tchar, trim_ows, BodyFraming};
use super::response::status_allows_body;

/// Fields that belong to one HTTP/1.1 connection and have no meaning in HTTP/2 (RFC 9113
/// section 8.2.2): never sent on a stream.
const CONNECTION_SPECIFIC: &[&[u8]] = &[
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"transfer-encoding",
    b"upgrade",
];

/// Whether `name` may not appear in an HTTP/2 message.
pub fn is_connection_specific(name: &[u8]) -> bool {
    CONNECTION_SPECIFIC
        .iter()
        .any(|c| c.eq_ignore_ascii_case(name))
}

fn malformed(detail: &str) -> HttpError {
    HttpError::new(ErrorKind::BadRequest, detail)
}

/// Writes an HTTP/2 request as an HTTP/1.1 head into `out`: `method target HTTP/1.1`,
/// `host` from `:authority` (which wins over a `host` field, RFC 9113 section 8.3.1),
/// the fields in order, and the `cookie` fields joined by `; ` into one (section 8.2.3).
/// Refuses what could change the head's meaning once written as text: a CR, LF or NUL
/// in a value, a name that is not a lower-case token, a space or control in the target.
pub fn request_head<'a>(
    out: &mut Vec<u8>,
    method: &[u8],
    target: &[u8],
    authority: Option<&[u8]>,
    fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<(), HttpError> {
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(malformed("The :method is not a token"));
    }
    if target.is_empty() || target.iter().any(|&b| b <= b' ' || b == 0x7f) {
        return Err(malformed("The :path is empty or has spaces or controls"));
    }
    out.extend_from_slice(method);
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(authority) = authority {
        check_value(authority)?;
        push_line(out, b"host", authority);
    }
    let mut cookies: Vec<&[u8]> = Vec::new();
    for (name, value) in fields {
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b) && !b.is_ascii_uppercase()) {
            return Err(malformed("A field name is not a lower-case token"));
        }
        check_value(value)?;
        if name == b"cookie" {
            cookies.push(value);
        } else if !(authority.is_some() && name == b"host") {
            push_line(out, name, value);
        }
    }
    if !cookies.is_empty() {
        out.extend_from_slice(b"cookie: ");
        for (i, cookie) in cookies.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(cookie);
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), HttpError> {
    if value.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0)) {
        return Err(malformed("A field value has a CR, LF or NUL"));
    }
    Ok(())
}

fn push_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A response head read back: its status and its fields (connection-specific ones left
/// out), for a HEADERS frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// The head's bytes from the line after the status line.
    fields: Bytes,
}

impl ResponseHead {
    /// `part` (a name or value `fields` gave) as a shared slice of the head: no copy.
    pub fn shared(&self, part: &[u8]) -> Bytes {
        self.fields.slice_ref(part)
    }

    /// Name and value of every field an HTTP/2 response may carry, in order.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        field_lines(&self.fields).filter(|(name, _)| !is_connection_specific(name))
    }
}

/// Name and value of each `Name: value` line of a serialized header block.
fn field_lines(block: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
    block.split(|&b| b == b'\n').filter_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        Some((&line[..colon], trim_ows(&line[colon + 1..])))
    })
}

/// A piece of the response as HTTP/2 sends it.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    Head(ResponseHead),
    Data(Bytes),
}

/// Where the reading is.
#[derive(Debug)]
enum Reading {
    /// Bytes of the head so far.
    Head(Vec<u8>),
    /// A body framed by Content-Length or chunks.
    Body(BodyDecoder),
    /// A body without framing (only a server page could): it ends with the response.
    Unframed,
    /// Everything the head announced has been read.
    Complete,
}

/// Reads one response's HTTP/1.1 bytes, pushed in any pieces.
#[derive(Debug)]
pub struct ResponseReader {
    reading: Reading,
    head_request: bool,
}

/// The longest head read back (a larger one is a bug in whatever wrote it).
const MAX_HEAD: usize = 1 << 20;
const HEAD_END: &[u8] = b"\r\n\r\n";

impl ResponseReader {
    /// For the response to a request; `head_request`: it was HEAD, so no body follows.
    pub fn new(head_request: bool) -> ResponseReader {
        ResponseReader {
            reading: Reading::Head(Vec::new()),
            head_request,
        }
    }

    /// Whether the head has been read.
    pub fn head_read(&self) -> bool {
        !matches!(self.reading, Reading::Head(_))
    }

    /// Whether the response, ending now, would be complete: its head read, and all the
    /// body its framing announced (or no body framing at all).
    pub fn complete(&self) -> bool {
        matches!(self.reading, Reading::Complete | Reading::Unframed)
    }

    /// Reads `input`, appending the pieces it completes to `out`. Bytes past the end of
    /// a framed body are dropped.
    pub fn push(&mut self, mut input: Bytes, out: &mut Vec<Piece>) -> Result<(), HttpError> {
        while !input.is_empty() {
            match &mut self.reading {
                // The whole head in one piece (nearly always): no copy of it.
                Reading::Head(buf) if buf.is_empty() => {
                    let Some(at) = memchr::memmem::find(&input, HEAD_END) else {
                        buf.extend_from_slice(&input);
                        return self.check_head_size();
                    };
                    let head = input.split_to(at + HEAD_END.len());
                    self.read_head(head, out)?;
                }
                Reading::Head(buf) => {
                    let from = buf.len().saturating_sub(HEAD_END.len() - 1);
                    buf.extend_from_slice(&input);
                    let Some(at) = memchr::memmem::find(&buf[from..], HEAD_END) else {
                        return self.check_head_size();
                    };
                    let end = from + at + HEAD_END.len();
                    let rest = buf.len() - end;
                    input = input.slice(input.len() - rest..);
                    let mut head = Bytes::from(std::mem::take(buf));
                    head.truncate(end);
                    self.read_head(head, out)?;
                }
                Reading::Body(decoder) => {
                    let progress = decoder.decode(&input, &mut |data| {
                        out.push(Piece::Data(input.slice_ref(data)));
                    })?;
                    if progress.done {
                        self.reading = Reading::Complete;
                    }
                    input = input.slice(progress.consumed..);
                    if progress.consumed == 0 && !progress.done {
                        return Err(bad_response("body framing made no progress"));
                    }
                }
                Reading::Unframed => {
                    out.push(Piece::Data(std::mem::take(&mut input)));
                }
                Reading::Complete => return Ok(()),
            }
        }
        Ok(())
    }

    /// A head still incomplete is an error past `MAX_HEAD`.
    fn check_head_size(&self) -> Result<(), HttpError> {
        match &self.reading {
            Reading::Head(buf) if buf.len() > MAX_HEAD => Err(bad_response("head too large")),
            _ => Ok(()),
        }
    }

    fn read_head(&mut self, head: Bytes, out: &mut Vec<Piece>) -> Result<(), HttpError> {
        let line_end = memchr::memmem::find(&head, b"\r\n").unwrap_or(head.len());
        let status = head[..line_end]
            .splitn(3, |&b| b == b' ')
            .nth(1)
            .and_then(super::response::status_code)
            .ok_or_else(|| bad_response("no status code"))?;
        let fields = head.slice((line_end + 2).min(head.len())..);
        let head = ResponseHead { status, fields };
        let framing = body_framing(&head)?;
        self.reading = if self.head_request || !status_allows_body(status) {
            Reading::Complete
        } else {
            match framing {
                Some(f) => BodyDecoder::new(f, u64::MAX).map_or(Reading::Complete, Reading::Body),
                None => Reading::Unframed,
            }
        };
        out.push(Piece::Head(head));
        Ok(())
    }
}

/// How the body after `head` is framed (`None`: until the response ends).
fn body_framing(head: &ResponseHead) -> Result<Option<BodyFraming>, HttpError> {
    let mut framing = None;
    for (name, value) in field_lines(&head.fields) {
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if !value.eq_ignore_ascii_case(b"chunked") {
                return Err(bad_response("transfer coding other than chunked"));
            }
            return Ok(Some(BodyFraming::Chunked));
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| bad_response("bad Content-Length"))?;
            framing = Some(if n == 0 {
                BodyFraming::None
            } else {
                BodyFraming::Length(n)
            });
        }
    }
    Ok(framing)
}

fn bad_response(detail: &str) -> HttpError {
    HttpError::new(
        ErrorKind::BadRequest,
        format!("response not readable for HTTP/2: {detail}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::encoder::{BodyEncoder, Ending};
    use crate::http::request::{HeadLimits, HeadParser, Version};
    use crate::http::response::{
        write_head, Framing, FramingInput, ServerHeader, CHUNK_END, LAST_CHUNK,
    };
    use bytes::BytesMut;
    use proptest::prelude::*;

    fn read_all(bytes: &[u8], head_request: bool, cuts: &[usize]) -> (ResponseReader, Vec<Piece>) {
        let mut reader = ResponseReader::new(head_request);
        let mut out = Vec::new();
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        points.push(bytes.len());
        points.sort_unstable();
        let mut fed = 0;
        for p in points {
            reader
                .push(Bytes::copy_from_slice(&bytes[fed..p]), &mut out)
                .expect("readable");
            fed = p;
        }
        (reader, out)
    }

    fn body_of(pieces: &[Piece]) -> Vec<u8> {
        pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Data(d) => Some(d.to_vec()),
                Piece::Head(_) => None,
            })
            .flatten()
            .collect()
    }

    fn head_of(pieces: &[Piece]) -> &ResponseHead {
        match &pieces[0] {
            Piece::Head(h) => h,
            Piece::Data(_) => panic!("data before the head"),
        }
    }

    #[test]
    fn length_body_and_connection_fields_dropped() {
        let bytes = b"HTTP/2 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhelloEXTRA";
        let (reader, pieces) = read_all(bytes, false, &[3, 20, 70]);
        let head = head_of(&pieces);
        assert_eq!(head.status, 200);
        let fields: Vec<_> = head.fields().collect();
        assert_eq!(
            fields,
            vec![
                (&b"Content-Type"[..], &b"text/plain"[..]),
                (&b"Content-Length"[..], &b"5"[..])
            ]
        );
        assert_eq!(body_of(&pieces), b"hello");
        assert!(reader.complete());
    }

    #[test]
    fn chunked_body_is_complete_only_after_the_last_chunk() {
        let bytes = b"HTTP/2 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n";
        let (reader, pieces) = read_all(bytes, false, &[]);
        assert_eq!(body_of(&pieces), b"abcde");
        assert!(!reader.complete(), "no last chunk: cut short");
        let (reader, _) = read_all(&[&bytes[..], b"0\r\n\r\n"].concat(), false, &[]);
        assert!(reader.complete());
    }

    #[test]
    fn short_length_body_is_incomplete() {
        let (reader, pieces) = read_all(
            b"HTTP/2 200 OK\r\nContent-Length: 10\r\n\r\nabc",
            false,
            &[],
        );
        assert_eq!(body_of(&pieces), b"abc");
        assert!(reader.head_read());
        assert!(!reader.complete());
    }

    #[test]
    fn head_request_and_304_have_no_body() {
        let (reader, pieces) = read_all(b"HTTP/2 200 OK\r\nContent-Length: 10\r\n\r\n", true, &[]);
        assert!(reader.complete());
        assert_eq!(pieces.len(), 1);
        let (reader, _) = read_all(
            b"HTTP/2 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
            false,
            &[],
        );
        assert!(reader.complete());
    }

    #[test]
    fn unreadable_heads_are_errors() {
        let mut reader = ResponseReader::new(false);
        let mut out = Vec::new();
        assert!(reader
            .push(Bytes::from_static(b"garbage\r\n\r\n"), &mut out)
            .is_err());
        let mut reader = ResponseReader::new(false);
        assert!(reader
            .push(
                Bytes::from_static(b"HTTP/2 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
                &mut out
            )
            .is_err());
    }

    #[test]
    fn request_head_maps_authority_and_cookies() {
        let mut out = Vec::new();
        let fields: Vec<(&[u8], &[u8])> = vec![
            (b"cookie", b"a=1"),
            (b"host", b"other"),
            (b"accept", b"*/*"),
            (b"cookie", b"b=2"),
        ];
        request_head(
            &mut out,
            b"GET",
            b"/x?y",
            Some(b"example.com"),
            fields.into_iter(),
        )
        .expect("valid");
        assert_eq!(
            out,
            b"GET /x?y HTTP/1.1\r\nhost: example.com\r\naccept: */*\r\ncookie: a=1; b=2\r\n\r\n"
        );
        let mut buf = BytesMut::from(&out[..]);
        let head = HeadParser::new()
            .parse(&mut buf, &HeadLimits::default())
            .expect("parses")
            .expect("complete");
        assert_eq!(head.field(b"cookie"), Some(&b"a=1; b=2"[..]));
    }

    #[test]
    fn request_head_refuses_injection() {
        type Case = (&'static [u8], &'static [u8], &'static [u8], &'static [u8]);
        let cases: Vec<Case> = vec![
            (b"GET", b"/", b"x", b"a\r\ntransfer-encoding: chunked"),
            (b"GET", b"/", b"x", b"a\nb"),
            (b"GET", b"/", b"x", b"a\0b"),
            (b"GET", b"/", b"X-Upper", b"v"),
            (b"GET", b"/", b"bad name", b"v"),
            (b"GET", b"/a b", b"x", b"v"),
            (b"GET", b"", b"x", b"v"),
            (b"G T", b"/", b"x", b"v"),
        ];
        for (method, target, name, value) in cases {
            let mut out = Vec::new();
            let fields = std::iter::once((name, value));
            assert!(
                request_head(&mut out, method, target, None, fields).is_err(),
                "{:?} {:?} {:?} {:?}",
                method,
                target,
                name,
                value
            );
        }
    }

    /// A response as the WSGI side writes it for an HTTP/2 request: `write_head` and
    /// `BodyEncoder` framing.
    fn produce(
        status: u16,
        length: Option<u64>,
        head_request: bool,
        pieces: &[Vec<u8>],
    ) -> Vec<u8> {
        let framing = Framing::decide(FramingInput {
            version: Version::Http2,
            head_request,
            client_keep_alive: true,
            status,
            content_length: length,
        });
        let mut out = Vec::new();
        let status_text = format!("{status} Something");
        write_head(
            &mut out,
            Version::Http2,
            status_text.as_bytes(),
            b"X-App: yes\r\n",
            false,
            ServerHeader::Server(b"tapster"),
            &framing,
        );
        let mut encoder = BodyEncoder::new(framing.body);
        for piece in pieces {
            let framed = encoder.frame(piece.len() as u64);
            if let Some(h) = framed.header {
                out.extend_from_slice(h.as_bytes());
            }
            out.extend_from_slice(&piece[..framed.take as usize]);
            if framed.chunk_end {
                out.extend_from_slice(CHUNK_END);
            }
        }
        if encoder.finish() == Ending::LastChunk {
            out.extend_from_slice(LAST_CHUNK);
        }
        out
    }

    proptest! {
        /// Whatever the framing and however the bytes are cut, the reader gives back the
        /// status, the application's field and exactly the body that was framed.
        #[test]
        fn reads_back_what_was_written(
            status in prop_oneof![Just(200u16), Just(204), Just(304), Just(404), Just(500)],
            pieces in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..6),
            declare in any::<bool>(),
            head_request in any::<bool>(),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let total: u64 = pieces.iter().map(|p| p.len() as u64).sum();
            let bytes = produce(status, declare.then_some(total), head_request, &pieces);
            let (reader, out) = read_all(&bytes, head_request, &cuts);
            let head = head_of(&out);
            prop_assert_eq!(head.status, status);
            prop_assert!(head.fields().any(|(n, v)| n == b"X-App" && v == b"yes"));
            prop_assert!(head.fields().all(|(n, _)| !is_connection_specific(n)));
            let expected: Vec<u8> = if head_request || !status_allows_body(status) {
                Vec::new()
            } else {
                pieces.concat()
            };
            prop_assert_eq!(body_of(&out), expected);
            prop_assert!(reader.complete());
        }

        /// Any bytes at all: an error or pieces, never a panic.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400), head_request in any::<bool>()) {
            let mut reader = ResponseReader::new(head_request);
            let mut out = Vec::new();
            let _ = reader.push(Bytes::from(bytes), &mut out);
        }
    }
}

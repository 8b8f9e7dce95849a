//! Request-body decoding, sans-IO: Content-Length and a strict chunked decoder.
//!
//! The decoder is fed whatever bytes have arrived and hands decoded body bytes to a
//! callback. It is stricter than httparse's `parse_chunk_size`: hex digits only, no
//! whitespace, no `0x` or signs, CRLF required after every chunk, trailers bounded and
//! validated. Chunk extensions carry nothing Tapster uses: like hyper, the decoder skips
//! them without judging their grammar, within the size line's bound and refusing
//! control characters (a CR, LF or NUL there is how smuggling attempts look). A chunk
//! larger than what `max_body` still allows is refused as soon as its size is read.

use super::error::{ErrorKind, HttpError};
use super::request::{is_tchar, BodyFraming};

/// Longest chunk-size line accepted (size, extensions, CRLF).
pub const MAX_CHUNK_LINE: usize = 4096;
/// Largest trailer section accepted.
pub const MAX_TRAILER_BYTES: usize = 16384;
/// A chunk size has at most this many hex digits (2^64 - 1).
const MAX_SIZE_DIGITS: u8 = 16;

/// Decodes one request body. Create it from the head's framing, then call `decode`
/// with each batch of received bytes until it reports `done`.
#[derive(Debug)]
pub struct BodyDecoder {
    kind: Kind,
    /// Wire bytes consumed so far (framing included, as Waitress counts them).
    wire: u64,
    max_body: u64,
}

#[derive(Debug)]
enum Kind {
    Length { remaining: u64 },
    Chunked(Chunked),
}

/// What one call to `decode` did.
#[derive(Debug, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the input used; the rest belongs to the next request.
    pub consumed: usize,
    /// The body is complete.
    pub done: bool,
}

impl BodyDecoder {
    /// `None` when the request has no body.
    pub fn new(framing: BodyFraming, max_body: u64) -> Option<Self> {
        let kind = match framing {
            BodyFraming::None => return None,
            BodyFraming::Length(n) => Kind::Length { remaining: n },
            BodyFraming::Chunked => Kind::Chunked(Chunked::default()),
        };
        Some(BodyDecoder {
            kind,
            wire: 0,
            max_body,
        })
    }

    /// Bytes the decoder still needs when the length is known (a hint for reading).
    pub fn remaining_hint(&self) -> Option<u64> {
        match &self.kind {
            Kind::Length { remaining } => Some(*remaining),
            Kind::Chunked(_) => None,
        }
    }

    /// For a Content-Length body: `n` body bytes were received by other means (straight
    /// into the body buffer). Does nothing for chunked bodies.
    pub fn skip_length(&mut self, n: usize) {
        if let Kind::Length { remaining } = &mut self.kind {
            let n = (n as u64).min(*remaining);
            *remaining -= n;
            self.wire += n;
        }
    }

    pub fn is_done(&self) -> bool {
        match &self.kind {
            Kind::Length { remaining } => *remaining == 0,
            Kind::Chunked(c) => c.state == State::Done,
        }
    }

    /// Decodes as much of `input` as possible, passing body bytes to `out`.
    pub fn decode(
        &mut self,
        input: &[u8],
        out: &mut dyn FnMut(&[u8]),
    ) -> Result<Progress, HttpError> {
        let progress = match &mut self.kind {
            Kind::Length { remaining } => {
                let take = usize::try_from(*remaining)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                if take > 0 {
                    out(&input[..take]);
                }
                *remaining -= take as u64;
                Progress {
                    consumed: take,
                    done: *remaining == 0,
                }
            }
            Kind::Chunked(chunked) => {
                let allowance = self.max_body.saturating_sub(self.wire);
                chunked.decode(input, allowance, out).map_err(|err| {
                    if err.status() == 413 {
                        too_large(self.max_body)
                    } else {
                        err
                    }
                })?
            }
        };
        self.wire += progress.consumed as u64;
        if matches!(self.kind, Kind::Chunked(_)) && self.wire >= self.max_body {
            return Err(too_large(self.max_body));
        }
        Ok(progress)
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a chunk size.
    #[default]
    Size,
    /// Inside the extensions after `;`, skipped up to the CR.
    Ext(Ext),
    /// Got CR after the size line, want LF.
    SizeLf,
    /// Reading chunk data.
    Data,
    /// After data, want CR.
    DataCr,
    /// After data CR, want LF.
    DataLf,
    /// At the start of a trailer line (or the final CRLF).
    TrailerStart,
    /// Inside a trailer field name.
    TrailerName,
    /// Inside a trailer field value.
    TrailerValue,
    /// Got CR at the end of a trailer line, want LF.
    TrailerLf,
    /// Got CR on an empty line: want the final LF.
    EndLf,
    Done,
}

#[derive(Debug, Default)]
struct Chunked {
    state: State,
    size: u64,
    digits: u8,
    remaining: u64,
    /// Bytes of the current size line, bounded by MAX_CHUNK_LINE.
    line_len: usize,
    /// Bytes of the trailer section, bounded by MAX_TRAILER_BYTES.
    trailer_len: usize,
}

fn too_large(max_body: u64) -> HttpError {
    HttpError::new(
        ErrorKind::BodyTooLarge,
        format!("exceeds max_body of {max_body}"),
    )
}

fn invalid_size() -> HttpError {
    HttpError::bad_request("Invalid chunk size")
}

fn invalid_ext() -> HttpError {
    HttpError::bad_request("Invalid chunk extension")
}

/// Where the skipping of extensions is: only quoted strings matter, so that a CR
/// inside one cannot end the size line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ext {
    Plain,
    Quoted,
    /// After a backslash inside a quoted string.
    Escaped,
}

/// May stand in a chunk extension: HTAB, SP, visible ASCII and obs-text; no other
/// control characters.
fn extension_byte(b: u8) -> bool {
    b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80
}

impl Chunked {
    /// `allowance`: wire bytes the limit still allows from the start of `input`.
    fn decode(
        &mut self,
        input: &[u8],
        allowance: u64,
        out: &mut dyn FnMut(&[u8]),
    ) -> Result<Progress, HttpError> {
        let mut i = 0;
        while i < input.len() && self.state != State::Done {
            let b = input[i];
            match self.state {
                State::Data => {
                    let avail = input.len() - i;
                    let take = usize::try_from(self.remaining)
                        .unwrap_or(usize::MAX)
                        .min(avail);
                    out(&input[i..i + take]);
                    self.remaining -= take as u64;
                    i += take;
                    if self.remaining == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::Size | State::Ext(_) | State::SizeLf => {
                    self.size_line_byte(b, allowance.saturating_sub(i as u64))?
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(HttpError::bad_request("Chunk not properly terminated"));
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(HttpError::bad_request("Chunk not properly terminated"));
                    }
                    self.state = State::Size;
                }
                State::TrailerStart
                | State::TrailerName
                | State::TrailerValue
                | State::TrailerLf
                | State::EndLf => self.trailer_byte(b)?,
                State::Done => unreachable!("loop condition excludes Done"),
            }
            i += 1;
        }
        Ok(Progress {
            consumed: i,
            done: self.state == State::Done,
        })
    }

    /// One byte of a size line; `allowance`: the body bytes the limit still allows.
    fn size_line_byte(&mut self, b: u8, allowance: u64) -> Result<(), HttpError> {
        self.line_len += 1;
        if self.line_len > MAX_CHUNK_LINE {
            return Err(HttpError::bad_request("Chunk size line too long"));
        }
        match self.state {
            State::Size => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    if self.digits == MAX_SIZE_DIGITS {
                        return Err(invalid_size());
                    }
                    let digit = (b as char).to_digit(16).unwrap_or(0) as u64;
                    self.size = (self.size << 4) | digit;
                    self.digits += 1;
                }
                b';' if self.digits > 0 => self.state = State::Ext(Ext::Plain),
                b'\r' if self.digits > 0 => self.state = State::SizeLf,
                _ => return Err(invalid_size()),
            },
            State::Ext(ext) => {
                self.state = match (ext, b) {
                    (_, b) if !extension_byte(b) && b != b'\r' => return Err(invalid_ext()),
                    (Ext::Plain, b'\r') => State::SizeLf,
                    (Ext::Plain, b'"') => State::Ext(Ext::Quoted),
                    (Ext::Plain, _) => State::Ext(Ext::Plain),
                    // A CR inside a quoted string does not end the line: refused, as a
                    // front end that reads the quotes would frame it differently.
                    (Ext::Quoted | Ext::Escaped, b'\r') => return Err(invalid_ext()),
                    (Ext::Quoted, b'"') => State::Ext(Ext::Plain),
                    (Ext::Quoted, b'\\') => State::Ext(Ext::Escaped),
                    (Ext::Quoted | Ext::Escaped, _) => State::Ext(Ext::Quoted),
                }
            }
            State::SizeLf => {
                if b != b'\n' {
                    return Err(invalid_size());
                }
                self.line_len = 0;
                self.digits = 0;
                if self.size == 0 {
                    self.state = State::TrailerStart;
                } else if self.size >= allowance {
                    // The decoder words it with the limit.
                    return Err(too_large(0));
                } else {
                    self.remaining = self.size;
                    self.size = 0;
                    self.state = State::Data;
                }
            }
            _ => unreachable!("size_line_byte called outside the size line"),
        }
        Ok(())
    }

    fn trailer_byte(&mut self, b: u8) -> Result<(), HttpError> {
        self.trailer_len += 1;
        if self.trailer_len > MAX_TRAILER_BYTES {
            return Err(HttpError::bad_request("Chunked trailer section too large"));
        }
        let bad = || HttpError::bad_request("Invalid chunked trailer");
        self.state = match (self.state, b) {
            (State::TrailerStart, b'\r') => State::EndLf,
            (State::TrailerStart, b) if is_tchar(b) => State::TrailerName,
            (State::TrailerName, b) if is_tchar(b) => State::TrailerName,
            (State::TrailerName, b':') => State::TrailerValue,
            (State::TrailerValue, b'\r') => State::TrailerLf,
            (State::TrailerValue, b) if b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80 => {
                State::TrailerValue
            }
            (State::TrailerLf, b'\n') => State::TrailerStart,
            (State::EndLf, b'\n') => State::Done,
            _ => return Err(bad()),
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, usize), HttpError> {
        let mut dec = BodyDecoder::new(BodyFraming::Chunked, 1 << 30).unwrap();
        let mut body = Vec::new();
        let p = dec.decode(input, &mut |d| body.extend_from_slice(d))?;
        assert!(p.done, "body incomplete");
        Ok((body, p.consumed))
    }

    fn rejected(input: &[u8]) -> u16 {
        let mut dec = BodyDecoder::new(BodyFraming::Chunked, 1 << 30).unwrap();
        dec.decode(input, &mut |_| {})
            .expect_err("must be rejected")
            .status()
    }

    #[test]
    fn content_length_stops_at_length() {
        let mut dec = BodyDecoder::new(BodyFraming::Length(3), 100).unwrap();
        let mut body = Vec::new();
        let p = dec
            .decode(b"abcdef", &mut |d| body.extend_from_slice(d))
            .unwrap();
        assert_eq!(
            p,
            Progress {
                consumed: 3,
                done: true
            }
        );
        assert_eq!(body, b"abc");
    }

    #[test]
    fn chunked_basic() {
        let (body, used) =
            decode_all(b"4\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\n\r\nNEXT")
                .unwrap();
        assert_eq!(body, b"Wikipedia in\r\n\r\nchunks.");
        assert_eq!(used, 43);
    }

    #[test]
    fn chunked_extensions_and_trailers() {
        let (body, _) =
            decode_all(b"3;a=b;c;d=\"x\\\"y\"\r\nabc\r\n0;last\r\nX-T: 1\r\nY: \r\n\r\n").unwrap();
        assert_eq!(body, b"abc");
    }

    #[test]
    fn chunk_size_strictness() {
        for bad in [
            &b"+3\r\nabc\r\n0\r\n\r\n"[..],
            b"0x3\r\nabc\r\n0\r\n\r\n",
            b" 3\r\nabc\r\n0\r\n\r\n",
            b"3 \r\nabc\r\n0\r\n\r\n",
            b"-3\r\nabc\r\n0\r\n\r\n",
            b"\r\n3\r\nabc\r\n0\r\n\r\n",
            b"3\nabc\r\n0\r\n\r\n",
            b"11111111111111111\r\n",
            b"g\r\n",
        ] {
            assert_eq!(rejected(bad), 400, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn extensions_are_skipped_whatever_their_grammar() {
        // RFC 9112 7.1.1 allows names without values and BWS around ";" and "="; as
        // Tapster uses no extension, any visible text up to the CR is skipped.
        for good in [
            &b"3; name\r\nabc\r\n0\r\n\r\n"[..],
            b"3; a; b=c\r\nabc\r\n0\r\n\r\n",
            b"3;a = \"q\"\r\nabc\r\n0\r\n\r\n",
            b"3;\r\nabc\r\n0\r\n\r\n",
            b"3;a=\"x\"y\r\nabc\r\n0; z\r\n\r\n",
            b"3;\tx\x80\r\nabc\r\n0\r\n\r\n",
        ] {
            let (body, _) = decode_all(good)
                .unwrap_or_else(|e| panic!("{:?}: {e:?}", String::from_utf8_lossy(good)));
            assert_eq!(body, b"abc");
        }
    }

    #[test]
    fn extension_strictness() {
        for bad in [
            &b"3;a=\"x\nabc\r\n0\r\n\r\n"[..],
            b"3;a\nb\r\nabc\r\n0\r\n\r\n",
            b"3;a=\"\x01\"\r\nabc\r\n0\r\n\r\n",
            b"3;a\x00\r\nabc\r\n0\r\n\r\n",
            b"3;a\x7f\r\nabc\r\n0\r\n\r\n",
            b"3;a\rb\r\nabc\r\n0\r\n\r\n",
            // A CR inside a quoted string (closed or not) does not end the line.
            b"3;a=\"x\r\nabc\r\n0\r\n\r\n",
            b"3;a=\"x\\\r\nabc\r\n0\r\n\r\n",
            // Whitespace between the size and ";" stays refused, as by most servers.
            b"3 ;a\r\nabc\r\n0\r\n\r\n",
        ] {
            assert_eq!(rejected(bad), 400, "{:?}", String::from_utf8_lossy(bad));
        }
        let mut long = b"3;".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_CHUNK_LINE));
        assert_eq!(rejected(&long), 400);
    }

    #[test]
    fn data_terminator_required() {
        assert_eq!(rejected(b"3\r\nabcd\r\n0\r\n\r\n"), 400);
        assert_eq!(rejected(b"3\r\nabc\n0\r\n\r\n"), 400);
        assert_eq!(rejected(b"3\r\nabc\r0\r\n\r\n"), 400);
    }

    #[test]
    fn trailer_strictness() {
        assert_eq!(rejected(b"0\r\nBad Name: x\r\n\r\n"), 400);
        assert_eq!(rejected(b"0\r\nX: a\nb\r\n\r\n"), 400);
        assert_eq!(rejected(b"0\r\n\n"), 400);
        let mut big = b"0\r\n".to_vec();
        for _ in 0..2000 {
            big.extend_from_slice(b"X-Long: 0123456789\r\n");
        }
        assert_eq!(rejected(&big), 400);
    }

    #[test]
    fn chunked_limit_counts_wire_bytes() {
        let mut dec = BodyDecoder::new(BodyFraming::Chunked, 10).unwrap();
        let err = dec.decode(b"5\r\nabcde\r\n5\r\n", &mut |_| {}).unwrap_err();
        assert_eq!(err.status(), 413);
    }

    #[test]
    fn a_chunk_larger_than_the_limit_allows_is_refused_at_its_size_line() {
        // 1 TB announced, no data sent: refused at once instead of waiting for it.
        let mut dec = BodyDecoder::new(BodyFraming::Chunked, 1_000_000).unwrap();
        let err = dec.decode(b"E8D4A51000\r\n", &mut |_| {}).unwrap_err();
        assert_eq!(err.status(), 413);
        // What is already received counts: after 10 wire bytes and a 7-byte size line,
        // a chunk of 999,984 bytes would reach the limit.
        let mut dec = BodyDecoder::new(BodyFraming::Chunked, 1_000_000).unwrap();
        assert!(dec.decode(b"5\r\nabcde\r\n", &mut |_| {}).is_ok());
        let err = dec.decode(b"F4230\r\n", &mut |_| {}).unwrap_err();
        assert_eq!(err.status(), 413);
        // Just under it is still received.
        let mut dec = BodyDecoder::new(BodyFraming::Chunked, 1_000_000).unwrap();
        assert!(dec.decode(b"F0000\r\n", &mut |_| {}).is_ok());
    }

    #[test]
    fn incremental_equals_whole() {
        let input = b"4;x=1\r\nWiki\r\n5\r\npedia\r\n0\r\nT: v\r\n\r\n";
        for split in 0..input.len() {
            let mut dec = BodyDecoder::new(BodyFraming::Chunked, 1 << 20).unwrap();
            let mut body = Vec::new();
            let a = dec
                .decode(&input[..split], &mut |d| body.extend_from_slice(d))
                .unwrap();
            assert_eq!(a.consumed, split);
            let b = dec
                .decode(&input[split..], &mut |d| body.extend_from_slice(d))
                .unwrap();
            assert!(b.done);
            assert_eq!(body, b"Wikipedia");
        }
    }
}

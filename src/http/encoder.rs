//! Response-body framing, sans-IO: the mirror of `body.rs`. Given the `BodyMode` the
//! head announced, it says for each piece of body what goes on the wire (a chunk
//! header, how much of the piece, a chunk end), cuts at the Content-Length, counts
//! what was too much or may not be sent, and how the body ends (last chunk, or short
//! of its length). It never copies body bytes and knows nothing of sockets or Python;
//! the caller assembles the bytes and decides what to log.

use super::response::{chunk_header, BodyMode};

/// A chunk-size line, ready to send (`1A\r\n`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkHeader {
    buf: [u8; 18],
    len: usize,
}

impl ChunkHeader {
    fn of(len: u64) -> ChunkHeader {
        let (buf, len) = chunk_header(usize::try_from(len).unwrap_or(usize::MAX));
        ChunkHeader { buf, len }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// What to send for one piece of body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Framed {
    /// Sent first (chunked framing).
    pub header: Option<ChunkHeader>,
    /// How many bytes of the piece to send, from its start.
    pub take: u64,
    /// Send `CHUNK_END` after them (chunked framing).
    pub chunk_end: bool,
    /// Bytes of the piece dropped because they go past the Content-Length.
    pub excess: u64,
    /// Bytes of the piece dropped because the response may not have a body (HEAD,
    /// 204, 304, 1xx).
    pub suppressed: u64,
}

/// How a body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Send `LAST_CHUNK`; the body is complete.
    LastChunk,
    /// Nothing more to send; the body is complete.
    Complete,
    /// Fewer bytes than the Content-Length were sent: the connection must close after
    /// them, so the client sees the shortfall.
    Short { sent: u64, declared: u64 },
}

/// Frames one response body.
#[derive(Clone, Copy, Debug)]
pub struct BodyEncoder {
    mode: BodyMode,
    /// Body bytes sent (after any cut).
    sent: u64,
}

impl BodyEncoder {
    pub fn new(mode: BodyMode) -> BodyEncoder {
        BodyEncoder { mode, sent: 0 }
    }

    pub fn mode(&self) -> BodyMode {
        self.mode
    }

    /// Body bytes sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// How to send a piece of `len` bytes. An empty piece sends nothing (a zero-size
    /// chunk would end the body).
    pub fn frame(&mut self, len: u64) -> Framed {
        let mut framed = Framed {
            header: None,
            take: 0,
            chunk_end: false,
            excess: 0,
            suppressed: 0,
        };
        if len == 0 {
            return framed;
        }
        match self.mode {
            BodyMode::Suppressed => framed.suppressed = len,
            BodyMode::Length(declared) => {
                framed.take = len.min(declared.saturating_sub(self.sent));
                framed.excess = len - framed.take;
            }
            BodyMode::Chunked => {
                framed.header = Some(ChunkHeader::of(len));
                framed.take = len;
                framed.chunk_end = true;
            }
            BodyMode::UntilClose => framed.take = len,
        }
        self.sent += framed.take;
        framed
    }

    /// How the body ends, once the application has produced all of it.
    pub fn finish(&self) -> Ending {
        match self.mode {
            BodyMode::Chunked => Ending::LastChunk,
            BodyMode::Length(declared) if self.sent < declared => Ending::Short {
                sent: self.sent,
                declared,
            },
            BodyMode::Length(_) | BodyMode::UntilClose | BodyMode::Suppressed => Ending::Complete,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::body::BodyDecoder;
    use crate::http::request::BodyFraming;
    use crate::http::response::{CHUNK_END, LAST_CHUNK};
    use proptest::prelude::*;

    /// The wire bytes for `pieces`, as a caller would assemble them.
    fn encode(mode: BodyMode, pieces: &[&[u8]]) -> (Vec<u8>, BodyEncoder) {
        let mut encoder = BodyEncoder::new(mode);
        let mut wire = Vec::new();
        for piece in pieces {
            let framed = encoder.frame(piece.len() as u64);
            if let Some(header) = framed.header {
                wire.extend_from_slice(header.as_bytes());
            }
            wire.extend_from_slice(&piece[..framed.take as usize]);
            if framed.chunk_end {
                wire.extend_from_slice(CHUNK_END);
            }
        }
        if encoder.finish() == Ending::LastChunk {
            wire.extend_from_slice(LAST_CHUNK);
        }
        (wire, encoder)
    }

    #[test]
    fn content_length_cuts_what_is_too_much() {
        let mut encoder = BodyEncoder::new(BodyMode::Length(5));
        let first = encoder.frame(3);
        assert_eq!((first.take, first.excess), (3, 0));
        let second = encoder.frame(4);
        assert_eq!((second.take, second.excess), (2, 2));
        assert_eq!(encoder.frame(1).excess, 1);
        assert_eq!(encoder.finish(), Ending::Complete);
    }

    #[test]
    fn a_short_body_is_reported() {
        let mut encoder = BodyEncoder::new(BodyMode::Length(10));
        encoder.frame(4);
        assert_eq!(
            encoder.finish(),
            Ending::Short {
                sent: 4,
                declared: 10
            }
        );
    }

    #[test]
    fn chunked_frames_each_piece_and_ends_with_the_last_chunk() {
        let (wire, _) = encode(BodyMode::Chunked, &[b"hello", b"", b" world!!!!!!!!!!!"]);
        assert_eq!(
            &wire[..],
            &b"5\r\nhello\r\n11\r\n world!!!!!!!!!!!\r\n0\r\n\r\n"[..]
        );
    }

    #[test]
    fn a_body_that_may_not_be_sent_is_counted_not_framed() {
        let mut encoder = BodyEncoder::new(BodyMode::Suppressed);
        let framed = encoder.frame(7);
        assert_eq!(
            (framed.take, framed.suppressed, framed.header),
            (0, 7, None)
        );
        assert_eq!(encoder.finish(), Ending::Complete);
    }

    fn pieces_of(body: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
        points.sort_unstable();
        let mut pieces = Vec::new();
        let mut last = 0;
        for p in points.into_iter().chain([body.len()]) {
            pieces.push(body[last..p].to_vec());
            last = p;
        }
        pieces
    }

    proptest! {
        /// Cut at a Content-Length, any split of the body sends the same bytes.
        #[test]
        fn any_split_sends_the_same_length_framed_body(
            body in proptest::collection::vec(any::<u8>(), 0..600),
            declared in 0u64..700,
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let pieces = pieces_of(&body, &cuts);
            let refs: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
            let (wire, encoder) = encode(BodyMode::Length(declared), &refs);
            let expected = &body[..body.len().min(declared as usize)];
            prop_assert_eq!(&wire[..], expected);
            prop_assert_eq!(encoder.sent(), expected.len() as u64);
        }

        /// Chunked, any split of the body decodes (with Tapster's own strict decoder)
        /// to the same body, and ends where the decoder says it ends.
        #[test]
        fn any_split_of_a_chunked_body_decodes_to_the_body(
            body in proptest::collection::vec(any::<u8>(), 0..600),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let pieces = pieces_of(&body, &cuts);
            let refs: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
            let (wire, _) = encode(BodyMode::Chunked, &refs);
            let mut decoder = BodyDecoder::new(BodyFraming::Chunked, u64::MAX).unwrap();
            let mut decoded = Vec::new();
            let progress = decoder
                .decode(&wire, &mut |d| decoded.extend_from_slice(d))
                .unwrap();
            prop_assert!(progress.done);
            prop_assert_eq!(progress.consumed, wire.len());
            prop_assert_eq!(decoded, body);
        }
    }
}

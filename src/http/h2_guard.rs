//! A watch on the frames an HTTP/2 client sends, sans-IO. It reads the 9-byte frame
//! headers of the byte stream (after the 24-byte connection preface) and skips the
//! payloads, counting the frames that cost the server work without asking it for a
//! response: RST_STREAM (the "rapid reset" attack, CVE-2023-44487, opens streams and
//! cancels them at once, so no limit on open streams is ever reached), and PING,
//! SETTINGS and PRIORITY (each must be processed, and PING and SETTINGS answered).
//! Each kind draws on a token bucket; a client that empties one is flooding, and the
//! connection is closed with ENHANCE_YOUR_CALM. The `h2` crate already bounds what
//! these frames can make it hold (one pending PONG, CONTINUATION frames per header
//! block, reset streams kept); this bounds the work. No sockets, no clock of its own.

use std::time::Instant;

/// The client connection preface (RFC 9113 section 3.4), which precedes the frames.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// RST_STREAM frames a client may send at once, and how many more a second after that.
/// A browser cancels a few streams when a page is left; a rapid-reset attack sends
/// thousands a second.
pub const RESET_BURST: u32 = 200;
pub const RESETS_PER_SECOND: u32 = 50;
/// PING, SETTINGS and PRIORITY frames (not acknowledgements) at once and a second.
/// Clients send a few when they connect and a keepalive PING now and then.
pub const CONTROL_BURST: u32 = 200;
pub const CONTROL_PER_SECOND: u32 = 50;

const HEADER_LEN: usize = 9;
const RST_STREAM: u8 = 0x3;
const PRIORITY: u8 = 0x2;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const ACK: u8 = 0x1;

/// What a client flooded the server with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flood {
    /// RST_STREAM frames faster than `RESETS_PER_SECOND` past `RESET_BURST`.
    Resets,
    /// PING, SETTINGS or PRIORITY frames faster than `CONTROL_PER_SECOND`.
    Control,
}

impl Flood {
    /// The name in log lines and in `tapster_h2_floods_total{kind}`.
    pub fn as_str(self) -> &'static str {
        match self {
            Flood::Resets => "rst_stream",
            Flood::Control => "control_frames",
        }
    }
}

/// Where in the byte stream the scan is.
#[derive(Clone, Copy, Debug)]
enum Scan {
    /// Inside the preface: this many bytes of it still to skip.
    Preface(usize),
    /// Reading a frame header: `have` of its bytes so far.
    Header { buf: [u8; HEADER_LEN], have: usize },
    /// Skipping a frame's payload: this many bytes left.
    Payload(u32),
}

/// Tokens that refill at a steady rate up to a ceiling, counted in thousandths.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    milli: u64,
    burst: u32,
    per_second: u32,
    refilled: Instant,
}

impl Bucket {
    fn new(burst: u32, per_second: u32, now: Instant) -> Bucket {
        Bucket {
            milli: u64::from(burst) * 1000,
            burst,
            per_second,
            refilled: now,
        }
    }

    /// Takes one token; false when there is none.
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled);
        let earned = elapsed.as_millis() as u64 * u64::from(self.per_second);
        if earned > 0 {
            self.milli = (self.milli + earned).min(u64::from(self.burst) * 1000);
            self.refilled = now;
        }
        if self.milli >= 1000 {
            self.milli -= 1000;
            true
        } else {
            false
        }
    }
}

/// Watches one connection's incoming bytes.
#[derive(Debug)]
pub struct FrameGuard {
    scan: Scan,
    resets: Bucket,
    control: Bucket,
}

impl FrameGuard {
    /// For a connection whose first bytes are the preface (`preface_seen`: bytes of it
    /// already consumed elsewhere).
    pub fn new(now: Instant, preface_seen: usize) -> FrameGuard {
        FrameGuard {
            scan: Scan::Preface(PREFACE.len().saturating_sub(preface_seen)),
            resets: Bucket::new(RESET_BURST, RESETS_PER_SECOND, now),
            control: Bucket::new(CONTROL_BURST, CONTROL_PER_SECOND, now),
        }
    }

    /// Watches the next `bytes` the client sent, received at `now`.
    pub fn scan(&mut self, mut bytes: &[u8], now: Instant) -> Result<(), Flood> {
        while !bytes.is_empty() {
            match &mut self.scan {
                Scan::Preface(left) => {
                    let n = (*left).min(bytes.len());
                    *left -= n;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        self.scan = Scan::Header {
                            buf: [0; HEADER_LEN],
                            have: 0,
                        };
                    }
                }
                Scan::Header { buf, have } => {
                    let n = (HEADER_LEN - *have).min(bytes.len());
                    buf[*have..*have + n].copy_from_slice(&bytes[..n]);
                    *have += n;
                    bytes = &bytes[n..];
                    if *have == HEADER_LEN {
                        let header = *buf;
                        self.frame(&header, now)?;
                    }
                }
                Scan::Payload(left) => {
                    let n = (*left as usize).min(bytes.len());
                    *left -= n as u32;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        self.scan = Scan::Header {
                            buf: [0; HEADER_LEN],
                            have: 0,
                        };
                    }
                }
            }
        }
        Ok(())
    }

    /// Counts one frame from its header, and moves on to its payload.
    fn frame(&mut self, header: &[u8; HEADER_LEN], now: Instant) -> Result<(), Flood> {
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]);
        let kind = header[3];
        let flags = header[4];
        self.scan = if len == 0 {
            Scan::Header {
                buf: [0; HEADER_LEN],
                have: 0,
            }
        } else {
            Scan::Payload(len)
        };
        match kind {
            RST_STREAM if !self.resets.take(now) => Err(Flood::Resets),
            PING | SETTINGS if flags & ACK == 0 && !self.control.take(now) => Err(Flood::Control),
            PRIORITY if !self.control.take(now) => Err(Flood::Control),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = len.to_be_bytes()[1..].to_vec();
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn stream_of(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut out = PREFACE.to_vec();
        for f in frames {
            out.extend_from_slice(f);
        }
        out
    }

    #[test]
    fn a_burst_of_resets_is_allowed_a_flood_is_not() {
        let now = Instant::now();
        let mut guard = FrameGuard::new(now, 0);
        let resets: Vec<_> = (0..RESET_BURST)
            .map(|i| frame(RST_STREAM, 0, 2 * i + 1, &[0, 0, 0, 8]))
            .collect();
        assert_eq!(guard.scan(&stream_of(&resets), now), Ok(()));
        let one_more = frame(RST_STREAM, 0, 9999, &[0, 0, 0, 8]);
        assert_eq!(guard.scan(&one_more, now), Err(Flood::Resets));
    }

    #[test]
    fn tokens_come_back_with_time() {
        let now = Instant::now();
        let mut guard = FrameGuard::new(now, 0);
        let pings: Vec<_> = (0..CONTROL_BURST)
            .map(|_| frame(PING, 0, 0, &[0; 8]))
            .collect();
        assert_eq!(guard.scan(&stream_of(&pings), now), Ok(()));
        let later = now + Duration::from_secs(1);
        for _ in 0..CONTROL_PER_SECOND {
            assert_eq!(guard.scan(&frame(PING, 0, 0, &[0; 8]), later), Ok(()));
        }
        assert_eq!(
            guard.scan(&frame(SETTINGS, 0, 0, &[]), later),
            Err(Flood::Control)
        );
    }

    #[test]
    fn acknowledgements_and_requests_are_free() {
        let now = Instant::now();
        let mut guard = FrameGuard::new(now, 0);
        let mut frames = Vec::new();
        for i in 0..10_000u32 {
            frames.push(frame(PING, ACK, 0, &[0; 8]));
            frames.push(frame(SETTINGS, ACK, 0, &[]));
            frames.push(frame(0x1, 0x5, 2 * i + 1, &[0x82, 0x84]));
            frames.push(frame(0x0, 0x1, 2 * i + 1, b"body"));
        }
        assert_eq!(guard.scan(&stream_of(&frames), now), Ok(()));
    }

    #[test]
    fn payloads_are_skipped_whatever_they_hold() {
        // A DATA payload that looks like RST_STREAM headers counts for nothing.
        let now = Instant::now();
        let mut guard = FrameGuard::new(now, 0);
        let fake: Vec<u8> = (0..1000)
            .flat_map(|_| frame(RST_STREAM, 0, 1, &[0, 0, 0, 8]))
            .collect();
        let data = frame(0x0, 0, 1, &fake);
        assert_eq!(guard.scan(&stream_of(&[data]), now), Ok(()));
    }

    proptest! {
        /// However the bytes are cut, the verdict is the one for the whole stream.
        #[test]
        fn cuts_do_not_change_the_verdict(
            kinds in proptest::collection::vec(prop_oneof![Just(0u8), Just(1), Just(2), Just(3), Just(4), Just(6), Just(8)], 0..600),
            lens in proptest::collection::vec(0usize..40, 600),
            cuts in proptest::collection::vec(any::<usize>(), 0..20),
        ) {
            let now = Instant::now();
            let frames: Vec<_> = kinds.iter().zip(&lens).map(|(&k, &l)| frame(k, 0, 1, &vec![7; l])).collect();
            let bytes = stream_of(&frames);
            let whole = FrameGuard::new(now, 0).scan(&bytes, now);
            let mut guard = FrameGuard::new(now, 0);
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            points.push(bytes.len());
            points.sort_unstable();
            let mut fed = 0;
            let mut cut = Ok(());
            for p in points {
                cut = guard.scan(&bytes[fed..p], now);
                fed = p;
                if cut.is_err() { break; }
            }
            prop_assert_eq!(whole, cut);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000), seen in 0usize..30) {
            let now = Instant::now();
            let _ = FrameGuard::new(now, seen).scan(&bytes, now);
        }
    }
}

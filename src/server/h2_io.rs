//! The byte stream the `h2` crate reads and writes for one HTTP/2 connection: the
//! connection's `Conn` (cleartext or TLS) as tokio's `AsyncRead` and `AsyncWrite`. The
//! bytes read before HTTP/2 was chosen come first; every byte read is shown to the
//! `FrameGuard`, and reads and writes count as activity for the idle timeout. Once the
//! guard finds a flood, reading stops and the connection task is told (`IoWatch`); it
//! closes the connection. Only the connection task polls it.

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;

use super::socket::{Conn, ReadBuf};
use crate::http::h2_guard::{Flood, FrameGuard};

/// Whether `h2`'s next write goes out now or after one turn of the runtime.
#[derive(Clone, Copy, PartialEq, Eq)]
enum WriteTurn {
    /// The first write since the connection task last read: the task yields once, so
    /// that the streams woken meanwhile (their responses done by the workers, and
    /// already in the I/O thread's queue) put their frames in the same write. Without
    /// it, each response is one `sendmsg`.
    Yield,
    /// Yielded already: the bytes go out.
    Send,
    /// Bytes went out since the yield. The connection's next read starts the next
    /// batch (an open connection reads on every poll; one closing only flushes, and
    /// its writes go straight out). (Re-armed by the read, not by `poll_flush`: `h2`
    /// flushes after every DATA frame of 256 bytes or more, and a yield per frame
    /// would only cost polls. Not re-armed without a write in between, or each poll
    /// would yield again and never write.)
    Sent,
}

/// What the connection task learns from the stream while `h2` owns it.
#[derive(Default)]
pub struct IoWatch {
    /// Reads and writes so far.
    activity: AtomicU64,
    flood: OnceLock<Flood>,
    /// Woken when a flood is found.
    pub flooded: Notify,
}

impl IoWatch {
    pub fn activity(&self) -> u64 {
        self.activity.load(Ordering::Relaxed)
    }

    pub fn flood(&self) -> Option<Flood> {
        self.flood.get().copied()
    }
}

pub struct H2Io {
    conn: Arc<Conn>,
    /// Bytes read from the socket before HTTP/2 was chosen (the preface, perhaps more).
    early: BytesMut,
    guard: FrameGuard,
    watch: Arc<IoWatch>,
    turn: WriteTurn,
}

impl H2Io {
    pub fn new(conn: Arc<Conn>, early: BytesMut, watch: Arc<IoWatch>) -> H2Io {
        H2Io {
            conn,
            early,
            guard: FrameGuard::new(Instant::now(), 0),
            watch,
            turn: WriteTurn::Yield,
        }
    }
}

/// tokio's read buffer as the `ReadBuf` that `Conn::poll_read` fills.
struct Filling<'a, 'b>(&'a mut tokio::io::ReadBuf<'b>);

impl ReadBuf for Filling<'_, '_> {
    fn reserve_for(&mut self, _n: usize) {
        // Fixed capacity: the caller asks for at most `remaining()`.
    }

    fn spare(&mut self) -> &mut [MaybeUninit<u8>] {
        // SAFETY: `Conn::poll_read` only writes initialised bytes into the spare room
        // (`recv`, or plaintext copied out of the TLS session) and never reads it, so
        // nothing initialised is made uninitialised.
        unsafe { self.0.unfilled_mut() }
    }

    unsafe fn filled(&mut self, n: usize) {
        // SAFETY: the caller guarantees that the first `n` spare bytes were written.
        unsafe { self.0.assume_init(n) };
        self.0.advance(n);
    }
}

impl AsyncRead for H2Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.turn == WriteTurn::Sent {
            this.turn = WriteTurn::Yield;
        }
        if this.watch.flood().is_some() {
            // The connection task is closing the connection; nothing more is read.
            return Poll::Pending;
        }
        let room = buf.remaining();
        if room == 0 {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        if this.early.is_empty() {
            std::task::ready!(this.conn.poll_read(cx, &mut Filling(buf), room))?;
        } else {
            let n = this.early.len().min(room);
            buf.put_slice(&this.early[..n]);
            this.early.advance(n);
        }
        this.watch.activity.fetch_add(1, Ordering::Relaxed);
        if let Err(flood) = this.guard.scan(&buf.filled()[before..], Instant::now()) {
            let _ = this.watch.flood.set(flood);
            this.watch.flooded.notify_one();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.turn == WriteTurn::Yield {
            // Woken at once: tokio queues a task that wakes itself behind the tasks in
            // its local queue (never in the slot for the next task), and `h2` keeps its
            // frames until the next call. Streams woken from other threads and not yet
            // taken into that queue miss this batch: the yield is best effort.
            this.turn = WriteTurn::Send;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let written = std::task::ready!(this.conn.poll_send(cx, bufs))?;
        this.turn = WriteTurn::Sent;
        this.watch.activity.fetch_add(1, Ordering::Relaxed);
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.conn.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.conn.poll_close(cx)
    }
}

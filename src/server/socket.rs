//! One accepted client socket, registered with the tokio reactor, shareable between the
//! connection task (which reads it and finishes slow writes) and the thread that produced
//! a response (which may write to it directly, without blocking, when nobody else is).

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::task::{Context, Poll};

use bytes::{BufMut, BytesMut};
use socket2::Socket;
use tokio::io::unix::AsyncFd;

use crate::observe::metrics::{self, Counter};

/// A connected, non-blocking stream socket (TCP or Unix).
pub struct Conn {
    io: AsyncFd<Socket>,
    /// Whether its bytes count in the metrics (a client's do; a scraper's do not).
    counted: bool,
}

/// Registers a socket with the current tokio reactor.
pub fn register(socket: Socket) -> io::Result<AsyncFd<Socket>> {
    // SAFETY: a `Socket` owns its descriptor and `as_raw_fd` always returns that same
    // descriptor; it stays open until the `AsyncFd` (which owns the `Socket`) drops.
    Ok(unsafe { AsyncFd::register(socket) }?)
}

/// A growable buffer a socket can read into: `BytesMut` or `Vec<u8>`.
pub trait ReadBuf {
    /// Makes room for at least `n` more bytes.
    fn reserve_for(&mut self, n: usize);
    /// The uninitialised room after the data.
    fn spare(&mut self) -> &mut [MaybeUninit<u8>];
    /// Marks `n` bytes of `spare` as data.
    ///
    /// # Safety
    /// The first `n` bytes of `spare()` must have been initialised.
    unsafe fn filled(&mut self, n: usize);

    /// The read has to wait for the client: a buffer that holds nothing may give its
    /// memory back meanwhile.
    fn waiting(&mut self) {}
}

impl ReadBuf for BytesMut {
    fn reserve_for(&mut self, n: usize) {
        self.reserve(n);
    }

    fn spare(&mut self) -> &mut [MaybeUninit<u8>] {
        self.spare_capacity_mut()
    }

    unsafe fn filled(&mut self, n: usize) {
        // SAFETY: the caller initialised these bytes.
        unsafe { self.advance_mut(n) }
    }

    fn waiting(&mut self) {
        // A large empty buffer (grown for a request body) is freed while the client
        // is silent, so stalled uploads hold none; small ones are kept for the next
        // request head.
        if self.is_empty() && self.capacity() > KEEP_WHILE_WAITING {
            *self = BytesMut::new();
        }
    }
}

/// Read buffers up to this size are kept while a connection waits for its client.
const KEEP_WHILE_WAITING: usize = 16 * 1024;

impl ReadBuf for Vec<u8> {
    fn reserve_for(&mut self, n: usize) {
        self.reserve(n);
    }

    fn spare(&mut self) -> &mut [MaybeUninit<u8>] {
        self.spare_capacity_mut()
    }

    unsafe fn filled(&mut self, n: usize) {
        // SAFETY: the caller initialised these bytes, which lie within the capacity.
        unsafe { self.set_len(self.len() + n) }
    }
}

/// Writes never raise SIGPIPE; a vanished peer is an EPIPE error instead.
const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL;

/// What follows the bytes of a `Conn::send` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing known: push them out.
    Nothing,
    /// A `sendfile` of the same response.
    File,
}

impl Conn {
    /// Registers `socket` (already non-blocking) with the current tokio reactor.
    pub fn new(socket: Socket) -> io::Result<Conn> {
        Ok(Conn {
            io: register(socket)?,
            counted: true,
        })
    }

    /// A connection whose bytes the metrics leave out (the metrics listener's own).
    pub fn uncounted(socket: Socket) -> io::Result<Conn> {
        Ok(Conn {
            io: register(socket)?,
            counted: false,
        })
    }

    #[inline]
    fn count(&self, counter: Counter, n: usize) {
        if self.counted && n > 0 {
            metrics::count(counter, n as u64);
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.io.get_ref().as_raw_fd()
    }

    /// Reads at most `max` bytes into `buf`. `Ok(0)` means the peer finished sending.
    pub async fn read(&self, buf: &mut impl ReadBuf, max: usize) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read(cx, buf, max)).await
    }

    /// `read` as a poll function. It waits through the socket's single reader slot
    /// rather than tokio's waiter list, which costs two locks per wait; only the
    /// connection task reads, so one slot is enough.
    pub fn poll_read(
        &self,
        cx: &mut Context<'_>,
        buf: &mut impl ReadBuf,
        max: usize,
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = match self.io.poll_read_ready(cx) {
                Poll::Ready(guard) => guard?,
                Poll::Pending => {
                    buf.waiting();
                    return Poll::Pending;
                }
            };
            // Room is made only once there is something to read: a connection waiting
            // for a slow client holds no more buffer than it already had.
            buf.reserve_for(max);
            let spare = &mut buf.spare()[..max];
            let want = spare.len();
            match guard.try_io(|io| io.get_ref().recv(spare)) {
                Ok(Ok(n)) => {
                    // SAFETY: recv initialised the first `n` bytes of the spare capacity.
                    unsafe { buf.filled(n) };
                    self.count(Counter::BytesReceived, n);
                    if n > 0 && n < want {
                        // A short read drained the socket: wait for the next edge instead of
                        // paying for a read that would only say EAGAIN.
                        guard.clear_ready();
                    }
                    return Poll::Ready(Ok(n));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }

    /// One non-blocking vectored send from any thread. `WouldBlock` when the socket
    /// buffer is full.
    pub fn try_send(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        loop {
            match self.io.get_ref().send_vectored_with_flags(bufs, SEND_FLAGS) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(n) => {
                    self.count(Counter::BytesSent, n);
                    return Ok(n);
                }
                other => return other,
            }
        }
    }

    /// Sends part of `bufs`, waiting for the socket to become writable if needed.
    /// Bytes that a file's `sendfile` follows at once are sent with `MSG_MORE`, so the
    /// kernel puts them in the same segment as the file's first bytes.
    pub async fn send(&self, bufs: &[IoSlice<'_>], next: Next) -> io::Result<usize> {
        let flags = match next {
            Next::Nothing => SEND_FLAGS,
            Next::File => SEND_FLAGS | libc::MSG_MORE,
        };
        loop {
            let mut guard = self.io.writable().await?;
            match guard.try_io(|io| loop {
                match io.get_ref().send_vectored_with_flags(bufs, flags) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => return other,
                }
            }) {
                Ok(result) => {
                    if let Ok(n) = result {
                        self.count(Counter::BytesSent, n);
                    }
                    return result;
                }
                Err(_would_block) => continue,
            }
        }
    }

    /// Sends all of `data`.
    pub async fn send_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = self.send(&[IoSlice::new(data)], Next::Nothing).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            data = &data[n..];
        }
        Ok(())
    }

    /// `sendfile(2)` of up to `len` bytes from `file` at `offset`, waiting for the
    /// socket to become writable if needed. Returns bytes sent (0 means end of file).
    pub async fn sendfile(&self, file: RawFd, offset: u64, len: usize) -> io::Result<usize> {
        loop {
            let mut guard = self.io.writable().await?;
            let result = guard.try_io(|io| loop {
                let mut off = libc::off_t::try_from(offset)
                    .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
                // SAFETY: both descriptors are open for the duration of the call (the socket
                // is owned by `io`, the file by the caller), and `off` is a valid pointer.
                let n = unsafe { libc::sendfile(io.as_raw_fd(), file, &mut off, len) };
                if n >= 0 {
                    return Ok(n as usize);
                }
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            });
            match result {
                Ok(r) => {
                    if let Ok(n) = r {
                        self.count(Counter::BytesSent, n);
                        self.count(Counter::SendfileBytes, n);
                    }
                    return r;
                }
                Err(_would_block) => continue,
            }
        }
    }

    pub fn shutdown_write(&self) {
        let _ = self.io.get_ref().shutdown(Shutdown::Write);
    }

    /// Ends the connection in both directions now, even if another holder of this
    /// `Conn` keeps the descriptor open a little longer.
    pub fn shutdown_both(&self) {
        let _ = self.io.get_ref().shutdown(Shutdown::Both);
    }

    /// Reads and throws away whatever the peer still sends, so that closing does not
    /// turn into a reset that destroys the response still in flight to the client.
    pub async fn discard_input(&self, budget: usize) {
        // On the heap: an array here would sit in every connection's future.
        let mut scratch = vec![MaybeUninit::<u8>::uninit(); 16384];
        let mut left = budget;
        while left > 0 {
            let Ok(mut guard) = self.io.readable().await else {
                return;
            };
            match guard.try_io(|io| io.get_ref().recv(&mut scratch)) {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(n)) => left = left.saturating_sub(n),
                Err(_would_block) => continue,
            }
        }
    }
}

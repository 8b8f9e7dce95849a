//! One accepted client socket, registered with the tokio reactor, shareable between the
//! connection task (which reads it and finishes slow writes) and the thread that produced
//! a response (which may write to it directly, without blocking, when nobody else is).
//! On a TLS listener the socket carries a rustls session, and everything above sees
//! plaintext: reads decrypt, writes encrypt (always on the connection task: a producer
//! never writes directly), and `sendfile` becomes reads of the file and writes.

use std::io::{self, IoSlice, Read, Write};
use std::mem::MaybeUninit;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use rustls::ServerConnection;

use bytes::{BufMut, BytesMut};
use socket2::Socket;
use tokio::io::unix::AsyncFd;

use super::tls::TlsInfo;
use crate::observe::metrics::{self, Counter};

/// A connected, non-blocking stream socket (TCP or Unix).
pub struct Conn {
    io: AsyncFd<Socket>,
    /// Whether its bytes count in the metrics (a client's do; a scraper's do not).
    counted: bool,
    transport: Transport,
}

/// What the bytes on the socket are.
enum Transport {
    /// The HTTP bytes themselves.
    Plain,
    /// TLS records of this session. The lock is held only for a step of rustls (read
    /// records in, take plaintext out, encrypt, write records out), never across a wait.
    /// Boxed: a cleartext connection does not carry a session's size.
    Tls(Box<Mutex<ServerConnection>>),
}

/// Plaintext taken into the TLS session for one `send`: about four TLS records.
const TLS_SEND_CHUNK: usize = 64 * 1024;

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
            transport: Transport::Plain,
        })
    }

    /// A connection of a TLS listener, with the session that is to run its handshake.
    pub fn tls(socket: Socket, session: ServerConnection) -> io::Result<Conn> {
        Ok(Conn {
            io: register(socket)?,
            counted: true,
            transport: Transport::Tls(Box::new(Mutex::new(session))),
        })
    }

    /// A connection whose bytes the metrics leave out (the metrics listener's own).
    pub fn uncounted(socket: Socket) -> io::Result<Conn> {
        Ok(Conn {
            io: register(socket)?,
            counted: false,
            transport: Transport::Plain,
        })
    }

    /// Whether this connection speaks TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self.transport, Transport::Tls(_))
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
        if let Transport::Tls(session) = &self.transport {
            return self.poll_read_tls(cx, session, buf, max);
        }
        self.poll_read_socket(cx, buf, max)
    }

    /// Reads the socket's own bytes, before any TLS: a PROXY protocol header, which a
    /// load balancer sends in cleartext ahead of the handshake.
    pub async fn read_cleartext(&self, buf: &mut impl ReadBuf, max: usize) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read_socket(cx, buf, max)).await
    }

    fn poll_read_socket(
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
        if self.is_tls() {
            // Records the session could not write at once would wait for nobody: the
            // connection task writes a TLS connection's bytes, and waits when it must.
            return Err(io::ErrorKind::WouldBlock.into());
        }
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
        if let Transport::Tls(session) = &self.transport {
            return self.send_tls(session, bufs).await;
        }
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
        if let Transport::Tls(session) = &self.transport {
            return self.send_file_tls(session, file, offset, len).await;
        }
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

    /// Ends the sending side now: close_notify first under TLS (as far as the socket
    /// takes it at once; `poll_close` waits for room), then FIN.
    pub fn shutdown_write(&self) {
        if let Transport::Tls(session) = &self.transport {
            let mut session = lock(session);
            session.send_close_notify();
            let _ = self.write_records_now(&mut session);
        }
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

/// The poll forms of writing, for a protocol library that drives the socket itself
/// (the `h2` crate, through `server/h2_io.rs`): the connection task is their only caller.
impl Conn {
    /// Writes part of `bufs` (plaintext: under TLS, encrypted into the session once its
    /// earlier records are out, so at most `TLS_SEND_CHUNK` wait in it).
    pub fn poll_send(&self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        if let Transport::Tls(session) = &self.transport {
            std::task::ready!(self.poll_write_records(cx, session))?;
            let mut s = lock(session);
            let taken = encrypt(&mut s, bufs)?;
            let _ = self.write_records_now(&mut s);
            return Poll::Ready(Ok(taken));
        }
        loop {
            let mut guard = match self.io.poll_write_ready(cx) {
                Poll::Ready(guard) => guard?,
                Poll::Pending => return Poll::Pending,
            };
            match guard.try_io(|io| loop {
                match io.get_ref().send_vectored_with_flags(bufs, SEND_FLAGS) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => return other,
                }
            }) {
                Ok(result) => {
                    if let Ok(n) = result {
                        self.count(Counter::BytesSent, n);
                    }
                    return Poll::Ready(result);
                }
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes out what the TLS session holds (nothing to do in cleartext).
    pub fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &self.transport {
            Transport::Tls(session) => self.poll_write_records(cx, session),
            Transport::Plain => Poll::Ready(Ok(())),
        }
    }

    /// Ends the sending side: close_notify under TLS (written out first), then FIN.
    pub fn poll_close(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Transport::Tls(session) = &self.transport {
            lock(session).send_close_notify();
            std::task::ready!(self.poll_write_records(cx, session))?;
        }
        let _ = self.io.get_ref().shutdown(Shutdown::Write);
        Poll::Ready(Ok(()))
    }

    /// Writes out every TLS record the session holds, waiting for the socket as needed.
    fn poll_write_records(
        &self,
        cx: &mut Context<'_>,
        session: &Mutex<ServerConnection>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !lock(session).wants_write() {
                return Poll::Ready(Ok(()));
            }
            let mut guard = match self.io.poll_write_ready(cx) {
                Poll::Ready(guard) => guard?,
                Poll::Pending => return Poll::Pending,
            };
            match guard.try_io(|io| lock(session).write_tls(&mut SocketIo(io.get_ref()))) {
                Ok(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(Ok(n)) => self.count(Counter::BytesSent, n),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => {}
            }
        }
    }
}

/// The TLS side of a connection: the handshake, and reads and writes through the session.
impl Conn {
    /// Runs the TLS handshake of a TLS connection (`Ok(None)` for a plain one). `early`
    /// holds bytes already read from the socket (after a PROXY header): the first TLS
    /// records. The caller bounds the time (`header_timeout`).
    pub async fn handshake(&self, early: &mut BytesMut) -> io::Result<Option<TlsInfo>> {
        let Transport::Tls(session) = &self.transport else {
            return Ok(None);
        };
        {
            let mut s = lock(session);
            let mut rest: &[u8] = early;
            while !rest.is_empty() {
                if s.read_tls(&mut rest)? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "TLS records pile up unread",
                    ));
                }
                s.process_new_packets().map_err(tls_error)?;
            }
        }
        early.clear();
        loop {
            self.write_records(session).await?;
            {
                let s = lock(session);
                if !s.is_handshaking() {
                    return Ok(Some(TlsInfo::of(&s)));
                }
            }
            let mut guard = self.io.readable().await?;
            match guard.try_io(|io| lock(session).read_tls(&mut SocketIo(io.get_ref()))) {
                Ok(Ok(0)) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(Ok(n)) => {
                    self.count(Counter::BytesReceived, n);
                    let mut s = lock(session);
                    if let Err(err) = s.process_new_packets() {
                        // The alert saying why, if the socket takes it.
                        let _ = self.write_records_now(&mut s);
                        return Err(tls_error(err));
                    }
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
    }

    /// `poll_read` of a TLS connection: plaintext the session holds, else records from
    /// the socket. What the session has to say meanwhile (tickets, alerts) is written
    /// if the socket takes it now; the next `send` writes what it did not.
    fn poll_read_tls(
        &self,
        cx: &mut Context<'_>,
        session: &Mutex<ServerConnection>,
        buf: &mut impl ReadBuf,
        max: usize,
    ) -> Poll<io::Result<usize>> {
        loop {
            {
                let mut s = lock(session);
                let _ = self.write_records_now(&mut s);
                let state = match s.process_new_packets() {
                    Ok(state) => state,
                    Err(err) => {
                        let _ = self.write_records_now(&mut s);
                        return Poll::Ready(Err(tls_error(err)));
                    }
                };
                let ready = state.plaintext_bytes_to_read().min(max);
                if ready > 0 {
                    buf.reserve_for(ready);
                    let spare = &mut buf.spare()[..ready];
                    spare.fill(MaybeUninit::new(0));
                    // SAFETY: every byte of `spare` was initialised just above, and
                    // `MaybeUninit<u8>` has the layout of `u8`.
                    let init = unsafe { &mut *(spare as *mut [MaybeUninit<u8>] as *mut [u8]) };
                    let n = s.reader().read(init)?;
                    // SAFETY: all of `spare`, so its first `n` bytes, is initialised.
                    unsafe { buf.filled(n) };
                    return Poll::Ready(Ok(n));
                }
                if state.peer_has_closed() {
                    return Poll::Ready(Ok(0));
                }
            }
            let mut guard = match self.io.poll_read_ready(cx) {
                Poll::Ready(guard) => guard?,
                Poll::Pending => {
                    buf.waiting();
                    return Poll::Pending;
                }
            };
            let read = guard.try_io(|io| {
                let mut socket = SocketIo(io.get_ref());
                let mut reader = ShortRead::new(&mut socket);
                let n = lock(session).read_tls(&mut reader)?;
                Ok((n, reader.drained))
            });
            match read {
                Ok(Ok((0, _))) => return Poll::Ready(Ok(0)),
                Ok(Ok((n, drained))) => {
                    self.count(Counter::BytesReceived, n);
                    if drained {
                        // As for cleartext: wait for the next edge rather than pay for a
                        // read that would only say EAGAIN (one per request otherwise).
                        guard.clear_ready();
                    }
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => {}
            }
        }
    }

    /// Encrypts up to `TLS_SEND_CHUNK` bytes of `bufs` and writes every record out
    /// (waiting for the socket as needed): the count returned has left the process.
    async fn send_tls(
        &self,
        session: &Mutex<ServerConnection>,
        bufs: &[IoSlice<'_>],
    ) -> io::Result<usize> {
        self.write_records(session).await?;
        let taken = encrypt(&mut lock(session), bufs)?;
        self.write_records(session).await?;
        Ok(taken)
    }

    /// `sendfile` under TLS: the kernel cannot encrypt for us, so the file is read
    /// (`pread`, at most `TLS_SEND_CHUNK` at a time) and its bytes sent. 0 at the end.
    async fn send_file_tls(
        &self,
        session: &Mutex<ServerConnection>,
        file: RawFd,
        offset: u64,
        len: usize,
    ) -> io::Result<usize> {
        let want = len.min(TLS_SEND_CHUNK);
        let mut chunk = vec![0u8; want];
        let at = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let n = loop {
            // SAFETY: `file` is open for the duration of the call (the caller owns it),
            // and `chunk` has `want` writable bytes.
            let n = unsafe { libc::pread(file, chunk.as_mut_ptr().cast(), want, at) };
            if n >= 0 {
                break n as usize;
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        };
        let mut sent = 0;
        while sent < n {
            let k = self
                .send_tls(session, &[IoSlice::new(&chunk[sent..n])])
                .await?;
            if k == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            sent += k;
        }
        Ok(n)
    }

    /// Writes out every TLS record the session holds, waiting for the socket as needed.
    async fn write_records(&self, session: &Mutex<ServerConnection>) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_write_records(cx, session)).await
    }

    /// Writes what records the socket takes now, without waiting.
    fn write_records_now(&self, session: &mut ServerConnection) -> io::Result<()> {
        while session.wants_write() {
            match session.write_tls(&mut SocketIo(self.io.get_ref())) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.count(Counter::BytesSent, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Encrypts up to `TLS_SEND_CHUNK` bytes of `bufs` into the session; how many it took.
fn encrypt(session: &mut ServerConnection, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    let mut taken = 0;
    for b in bufs {
        let want = b.len().min(TLS_SEND_CHUNK - taken);
        if want == 0 {
            continue;
        }
        let n = session.writer().write(&b[..want])?;
        taken += n;
        if n < want || taken == TLS_SEND_CHUNK {
            break;
        }
    }
    Ok(taken)
}

fn lock(session: &Mutex<ServerConnection>) -> MutexGuard<'_, ServerConnection> {
    // A panic while holding it leaves a session that is no worse than the bytes say:
    // rustls checks them; the connection fails with its next record if it is broken.
    session.lock().unwrap_or_else(PoisonError::into_inner)
}

fn tls_error(err: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
}

/// The socket as rustls reads and writes it: `recv`, and `send` without SIGPIPE.
struct SocketIo<'a>(&'a Socket);

/// A reader that notes whether its last read took less than it was offered: the
/// socket is drained then (rustls reads once per `read_tls`).
struct ShortRead<'a, R> {
    inner: &'a mut R,
    drained: bool,
}

impl<'a, R: Read> ShortRead<'a, R> {
    fn new(inner: &'a mut R) -> ShortRead<'a, R> {
        ShortRead {
            inner,
            drained: false,
        }
    }
}

impl<R: Read> Read for ShortRead<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.drained = n > 0 && n < buf.len();
        Ok(n)
    }
}

impl Read for SocketIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut socket = self.0;
        socket.read(buf)
    }
}

impl Write for SocketIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.send_with_flags(buf, SEND_FLAGS)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.send_vectored_with_flags(bufs, SEND_FLAGS)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_that_takes_less_than_offered_means_drained() {
        let mut source: &[u8] = b"abcd";
        let mut reader = ShortRead::new(&mut source);
        let mut buf = [0u8; 3];
        assert_eq!(reader.read(&mut buf).unwrap(), 3);
        assert!(!reader.drained, "a full read says nothing of what is left");
        let mut buf = [0u8; 16];
        assert_eq!(reader.read(&mut buf).unwrap(), 1);
        assert!(reader.drained);
        assert_eq!(reader.read(&mut buf).unwrap(), 0);
        assert!(
            !reader.drained,
            "the end of the stream is not a drained socket"
        );
    }
}

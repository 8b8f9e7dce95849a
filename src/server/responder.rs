//! The hand-off of one response from the thread that produces it to the connection task
//! that owns the socket.
//!
//! The producer (a worker thread, with the GIL released around each call that may touch
//! the socket) writes straight to the socket when nothing is queued and nobody else is
//! writing: a small response costs one `writev` and no thread switch. Whatever the
//! socket does not take is queued for the connection task, which finishes it
//! asynchronously, so a slow client never holds a worker. Queued output stays in memory
//! up to `overflow` bytes and then goes to a temporary file; above `high_watermark` the
//! producer is told to stop (it parks its iterator or waits, GIL released).
//!
//! When a response completes with nothing left to write, the connection task is woken
//! only if it is not already watching the socket for the next request: a keep-alive
//! exchange then costs no cross-thread wake-up at all.

use std::collections::VecDeque;
use std::fs::File;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

use super::budget::Budgets;
use super::socket::{Conn, Next};
use super::spool::SpillFile;
use super::tracking::{Observer, Tracked};
use crate::config::Config;
use crate::observe::access_format::{Outcome, Record};

/// Output buffering limits (`outbuf_overflow`, `outbuf_high_watermark`).
#[derive(Clone, Copy, Debug)]
pub struct OutputLimits {
    pub overflow: usize,
    pub high_watermark: usize,
}

impl OutputLimits {
    pub fn of(config: &Config) -> OutputLimits {
        OutputLimits {
            overflow: config.outbuf_overflow,
            high_watermark: config.outbuf_high_watermark,
        }
    }
}

/// The client went away (or the connection was cut); the response cannot be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientGone;

/// A piece of a response handed to `Responder::send`.
#[derive(Debug)]
pub enum Part<'a> {
    /// Bytes the caller owns for the duration of the call; copied if queued.
    Borrowed(&'a [u8]),
    /// A shared buffer; queued without copying.
    Shared(Bytes),
}

impl Part<'_> {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Part::Borrowed(b) => b,
            Part::Shared(b) => b,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }
}

/// A part of a file sent with `sendfile(2)` by the connection task.
#[derive(Debug)]
pub struct FileSegment {
    pub file: Arc<File>,
    pub offset: u64,
    pub len: u64,
}

/// One queued piece of output.
#[derive(Debug)]
pub enum Chunk {
    Bytes(Bytes),
    /// Small pieces copied together, still open for more at the end of the queue.
    Gathered(BytesMut),
    /// This many bytes at the front of the spill file.
    Spilled(u64),
    File(FileSegment),
}

/// What the connection task must do next.
#[derive(Debug)]
pub enum Step {
    Write(Vec<Chunk>),
    /// The response is complete and fully written.
    Done {
        keep_alive: bool,
    },
    /// The response cannot be delivered; close the connection.
    Failed,
}

/// Whether the producer has finished the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Production {
    InProgress,
    /// Everything is handed over; the connection stays open after it if `keep_alive`.
    Finished {
        keep_alive: bool,
    },
}

/// What the connection task learns from `Responder::completion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Still being produced or written.
    InProgress,
    /// Done, and this is the first time the connection task asks.
    JustNoticed,
    /// Done, and already noticed.
    SeenBefore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    Idle,
    Producer,
    Consumer,
}

type Callback = Box<dyn FnOnce() + Send>;
type FinishCallback = Box<dyn FnOnce(bool) + Send>;

struct Inner {
    queue: VecDeque<Chunk>,
    /// Bytes of `Chunk::Bytes` queued or being written by the consumer.
    mem_bytes: usize,
    spill: Option<SpillFile>,
    writer: Writer,
    production: Production,
    failed: bool,
    /// The connection task, when it is parked waiting on this response.
    waker: Option<Waker>,
    /// Producers blocked in `wait_for_room` (a notify with none is a wasted syscall
    /// per batch written).
    room_waiters: usize,
    /// The connection task is also watching the socket, so a clean completion need not
    /// wake it: the client's next request will.
    consumer_watching: bool,
    on_drain: Option<Callback>,
    on_finished: Option<FinishCallback>,
    /// The connection task has noticed (for its idle timeout) that the response is done.
    completion_seen: bool,
    /// The request as the metrics and the access log follow it, until it ends.
    tracked: Option<Tracked>,
    /// The server answered in the application's place (`answer_instead`): whatever the
    /// application still sends is refused.
    taken_over: bool,
}

impl Inner {
    fn pending(&self) -> u64 {
        self.mem_bytes as u64 + self.spilled()
    }

    fn spilled(&self) -> u64 {
        self.spill.as_ref().map_or(0, SpillFile::pending)
    }

    fn complete(&self) -> bool {
        matches!(self.production, Production::Finished { .. })
            && self.queue.is_empty()
            && self.writer == Writer::Idle
    }
}

/// Where a response's bytes go: the client socket (`Conn`), or a fake in unit tests
/// that takes partial writes, says EAGAIN or resets when told to.
pub trait Sink: Send + Sync + 'static {
    /// One non-blocking vectored write from any thread; `WouldBlock` when full.
    fn try_send(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;

    /// Writes part of `bufs`, waiting for room if needed (`next`: what follows them).
    fn send(
        &self,
        bufs: &[IoSlice<'_>],
        next: Next,
    ) -> impl Future<Output = io::Result<usize>> + Send;

    /// `sendfile(2)` of up to `len` bytes of `file` at `offset`; 0 at the end of the file.
    fn sendfile(
        &self,
        file: RawFd,
        offset: u64,
        len: usize,
    ) -> impl Future<Output = io::Result<usize>> + Send;

    /// Whether `sendfile` is the kernel's zero-copy `sendfile(2)` (not under TLS, where
    /// the file is read and encrypted).
    fn zero_copy(&self) -> bool;
}

impl Sink for Conn {
    fn try_send(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        Conn::try_send(self, bufs)
    }

    fn send(
        &self,
        bufs: &[IoSlice<'_>],
        next: Next,
    ) -> impl Future<Output = io::Result<usize>> + Send {
        Conn::send(self, bufs, next)
    }

    fn sendfile(
        &self,
        file: RawFd,
        offset: u64,
        len: usize,
    ) -> impl Future<Output = io::Result<usize>> + Send {
        Conn::sendfile(self, file, offset, len)
    }

    fn zero_copy(&self) -> bool {
        !self.is_tls()
    }
}

/// The shared state of one response.
pub struct Responder<S: Sink = Conn> {
    conn: Arc<S>,
    limits: OutputLimits,
    /// The server-wide memory and temporary-file budgets for queued output.
    budgets: Arc<Budgets>,
    inner: Mutex<Inner>,
    room: Condvar,
    /// Who hears of the end of the tracked request.
    observer: Option<Arc<Observer>>,
    /// Bytes written to the socket for this response (head included).
    sent: AtomicU64,
    /// Whether the producer may write to the socket itself.
    writes: Writes,
}

/// Who may write a response's bytes to the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writes {
    /// The producer, when nothing is queued (`Delivery::Direct`), or the connection task.
    Direct,
    /// Only the consumer: the bytes are not the socket's as they are (an HTTP/2
    /// stream's are translated into frames by its task).
    ConsumerOnly,
}

/// Gathering buffers start at this size and stop growing at `GATHER_MAX`.
const GATHER_START: usize = 16 * 1024;
const GATHER_MAX: usize = 64 * 1024;
/// A gathering buffer for the first piece queued is at least this big.
const GATHER_SMALL: usize = 512;

/// How `Responder::send` delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Write from the calling thread if nothing is queued.
    Direct,
    /// Leave the writing to the connection task.
    Queued,
}

/// At most this many queued bytes go in one batch with the file that follows them.
const FILE_JOINS_BYTES: usize = 16 * 1024;
/// Most pieces a consumer takes in one batch.
const BATCH_CHUNKS: usize = 64;
/// Most bytes a consumer takes in one batch (so progress is reported as it goes).
const BATCH_BYTES: usize = 1 << 20;
/// Bytes read back from the spill file at a time...
const SPILL_READ: usize = 256 * 1024;
/// ...or, when the server's memory budget for output is used up, this many (a
/// thousand stalled readers then hold 16 MiB of read-back bytes, not 256 MiB).
const SPILL_READ_TIGHT: usize = 16 * 1024;

impl<S: Sink> Responder<S> {
    pub fn new(conn: Arc<S>, limits: OutputLimits, budgets: Arc<Budgets>) -> Responder<S> {
        Responder {
            conn,
            limits,
            budgets,
            inner: Mutex::new(Inner {
                queue: VecDeque::new(),
                mem_bytes: 0,
                spill: None,
                writer: Writer::Idle,
                production: Production::InProgress,
                failed: false,
                waker: None,
                room_waiters: 0,
                consumer_watching: false,
                on_drain: None,
                on_finished: None,
                completion_seen: false,
                tracked: None,
                taken_over: false,
            }),
            room: Condvar::new(),
            observer: None,
            sent: AtomicU64::new(0),
            writes: Writes::Direct,
        }
    }

    /// Everything goes through the consumer (`next_step`), never straight to the
    /// socket: for a response the consumer translates (an HTTP/2 stream).
    pub fn consumer_only(mut self) -> Responder<S> {
        self.writes = Writes::ConsumerOnly;
        self
    }

    /// A consumer that writes by other means than `write_batch` counts what it sent.
    pub fn count_sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
    }

    /// Follows `tracked` to the response's end, and reports it to `observer`.
    pub fn tracked(mut self, observer: Arc<Observer>, tracked: Tracked) -> Responder<S> {
        self.inner
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .tracked = Some(tracked);
        self.observer = Some(observer);
        self
    }

    /// The observer, for what the application side adds to the record.
    pub fn observer(&self) -> Option<&Observer> {
        self.observer.as_deref()
    }

    /// The response head (`status`, `head_len` bytes) is going out.
    pub fn note_head(&self, status: u16, head_len: usize) {
        if self.observer.is_none() {
            return; // not tracked: no lock on the default path
        }
        let mut inner = self.lock();
        if inner.taken_over {
            return; // the server's answer is the one that counts
        }
        if let Some(t) = inner.tracked.as_mut() {
            t.note_head(status, head_len);
        }
    }

    /// Lets the application side fill in the access log's record (if there is one).
    pub fn with_record(&self, fill: impl FnOnce(&mut Record)) {
        if self.observer.is_none() {
            return;
        }
        let mut inner = self.lock();
        if inner.taken_over {
            return;
        }
        if let Some(record) = inner.tracked.as_mut().and_then(Tracked::details) {
            fill(record);
        }
    }

    /// Ends the tracking (once) with `outcome`; the caller reports it after unlocking.
    fn settle(&self, inner: &mut Inner, outcome: Outcome) -> Option<(Tracked, Outcome)> {
        inner.tracked.take().map(|t| (t, outcome))
    }

    fn report(&self, settled: Option<(Tracked, Outcome)>) {
        if let (Some((tracked, outcome)), Some(observer)) = (settled, &self.observer) {
            observer.finished(tracked, outcome, self.sent.load(Ordering::Relaxed));
        }
    }

    /// How a complete response leaves its connection.
    fn completed(inner: &Inner) -> Outcome {
        match inner.production {
            Production::Finished { keep_alive: true } => Outcome::KeptAlive,
            _ => Outcome::Closed,
        }
    }

    /// Answers with `page` (a complete response with `status` and a head of
    /// `head_len` bytes, closing the connection) instead of the application, if nothing
    /// of the application's response has been sent or queued yet. From then on the
    /// application's output is refused as if the client had gone. False if it was too
    /// late (the caller then cuts the connection with `fail`).
    pub fn answer_instead(&self, page: Bytes, status: u16, head_len: usize) -> bool {
        let mut inner = self.lock();
        let untouched = !inner.failed
            && !inner.taken_over
            && inner.production == Production::InProgress
            && inner.queue.is_empty()
            && inner.writer == Writer::Idle
            && self.sent.load(Ordering::Relaxed) == 0;
        if !untouched {
            return false;
        }
        inner.taken_over = true;
        if let Some(t) = inner.tracked.as_mut() {
            t.note_head(status, head_len);
        }
        let len = page.len();
        if self.take_memory(&mut inner, len) {
            inner.queue.push_back(Chunk::Bytes(page));
        } else if self.spill(&mut inner, &page).is_err() {
            drop(inner);
            self.fail();
            return true;
        }
        inner.production = Production::Finished { keep_alive: false };
        if let Some(w) = inner.waker.take() {
            w.wake();
        }
        true
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state stays consistent across every unlock point, so a panic elsewhere
        // while holding the lock leaves nothing half-updated that matters here.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ----- producer side -------------------------------------------------------------

    /// Sends `parts` in order. With `Delivery::Direct`, straight to the socket when
    /// nothing is queued (one non-blocking `writev`; call it without the GIL), queuing
    /// what the socket does not take. With `Delivery::Queued`, always queued for the
    /// connection task, which sends many pieces per `writev`: right for the pieces of
    /// a stream, wrong for a response that is complete in one go. Borrowed parts are
    /// copied (small ones gathered into one buffer) only when queued.
    pub fn send(&self, parts: &[Part<'_>], delivery: Delivery) -> Result<(), ClientGone> {
        let mut inner = self.lock();
        if inner.failed || inner.taken_over {
            return Err(ClientGone);
        }
        if parts.iter().all(|p| p.is_empty()) {
            return Ok(());
        }
        let mut skip = 0usize;
        if delivery == Delivery::Direct
            && self.writes == Writes::Direct
            && inner.queue.is_empty()
            && inner.writer == Writer::Idle
        {
            inner.writer = Writer::Producer;
            drop(inner);
            let mut slices: SmallVec<[IoSlice<'_>; 8]> = SmallVec::new();
            slices.extend(
                parts
                    .iter()
                    .filter(|p| !p.is_empty())
                    .map(|p| IoSlice::new(p.as_slice())),
            );
            let result = self.conn.try_send(&slices);
            inner = self.lock();
            inner.writer = Writer::Idle;
            match result {
                Ok(n) => {
                    self.sent.fetch_add(n as u64, Ordering::Relaxed);
                    skip = n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    self.fail_locked(inner);
                    return Err(ClientGone);
                }
            }
            if inner.failed {
                // It failed while this write was under way (the client reset): the
                // record, left for this moment, ends with these bytes counted.
                self.fail_locked(inner);
                return Err(ClientGone);
            }
        }
        for part in parts {
            let len = part.as_slice().len();
            if skip >= len {
                skip -= len;
                continue;
            }
            let queued = match part {
                Part::Borrowed(b) => self.gather(&mut inner, &b[skip..]),
                Part::Shared(b) => self.enqueue(&mut inner, b.slice(skip..)),
            };
            skip = 0;
            if queued.is_err() {
                self.fail_locked(inner);
                return Err(ClientGone);
            }
        }
        if !inner.queue.is_empty() {
            if let Some(w) = inner.waker.take() {
                w.wake();
            }
        }
        Ok(())
    }

    /// Queues a copy of `data`, appended to the gathering buffer at the end of the
    /// queue when there is one with room.
    fn gather(&self, inner: &mut Inner, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if !self.take_memory(inner, data.len()) {
            return self.spill(inner, data);
        }
        if let Some(Chunk::Gathered(buf)) = inner.queue.back_mut() {
            if buf.len() + data.len() <= GATHER_MAX {
                buf.extend_from_slice(data);
                return Ok(());
            }
        }
        if data.len() > GATHER_MAX / 2 {
            inner
                .queue
                .push_back(Chunk::Bytes(Bytes::copy_from_slice(data)));
            return Ok(());
        }
        // The first piece queued (most responses are one piece: a whole response under
        // TLS or HTTP/2) gets a buffer of its size; pieces that follow a queued one get
        // room for more of them.
        let start = if inner.queue.is_empty() {
            GATHER_SMALL
        } else {
            GATHER_START
        };
        let mut buf = BytesMut::with_capacity(GATHER_MAX.min(data.len().max(start)));
        buf.extend_from_slice(data);
        inner.queue.push_back(Chunk::Gathered(buf));
        Ok(())
    }

    fn enqueue(&self, inner: &mut Inner, data: Bytes) -> io::Result<()> {
        if !self.take_memory(inner, data.len()) {
            return self.spill(inner, &data);
        }
        inner.queue.push_back(Chunk::Bytes(data));
        Ok(())
    }

    /// Counts `n` more queued bytes as in memory, if this response stays under
    /// `overflow` with them and the server's memory budget has room.
    fn take_memory(&self, inner: &mut Inner, n: usize) -> bool {
        let fits = inner.mem_bytes + n <= self.limits.overflow
            && self.budgets.outbuf_memory.try_take(n as u64);
        if fits {
            inner.mem_bytes += n;
        }
        fits
    }

    /// Gives back memory counted by `take_memory` (or read back from the spill file).
    fn release_memory(&self, inner: &mut Inner, n: usize) {
        let n = n.min(inner.mem_bytes);
        inner.mem_bytes -= n;
        self.budgets.outbuf_memory.give(n as u64);
    }

    /// Appends `data` to the spill file, behind whatever is queued.
    fn spill(&self, inner: &mut Inner, data: &[u8]) -> io::Result<()> {
        let spill = match inner.spill.as_mut() {
            Some(s) => s,
            None => inner.spill.insert(SpillFile::new(&self.budgets)?),
        };
        spill.append(data)?;
        match inner.queue.back_mut() {
            Some(Chunk::Spilled(n)) => *n += data.len() as u64,
            _ => inner.queue.push_back(Chunk::Spilled(data.len() as u64)),
        }
        Ok(())
    }

    /// Queues a file segment for `sendfile(2)` by the connection task.
    pub fn send_file(&self, segment: FileSegment) -> Result<(), ClientGone> {
        let mut inner = self.lock();
        if inner.failed || inner.taken_over {
            return Err(ClientGone);
        }
        if segment.len > 0 {
            if self.writes == Writes::Direct && self.conn.zero_copy() {
                SENDFILE_RESPONSES.fetch_add(1, Ordering::Relaxed);
            }
            inner.queue.push_back(Chunk::File(segment));
            if let Some(w) = inner.waker.take() {
                w.wake();
            }
        }
        Ok(())
    }

    /// The response is complete; the connection stays open after it if `keep_alive`.
    pub fn finish(&self, keep_alive: bool) {
        let mut inner = self.lock();
        if matches!(inner.production, Production::Finished { .. }) {
            return;
        }
        inner.production = Production::Finished { keep_alive };
        if inner.failed {
            return;
        }
        if inner.complete() {
            let callback = inner.on_finished.take();
            let waker = if !keep_alive || !inner.consumer_watching {
                inner.waker.take()
            } else {
                None
            };
            let outcome = Self::completed(&inner);
            let settled = self.settle(&mut inner, outcome);
            drop(inner);
            if let Some(w) = waker {
                w.wake();
            }
            self.report(settled);
            if let Some(cb) = callback {
                cb(true);
            }
        } else if let Some(w) = inner.waker.take() {
            w.wake();
        }
    }

    /// The producer must stop: more than `high_watermark` bytes wait for the client,
    /// or some of them are in a temporary file while the server's budget for those is
    /// used up.
    pub fn over_watermark(&self) -> bool {
        self.must_pause(&self.lock(), self.limits.high_watermark as u64)
    }

    /// Whether a producer must wait, with `mark` as this response's own limit.
    fn must_pause(&self, inner: &Inner, mark: u64) -> bool {
        inner.pending() > mark || (inner.spilled() > 0 && self.budgets.outbuf_spill.exhausted())
    }

    /// Blocks until the output drains below the high watermark (and out of the spill
    /// file, while the spill budget is used up). Call without the GIL.
    pub fn wait_for_room(&self) -> Result<(), ClientGone> {
        let mut inner = self.lock();
        while !inner.failed && self.must_pause(&inner, self.limits.high_watermark as u64) {
            inner.room_waiters += 1;
            inner = self.room.wait(inner).unwrap_or_else(|e| e.into_inner());
            inner.room_waiters -= 1;
        }
        if inner.failed {
            Err(ClientGone)
        } else {
            Ok(())
        }
    }

    /// Runs `resume` once the output has drained to half the high watermark (and out
    /// of the spill file, while the spill budget is used up), or the client is gone
    /// (check `is_failed`), whichever comes first. Runs it at once if that is already
    /// the case.
    pub fn on_drain(&self, resume: Callback) {
        let mut inner = self.lock();
        if inner.failed || !self.must_pause(&inner, self.limits.high_watermark as u64 / 2) {
            drop(inner);
            resume();
        } else {
            inner.on_drain = Some(resume);
        }
    }

    /// Runs `done(delivered)` once, when the response is fully written or abandoned.
    pub fn on_finished(&self, done: FinishCallback) {
        let mut inner = self.lock();
        if inner.failed {
            drop(inner);
            done(false);
        } else if inner.complete() {
            drop(inner);
            done(true);
        } else {
            inner.on_finished = Some(done);
        }
    }

    pub fn is_failed(&self) -> bool {
        self.lock().failed
    }

    /// Whether the server answered in the application's place (`answer_instead`).
    pub fn answered_instead(&self) -> bool {
        self.lock().taken_over
    }

    // ----- consumer side (the connection task) -----------------------------------------

    /// Whether the connection task is also watching the socket while it waits.
    pub fn set_consumer_watching(&self, watching: bool) {
        self.lock().consumer_watching = watching;
    }

    /// Whether the response is done, and whether the connection task is hearing of it
    /// for the first time (a response completed without waking it counts as activity
    /// once, for its idle timeout).
    pub fn completion(&self) -> Completion {
        let mut inner = self.lock();
        if !inner.complete() {
            return Completion::InProgress;
        }
        if std::mem::replace(&mut inner.completion_seen, true) {
            Completion::SeenBefore
        } else {
            Completion::JustNoticed
        }
    }

    /// Waits for the next thing to do.
    pub async fn next_step(&self) -> Step {
        poll_fn(|cx| {
            let mut inner = self.lock();
            if inner.failed {
                return Poll::Ready(Step::Failed);
            }
            if inner.writer == Writer::Idle && !inner.queue.is_empty() {
                match self.take_batch(&mut inner) {
                    Ok(batch) => {
                        inner.writer = Writer::Consumer;
                        return Poll::Ready(Step::Write(batch));
                    }
                    Err(_) => {
                        self.fail_locked(inner);
                        return Poll::Ready(Step::Failed);
                    }
                }
            }
            if inner.complete() {
                return Poll::Ready(Step::Done {
                    keep_alive: matches!(
                        inner.production,
                        Production::Finished { keep_alive: true }
                    ),
                });
            }
            inner.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    fn take_batch(&self, inner: &mut Inner) -> io::Result<Vec<Chunk>> {
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        while batch.len() < BATCH_CHUNKS && bytes < BATCH_BYTES {
            let Some(chunk) = inner.queue.pop_front() else {
                break;
            };
            match chunk {
                Chunk::Bytes(b) => {
                    bytes += b.len();
                    batch.push(Chunk::Bytes(b));
                }
                Chunk::Gathered(b) => {
                    bytes += b.len();
                    batch.push(Chunk::Bytes(b.freeze()));
                }
                Chunk::Spilled(n) => {
                    let spill = inner
                        .spill
                        .as_mut()
                        .ok_or_else(|| io::Error::other("spill file missing"))?;
                    // Read-back bytes count as in memory until written: a full-size read
                    // only while the memory budget has room for it.
                    let mut want = usize::try_from(n).unwrap_or(usize::MAX).min(SPILL_READ);
                    if !self.budgets.outbuf_memory.try_take(want as u64) {
                        want = want.min(SPILL_READ_TIGHT);
                        self.budgets.outbuf_memory.take(want as u64);
                    }
                    let data = spill.read_front(want);
                    let got = data.as_ref().map_or(0, Bytes::len);
                    self.budgets.outbuf_memory.give((want - got) as u64);
                    let data = data?;
                    if (data.len() as u64) < n {
                        inner
                            .queue
                            .push_front(Chunk::Spilled(n - data.len() as u64));
                    }
                    inner.mem_bytes += data.len();
                    batch.push(Chunk::Bytes(data));
                    break;
                }
                // A file ends a batch. It joins the bytes before it when they are few
                // (a response head): they go out with `MSG_MORE` and the file's first
                // bytes in the same segment. After more, the file waits for the next
                // batch, so that their memory is given back first.
                file @ Chunk::File(_) => {
                    if bytes <= FILE_JOINS_BYTES {
                        batch.push(file);
                    } else {
                        inner.queue.push_front(file);
                    }
                    break;
                }
            }
        }
        Ok(batch)
    }

    /// Reports that a batch from `next_step` was written in full.
    pub fn batch_written(&self, batch_bytes: usize) {
        let mut inner = self.lock();
        inner.writer = Writer::Idle;
        self.release_memory(&mut inner, batch_bytes);
        let mark = self.limits.high_watermark as u64;
        self.wake_room(&inner);
        let resume = if self.must_pause(&inner, mark / 2) {
            None
        } else {
            inner.on_drain.take()
        };
        let (finished, settled) = if inner.complete() {
            let outcome = Self::completed(&inner);
            (inner.on_finished.take(), self.settle(&mut inner, outcome))
        } else {
            (None, None)
        };
        drop(inner);
        self.report(settled);
        if let Some(resume) = resume {
            resume();
        }
        if let Some(cb) = finished {
            cb(true);
        }
    }

    /// Part of a batch, `n` bytes, is written: their memory is given back and a
    /// producer waiting for room may go on (the rest is `batch_written`'s).
    fn bytes_written(&self, n: usize) {
        if n == 0 {
            return;
        }
        let mut inner = self.lock();
        self.release_memory(&mut inner, n);
        self.wake_room(&inner);
    }

    /// Wakes the producers waiting for room, if there are any and there is room.
    fn wake_room(&self, inner: &Inner) {
        if inner.room_waiters > 0 && !self.must_pause(inner, self.limits.high_watermark as u64) {
            self.room.notify_all();
        }
    }

    /// The response cannot be delivered (write error, connection closing): drop queued
    /// output, release a waiting producer, and run pending callbacks.
    pub fn fail(&self) {
        let inner = self.lock();
        self.fail_locked(inner);
    }

    fn fail_locked(&self, mut inner: MutexGuard<'_, Inner>) {
        if inner.failed {
            // A second call, from a producer whose write was under way at the first:
            // the record waited for it.
            let settled = match inner.writer {
                Writer::Producer => None,
                _ => self.settle(&mut inner, Outcome::Aborted),
            };
            drop(inner);
            self.report(settled);
            return;
        }
        inner.failed = true;
        inner.queue.clear();
        let queued = inner.mem_bytes;
        self.release_memory(&mut inner, queued);
        inner.spill = None;
        let waker = inner.waker.take();
        let resume = inner.on_drain.take();
        let finished = inner.on_finished.take();
        // A producer writing straight to the socket has bytes out that it has not
        // counted yet: the record waits for it to come back (`send`).
        let settled = match inner.writer {
            Writer::Producer => None,
            _ => self.settle(&mut inner, Outcome::Aborted),
        };
        drop(inner);
        self.report(settled);
        self.room.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
        if let Some(resume) = resume {
            resume();
        }
        if let Some(cb) = finished {
            cb(false);
        }
    }

    /// Writes one batch to the socket (connection task only). `stall` bounds each wait
    /// for the socket, not the batch: the deadline moves whenever bytes move, so a
    /// client that keeps reading, however slowly, is never cut, and one that stops
    /// reading for `stall` fails with `TimedOut`.
    pub async fn write_batch(&self, batch: Vec<Chunk>, stall: Duration) -> io::Result<()> {
        let mut bytes_total = 0usize;
        let mut bufs: Vec<Bytes> = Vec::with_capacity(batch.len());
        for chunk in batch {
            match chunk {
                Chunk::Bytes(b) => {
                    bytes_total += b.len();
                    bufs.push(b);
                }
                Chunk::File(segment) => {
                    self.write_bytes(&mut bufs, stall, Next::File).await?;
                    // The bytes before the file are out: their memory is free before
                    // the file's transfer, however long it takes.
                    self.bytes_written(std::mem::take(&mut bytes_total));
                    send_file_segment(&*self.conn, &segment, stall, &self.sent).await?;
                }
                Chunk::Spilled(_) | Chunk::Gathered(_) => {
                    return Err(io::Error::other("unexpected chunk in a batch"))
                }
            }
        }
        self.write_bytes(&mut bufs, stall, Next::Nothing).await?;
        self.batch_written(bytes_total);
        Ok(())
    }

    async fn write_bytes(
        &self,
        bufs: &mut Vec<Bytes>,
        stall: Duration,
        next: Next,
    ) -> io::Result<()> {
        let mut first = 0;
        while first < bufs.len() {
            let slices: Vec<IoSlice<'_>> = bufs[first..].iter().map(|b| IoSlice::new(b)).collect();
            let mut n = progress_within(stall, self.conn.send(&slices, next)).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.sent.fetch_add(n as u64, Ordering::Relaxed);
            while n > 0 {
                let len = bufs[first].len();
                if n >= len {
                    n -= len;
                    first += 1;
                } else {
                    bufs[first] = bufs[first].slice(n..);
                    n = 0;
                }
            }
        }
        bufs.clear();
        Ok(())
    }
}

/// Runs one socket operation that returns as soon as any bytes move, failing with
/// `TimedOut` if none have after `stall`. (The timer is armed only if the operation
/// has to wait: a socket with room costs one clock read.)
async fn progress_within<T>(
    stall: Duration,
    operation: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match tokio::time::timeout(stall, operation).await {
        Ok(result) => result,
        Err(_elapsed) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client read nothing for channel_timeout",
        )),
    }
}

impl<S: Sink> Drop for Responder<S> {
    fn drop(&mut self) {
        // A response dropped with output still queued (its connection gone without a
        // `fail`) gives its memory back; the spill file does so itself.
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        let queued = std::mem::take(&mut inner.mem_bytes);
        self.budgets.outbuf_memory.give(queued as u64);
        // A response that never completed nor failed (its connection task and its
        // producer both gone) still ends its record.
        let settled = inner.tracked.take().map(|t| (t, Outcome::Aborted));
        self.report(settled);
    }
}

/// Responses whose body went out with the kernel's `sendfile(2)`, and the bytes sent
/// that way (process-wide; exposed to Python as `tapster._tapster.stats()`). A file
/// read and sent under TLS or HTTP/2 counts in neither.
pub static SENDFILE_RESPONSES: AtomicU64 = AtomicU64::new(0);
pub static SENDFILE_BYTES: AtomicU64 = AtomicU64::new(0);

/// Sends a whole file segment; a file that ends early is an error (the connection must
/// be cut, since the promised length can no longer be honoured).
async fn send_file_segment(
    conn: &impl Sink,
    segment: &FileSegment,
    stall: Duration,
    counted: &AtomicU64,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    const MAX_SENDFILE: u64 = 1 << 30;
    let fd = segment.file.as_raw_fd();
    let mut sent = 0u64;
    while sent < segment.len {
        let want = (segment.len - sent).min(MAX_SENDFILE) as usize;
        let n = progress_within(stall, conn.sendfile(fd, segment.offset + sent, want)).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file ended before its announced length",
            ));
        }
        sent += n as u64;
        counted.fetch_add(n as u64, Ordering::Relaxed);
        if conn.zero_copy() {
            SENDFILE_BYTES.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The Responder over a fake socket: partial writes, EAGAIN, resets, stalls,
    //! parked producers and the budgets, without Python or a network.

    use super::*;
    use crate::test_support::block_on;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    /// What the fake socket does with writes.
    #[derive(Default)]
    struct Script {
        written: Vec<u8>,
        /// `try_send` takes at most this many bytes a call (0: always `WouldBlock`).
        direct: usize,
        /// `send` takes at most this many bytes a call.
        per_send: usize,
        /// `send` waits this long before taking anything (a slow reader).
        delay: Duration,
        /// `send` never completes (a client that reads nothing).
        stalled: bool,
        /// Every write fails like this (a reset).
        fail: Option<io::ErrorKind>,
        /// Runs inside `try_send`, after the bytes are taken (another thread failing
        /// the response meanwhile, say).
        during_direct: Option<Arc<dyn Fn() + Send + Sync>>,
    }

    struct FakeSink(Mutex<Script>);

    impl FakeSink {
        fn new(script: Script) -> Arc<FakeSink> {
            Arc::new(FakeSink(Mutex::new(script)))
        }

        fn written(&self) -> Vec<u8> {
            self.0.lock().unwrap().written.clone()
        }

        fn take(&self, bufs: &[IoSlice<'_>], limit: usize) -> usize {
            let mut script = self.0.lock().unwrap();
            let mut left = limit;
            for buf in bufs {
                let n = buf.len().min(left);
                script.written.extend_from_slice(&buf[..n]);
                left -= n;
                if left == 0 {
                    break;
                }
            }
            limit - left
        }
    }

    impl Sink for FakeSink {
        fn try_send(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let (fail, direct, during) = {
                let script = self.0.lock().unwrap();
                (script.fail, script.direct, script.during_direct.clone())
            };
            let result = match (fail, direct) {
                (Some(kind), _) => Err(kind.into()),
                (None, 0) => Err(io::ErrorKind::WouldBlock.into()),
                (None, limit) => Ok(self.take(bufs, limit)),
            };
            if let Some(during) = during {
                during();
            }
            result
        }

        fn send(
            &self,
            bufs: &[IoSlice<'_>],
            _next: Next,
        ) -> impl Future<Output = io::Result<usize>> + Send {
            let (fail, per_send, delay, stalled) = {
                let script = self.0.lock().unwrap();
                (script.fail, script.per_send, script.delay, script.stalled)
            };
            let taken = if fail.is_none() && !stalled {
                self.take(bufs, per_send)
            } else {
                0
            };
            async move {
                if stalled {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(delay).await;
                match fail {
                    Some(kind) => Err(kind.into()),
                    None => Ok(taken),
                }
            }
        }

        async fn sendfile(&self, _file: RawFd, _offset: u64, _len: usize) -> io::Result<usize> {
            Err(io::ErrorKind::Unsupported.into())
        }

        fn zero_copy(&self) -> bool {
            true
        }
    }

    const LIMITS: OutputLimits = OutputLimits {
        overflow: 1 << 20,
        high_watermark: 16 << 20,
    };

    fn responder(
        sink: &Arc<FakeSink>,
        limits: OutputLimits,
        budgets: &Arc<Budgets>,
    ) -> Responder<FakeSink> {
        Responder::new(sink.clone(), limits, budgets.clone())
    }

    /// A response with 3000 bytes queued (the socket takes nothing at once) over its
    /// high watermark of 1000, drained by `drain` in one write.
    fn over_the_watermark() -> (Arc<FakeSink>, Responder<FakeSink>) {
        let sink = FakeSink::new(Script {
            direct: 0,
            per_send: 1 << 20,
            ..Script::default()
        });
        let limits = OutputLimits {
            overflow: 1 << 20,
            high_watermark: 1000,
        };
        let r = responder(&sink, limits, &Budgets::unlimited());
        r.send(&[Part::Borrowed(&[1; 3000])], Delivery::Direct)
            .unwrap();
        assert!(r.over_watermark());
        (sink, r)
    }

    /// The connection task's side: writes batches until the response is done.
    async fn drain(responder: &Responder<FakeSink>, stall: Duration) -> io::Result<Step> {
        loop {
            match responder.next_step().await {
                Step::Write(batch) => responder.write_batch(batch, stall).await?,
                other => return Ok(other),
            }
        }
    }

    const STALL: Duration = Duration::from_secs(5);

    // ----- tracking: the end of a response, once, for the access log ----------------------

    /// Access-log lines, kept in memory.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl crate::observe::access_log::LineSink for Lines {
        fn write_lines(&mut self, lines: &[u8]) {
            self.0.lock().unwrap().extend_from_slice(lines);
        }
    }

    /// A responder followed by an observer whose access log writes `status bytes X`.
    fn tracked_responder(sink: &Arc<FakeSink>) -> (Responder<FakeSink>, Arc<Observer>, Lines) {
        use crate::observe::access_format::Format;
        use crate::observe::access_log::{AccessLog, Destination};
        use crate::server::shutdown::ShutdownSignal;
        let lines = Lines::default();
        let format = Format::parse("%(r)s %(s)s %(b)s %(X)s").unwrap();
        let log = AccessLog::start(
            format,
            Destination::Sink(Box::new(lines.clone())),
            Arc::new(|_| {}),
        )
        .unwrap();
        let observer = Arc::new(Observer::new(Some(log)));
        let head = crate::test_support::head(b"GET /t?q=1 HTTP/1.1\r\nHost: x\r\n\r\n");
        let info = crate::test_support::unix_conn_info(ShutdownSignal::new());
        let tracked = observer.begin(
            &head,
            &info,
            std::time::Instant::now(),
            crate::observe::Handler::Application,
        );
        let r = responder(sink, LIMITS, &Budgets::unlimited()).tracked(observer.clone(), tracked);
        (r, observer, lines)
    }

    fn logged(observer: &Observer, lines: &Lines) -> String {
        observer.close();
        String::from_utf8(lines.0.lock().unwrap().clone()).unwrap()
    }

    fn still_tracked(r: &Responder<FakeSink>) -> bool {
        r.lock().tracked.is_some()
    }

    #[test]
    fn a_response_written_directly_ends_its_record_once_with_its_body_bytes() {
        let sink = FakeSink::new(Script {
            direct: 1 << 20,
            ..Script::default()
        });
        let (r, observer, lines) = tracked_responder(&sink);
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
        r.note_head(200, head.len());
        r.send(
            &[Part::Borrowed(head), Part::Borrowed(b"hello")],
            Delivery::Direct,
        )
        .unwrap();
        r.finish(true);
        assert!(!still_tracked(&r));
        r.fail(); // later failures change nothing
        assert_eq!(logged(&observer, &lines), "GET /t?q=1 HTTP/1.1 200 5 +\n");
    }

    #[test]
    fn a_failure_during_a_direct_write_is_logged_with_that_writes_bytes() {
        // The connection task fails the response (a reset) while the producer's
        // `writev` is under way: the record must still count what that call sent (CI
        // once logged 0 bytes for a download of which the client had read 100,000).
        let sink = FakeSink::new(Script {
            direct: 1 << 20,
            ..Script::default()
        });
        let (r, observer, lines) = tracked_responder(&sink);
        let r = Arc::new(r);
        let failing = Arc::downgrade(&r);
        sink.0.lock().unwrap().during_direct = Some(Arc::new(move || {
            if let Some(r) = failing.upgrade() {
                r.fail();
            }
        }));
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n";
        r.note_head(200, head.len());
        let sent = r.send(
            &[Part::Borrowed(head), Part::Borrowed(&[b'x'; 3000])],
            Delivery::Direct,
        );
        assert_eq!(sent, Err(ClientGone));
        assert!(!still_tracked(&r));
        assert_eq!(
            logged(&observer, &lines),
            "GET /t?q=1 HTTP/1.1 200 3000 X\n"
        );
    }

    #[test]
    fn a_queued_response_is_logged_only_once_its_last_byte_is_written() {
        let sink = FakeSink::new(Script {
            direct: 0,
            per_send: 7,
            ..Script::default()
        });
        let (r, observer, lines) = tracked_responder(&sink);
        let head = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n";
        r.note_head(200, head.len());
        r.send(
            &[Part::Borrowed(head), Part::Borrowed(&[b'x'; 100])],
            Delivery::Direct,
        )
        .unwrap();
        r.finish(false);
        assert!(
            still_tracked(&r),
            "finished by the producer, not yet written"
        );
        block_on(drain(&r, STALL)).unwrap();
        assert!(!still_tracked(&r));
        assert_eq!(logged(&observer, &lines), "GET /t?q=1 HTTP/1.1 200 100 -\n");
    }

    #[test]
    fn a_response_cut_short_is_logged_as_aborted_with_the_bytes_that_went_out() {
        let sink = FakeSink::new(Script {
            direct: 50,
            ..Script::default()
        });
        let (r, observer, lines) = tracked_responder(&sink);
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n";
        r.note_head(200, head.len());
        r.send(
            &[Part::Borrowed(head), Part::Borrowed(&[b'x'; 1000])],
            Delivery::Direct,
        )
        .unwrap();
        r.fail();
        let body_sent = 50 - head.len();
        assert_eq!(
            logged(&observer, &lines),
            format!("GET /t?q=1 HTTP/1.1 200 {body_sent} X\n")
        );
    }

    #[test]
    fn a_response_dropped_unfinished_is_still_logged() {
        let sink = FakeSink::new(Script::default());
        let (r, observer, lines) = tracked_responder(&sink);
        drop(r);
        assert_eq!(logged(&observer, &lines), "GET /t?q=1 HTTP/1.1 - - X\n");
    }

    #[test]
    fn the_server_answers_instead_only_while_nothing_of_the_response_went_out() {
        let sink = FakeSink::new(Script {
            direct: 1 << 20,
            per_send: 1 << 20,
            ..Script::default()
        });
        let (r, observer, lines) = tracked_responder(&sink);
        let page = b"HTTP/1.1 504 Gateway Timeout\r\nContent-Length: 2\r\n\r\nno";
        assert!(r.answer_instead(Bytes::from_static(page), 504, page.len() - 2));
        assert!(r.answered_instead());
        // The application's late output is refused as if its client had gone...
        assert_eq!(
            r.send(
                &[Part::Borrowed(b"HTTP/1.1 200 OK\r\n\r\n")],
                Delivery::Direct
            ),
            Err(ClientGone)
        );
        r.finish(true);
        // ...and the page goes out in full, closing the connection.
        let end = block_on(drain(&r, STALL)).unwrap();
        assert!(matches!(end, Step::Done { keep_alive: false }), "{end:?}");
        assert_eq!(sink.written(), page);
        assert_eq!(logged(&observer, &lines), "GET /t?q=1 HTTP/1.1 504 2 -\n");

        let sink = FakeSink::new(Script {
            direct: 1 << 20,
            ..Script::default()
        });
        let (r, _observer, _lines) = tracked_responder(&sink);
        r.send(&[Part::Borrowed(b"HTTP/1.1 200 OK\r\n")], Delivery::Direct)
            .unwrap();
        assert!(!r.answer_instead(Bytes::from_static(page), 504, 10));
        assert!(!r.answered_instead());
    }

    #[test]
    fn a_partial_direct_write_leaves_the_rest_to_the_connection_task() {
        let sink = FakeSink::new(Script {
            direct: 5,
            per_send: 3,
            ..Script::default()
        });
        let budgets = Budgets::unlimited();
        let r = responder(&sink, LIMITS, &budgets);
        r.send(
            &[Part::Borrowed(b"hello "), Part::Borrowed(b"world")],
            Delivery::Direct,
        )
        .unwrap();
        assert_eq!(sink.written(), b"hello");
        r.finish(true);
        let end = block_on(drain(&r, STALL)).unwrap();
        assert!(matches!(end, Step::Done { keep_alive: true }), "{end:?}");
        assert_eq!(sink.written(), b"hello world");
    }

    #[test]
    fn eagain_queues_everything_in_order() {
        let sink = FakeSink::new(Script {
            direct: 0,
            per_send: 7,
            ..Script::default()
        });
        let budgets = Budgets::unlimited();
        let r = responder(&sink, LIMITS, &budgets);
        r.send(&[Part::Borrowed(b"head|")], Delivery::Direct)
            .unwrap();
        r.send(
            &[Part::Shared(Bytes::from_static(b"one|"))],
            Delivery::Queued,
        )
        .unwrap();
        r.send(&[Part::Borrowed(b"two")], Delivery::Queued).unwrap();
        assert!(sink.written().is_empty());
        r.finish(false);
        let end = block_on(drain(&r, STALL)).unwrap();
        assert!(matches!(end, Step::Done { keep_alive: false }), "{end:?}");
        assert_eq!(sink.written(), b"head|one|two");
        assert_eq!(budgets.outbuf_memory.used(), 0);
    }

    #[test]
    fn a_reset_fails_the_response_and_releases_a_parked_producer() {
        let sink = FakeSink::new(Script {
            direct: 0,
            per_send: 100,
            ..Script::default()
        });
        let budgets = Budgets::unlimited();
        let limits = OutputLimits {
            overflow: 1 << 20,
            high_watermark: 10,
        };
        let r = responder(&sink, limits, &budgets);
        r.send(&[Part::Borrowed(&[7; 64])], Delivery::Direct)
            .unwrap();
        assert!(r.over_watermark());
        let resumed = Arc::new(AtomicBool::new(false));
        let flag = resumed.clone();
        r.on_drain(Box::new(move || flag.store(true, Ordering::SeqCst)));
        assert!(
            !resumed.load(Ordering::SeqCst),
            "resumed before anything drained"
        );
        sink.0.lock().unwrap().fail = Some(io::ErrorKind::ConnectionReset);
        let err = block_on(drain(&r, STALL)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        r.fail();
        assert!(
            resumed.load(Ordering::SeqCst),
            "the parked producer was not released"
        );
        assert!(r.is_failed());
        assert_eq!(
            r.send(&[Part::Borrowed(b"more")], Delivery::Queued),
            Err(ClientGone)
        );
        assert_eq!(budgets.outbuf_memory.used(), 0);
    }

    #[test]
    fn a_producer_parked_over_the_watermark_resumes_once_half_of_it_drained() {
        let (sink, r) = over_the_watermark();
        let resumed = Arc::new(AtomicBool::new(false));
        let flag = resumed.clone();
        r.on_drain(Box::new(move || flag.store(true, Ordering::SeqCst)));
        r.finish(true);
        let end = block_on(drain(&r, STALL)).unwrap();
        assert!(matches!(end, Step::Done { .. }));
        assert!(resumed.load(Ordering::SeqCst));
        assert_eq!(sink.written().len(), 3000);
    }

    #[test]
    fn a_producer_blocked_waiting_for_room_is_released_by_the_drain() {
        let (_sink, r) = over_the_watermark();
        let r = Arc::new(r);
        let producer = {
            let r = r.clone();
            std::thread::spawn(move || r.wait_for_room())
        };
        // The producer is counted as waiting before the drain, or the drain finds no
        // one to wake and the test proves nothing.
        while r.lock().room_waiters == 0 {
            std::thread::yield_now();
        }
        r.finish(true);
        let end = block_on(drain(&r, STALL)).unwrap();
        assert!(matches!(end, Step::Done { .. }));
        assert_eq!(producer.join().unwrap(), Ok(()));
        assert_eq!(r.lock().room_waiters, 0);
    }

    #[test]
    fn spilled_output_goes_out_in_order_and_every_budget_comes_back_to_zero() {
        let sink = FakeSink::new(Script {
            direct: 0,
            per_send: 50,
            ..Script::default()
        });
        let budgets = Budgets::new(u64::MAX, 100, u64::MAX);
        let limits = OutputLimits {
            overflow: 200,
            high_watermark: 1 << 20,
        };
        let r = responder(&sink, limits, &budgets);
        let mut expected = Vec::new();
        for i in 0..20u8 {
            let piece = vec![i; 64];
            expected.extend_from_slice(&piece);
            r.send(&[Part::Shared(Bytes::from(piece))], Delivery::Queued)
                .unwrap();
        }
        assert!(budgets.outbuf_memory.used() <= 100);
        assert!(budgets.outbuf_spill.used() > 0, "nothing spilled");
        r.finish(true);
        block_on(drain(&r, STALL)).unwrap();
        assert_eq!(sink.written(), expected);
        assert_eq!(budgets.outbuf_memory.used(), 0);
        assert_eq!(budgets.outbuf_spill.used(), 0);
    }

    #[test]
    fn a_used_up_spill_budget_pauses_a_producer_whose_output_is_spilled() {
        let sink = FakeSink::new(Script::default());
        let budgets = Budgets::new(u64::MAX, u64::MAX, 100);
        let limits = OutputLimits {
            overflow: 10,
            high_watermark: 1 << 20,
        };
        let r = responder(&sink, limits, &budgets);
        r.send(&[Part::Borrowed(&[0; 8])], Delivery::Queued)
            .unwrap();
        assert!(!r.over_watermark(), "in memory, under every limit");
        r.send(&[Part::Borrowed(&[0; 200])], Delivery::Queued)
            .unwrap();
        assert!(budgets.outbuf_spill.exhausted());
        assert!(
            r.over_watermark(),
            "spilled past the server's budget, yet not paused"
        );
        drop(r);
        assert_eq!(budgets.outbuf_spill.used(), 0);
        assert_eq!(budgets.outbuf_memory.used(), 0);
    }

    #[test]
    fn a_client_that_reads_nothing_times_out() {
        let sink = FakeSink::new(Script {
            direct: 0,
            stalled: true,
            ..Script::default()
        });
        let budgets = Budgets::unlimited();
        let r = responder(&sink, LIMITS, &budgets);
        r.send(&[Part::Borrowed(b"never read")], Delivery::Direct)
            .unwrap();
        let err = block_on(drain(&r, Duration::from_millis(50))).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn a_slow_but_steady_client_is_not_cut() {
        // One byte every 20 ms for 30 bytes (600 ms), with a 100 ms stall limit: the
        // deadline moves with every byte, so the batch (one buffer) is never cut.
        let sink = FakeSink::new(Script {
            direct: 0,
            per_send: 1,
            delay: Duration::from_millis(20),
            ..Script::default()
        });
        let budgets = Budgets::unlimited();
        let r = responder(&sink, LIMITS, &budgets);
        r.send(&[Part::Borrowed(&[b'x'; 30])], Delivery::Direct)
            .unwrap();
        r.finish(true);
        let end = block_on(drain(&r, Duration::from_millis(100))).unwrap();
        assert!(matches!(end, Step::Done { .. }));
        assert_eq!(sink.written().len(), 30);
    }
}

//! The task that owns one client connection: reads and parses requests one at a time,
//! buffers each body completely (answering `Expect: 100-continue`), hands the request to
//! the dispatcher, then finishes writing its response while watching the socket for the
//! client's next request or disconnect. Responses go out strictly in request order.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use std::pin::Pin;

use tokio::time::{sleep_until, timeout_at, Sleep};

use super::conn_info::ConnInfo;
use super::dispatch::LogLevel;
use super::http2;
use super::proxy_header;
use super::responder::{Completion, Responder, Step};
use super::shared::{
    body_deadline, close_after_response, hand_over, Exchange, FailOnDrop, Shared, StateGauge,
};
use super::shutdown::{first_request_deadline, Shutdown};
use super::socket::{Conn, ReadBuf};
use super::spool::{Body, BodySpool};
use super::tracking::PageFacts;
use crate::http::h2_guard::PREFACE;
use crate::http::request::{HeadParser, RequestHead, Version};
use crate::http::response::{error_page, protocol_error_page, CONTINUE};
use crate::http::{BodyDecoder, ErrorKind, HttpError};
use crate::observe::access_format::Outcome;
use crate::observe::metrics::{self, ConnState};

/// A connection's read buffer starts this small (most request heads fit) and grows to
/// `recv_bytes` only when needed, so idle keep-alive connections cost little memory.
const INITIAL_READ_BUFFER: usize = 2048;
/// Below this much room, the read buffer grows before the next read.
const MIN_READ: usize = 512;

/// How much to ask of the next `recv` into `rbuf`: the room the buffer already has
/// while there is a fair amount of it (no growth); `max` only when it runs short.
fn read_size(rbuf: &BytesMut, max: usize) -> usize {
    let spare = rbuf.capacity() - rbuf.len();
    if spare >= MIN_READ {
        spare.min(max)
    } else {
        max
    }
}

/// Body bytes asked of each `recv` while receiving a large body.
const BODY_READ: usize = 64 * 1024;

/// Why a connection ends.
enum End {
    /// The client closed, reset, timed out or the server is shutting down: just close.
    Quiet,
    /// A response announced `Connection: close` (or an error page was sent): close
    /// gracefully, letting the client read everything.
    AfterResponse,
    /// The client opened with the HTTP/2 preface (h2c by prior knowledge).
    Http2,
}

pub async fn serve(conn: Arc<Conn>, info: Arc<ConnInfo>, shared: Arc<Shared>) {
    let accepted = Instant::now();
    let mut shutdown = shared.shutdown.subscribe();
    let mut rbuf = BytesMut::with_capacity(INITIAL_READ_BUFFER.min(shared.config.recv_bytes));
    // With `proxy_protocol`, the connection starts with a PROXY header (or ends here).
    let received = proxy_header::receive(
        &conn,
        info,
        &mut rbuf,
        &shared.config,
        &shared.refusals,
        &mut shutdown,
    );
    let Some(info) = received.await else {
        conn.shutdown_both();
        return;
    };
    let Some(info) = secure(&conn, info, &mut rbuf, &shared, &mut shutdown, accepted).await else {
        conn.shutdown_both();
        return;
    };
    if info.tls.as_ref().is_some_and(|tls| tls.h2) {
        return http2::serve(conn, info, shared, rbuf, shutdown, accepted).await;
    }
    let state = StateGauge::new();
    let mut session = Session {
        conn,
        info,
        rbuf,
        parser: HeadParser::new(),
        shutdown,
        activity: 0,
        activity_seen: 0,
        idle_timer: Box::pin(sleep_until(
            (Instant::now() + shared.config.channel_timeout).into(),
        )),
        peer_finished: false,
        stage: Stage::Fresh { accepted },
        request_started: accepted,
        state,
        shared,
    };
    let end = session.run().await;
    match end {
        End::AfterResponse => {
            close_after_response(&session.conn).await;
        }
        End::Quiet => session.conn.shutdown_both(),
        End::Http2 => {
            let Session {
                conn,
                info,
                shared,
                rbuf,
                shutdown,
                state,
                ..
            } = session;
            drop(state);
            http2::serve(conn, info, shared, rbuf, shutdown, accepted).await;
        }
    }
}

/// On a TLS listener, the handshake: within `header_timeout` of the accept (once the
/// server is closing, within the grace a first request gets). `None`: it failed or
/// took too long (logged at DEBUG: scanners and health checks do that all day); close.
async fn secure(
    conn: &Conn,
    info: Arc<ConnInfo>,
    rbuf: &mut BytesMut,
    shared: &Shared,
    shutdown: &mut Shutdown,
    accepted: Instant,
) -> Option<Arc<ConnInfo>> {
    if !conn.is_tls() {
        return Some(info);
    }
    let deadline = accepted + shared.config.header_timeout;
    let handshake = conn.handshake(rbuf);
    tokio::pin!(handshake);
    let outcome = loop {
        let until = if shutdown.is_closing() {
            deadline.min(first_request_deadline(accepted))
        } else {
            deadline
        };
        tokio::select! {
            biased;
            r = &mut handshake => break r,
            _ = sleep_until(until.into()) => {
                break Err(io::Error::new(io::ErrorKind::TimedOut, "not finished in time"));
            }
            _ = shutdown.recv(), if !shutdown.seen() => continue,
        }
    };
    match outcome {
        Ok(Some(tls)) => Some(Arc::new(info.secured(tls))),
        Ok(None) => Some(info),
        Err(err) => {
            metrics::count(metrics::Counter::RefusedTlsHandshake, 1);
            shared.log.log(
                LogLevel::Debug,
                format!("TLS handshake with {} failed: {err}", info.peer),
            );
            None
        }
    }
}

struct Session {
    conn: Arc<Conn>,
    info: Arc<ConnInfo>,
    shared: Arc<Shared>,
    rbuf: BytesMut,
    parser: HeadParser,
    shutdown: Shutdown,
    /// Counts reads, writes and completed responses.
    activity: u64,
    /// `activity` when the idle timer last fired.
    activity_seen: u64,
    /// Fires every `channel_timeout`; the connection is idle-closed when nothing
    /// happened since the previous firing. It is re-armed only when it fires, so
    /// keeping it costs nothing per request (a connection closes after between one and
    /// two `channel_timeout`s of inactivity).
    idle_timer: Pin<Box<Sleep>>,
    /// The client shut down its sending side (or closed): no more requests will come.
    peer_finished: bool,
    stage: Stage,
    /// When the current request's first byte arrived.
    request_started: Instant,
    /// What the connection is doing, for the metrics.
    state: StateGauge,
}

/// Whether the connection has had a request yet (see `FIRST_REQUEST_GRACE`).
#[derive(Clone, Copy)]
enum Stage {
    Fresh { accepted: Instant },
    Served,
}

/// What the first bytes of a cleartext connection say of HTTP/2.
enum Preface {
    Absent,
    /// The start of the preface so far.
    Partial,
    Present,
}

/// Why no request head came.
enum NoRequest {
    /// The client sent something unacceptable: answer it with this error.
    Refuse(HttpError),
    /// Nothing to answer (the client left, the connection idled out, shutdown).
    Close,
    /// The connection opened with the HTTP/2 preface.
    Http2,
}

/// How waiting for a response ended.
enum ResponseEnd {
    /// Written in full; the connection may stay open if `keep_alive`.
    Delivered { keep_alive: bool },
    /// It cannot be delivered (the client left, a write failed or stalled): drop the
    /// connection.
    Dropped,
}

/// Why waiting for bytes from the client stopped.
enum ReadStop {
    Eof,
    TimedOut,
    Shutdown,
    Failed(io::Error),
}

impl Session {
    async fn run(&mut self) -> End {
        loop {
            let head = match self.read_head().await {
                Ok(head) => head,
                Err(NoRequest::Refuse(err)) => return self.reject(None, &err).await,
                Err(NoRequest::Close) => return End::Quiet,
                Err(NoRequest::Http2) => return End::Http2,
            };
            let body = match self.read_body(&head).await {
                Ok(body) => body,
                Err(BodyFailure::Protocol(err)) => return self.reject(Some(&head), &err).await,
                Err(BodyFailure::Storage(err)) => {
                    self.shared.log.log(
                        LogLevel::Error,
                        format!("Could not buffer a request body: {err}"),
                    );
                    let page = error_page(
                        head.version,
                        500,
                        "Internal Server Error",
                        "The request body could not be stored",
                        self.shared.config.ident.as_deref(),
                    );
                    let sent = self.send_page(&page).await;
                    self.page_sent(Some(&head), &page, &sent);
                    return End::AfterResponse;
                }
                Err(BodyFailure::Closed) => return End::Quiet,
            };
            let responder = Responder::new(
                self.conn.clone(),
                self.shared.output_limits,
                self.shared.budgets.clone(),
            );
            self.state.set(ConnState::Responding);
            let keep_alive = head.keep_alive && !self.shutdown.is_closing();
            let responder = hand_over(
                &self.shared,
                &self.info,
                responder,
                Exchange {
                    head,
                    body,
                    started: self.request_started,
                    keep_alive,
                },
            );
            // If this task is dropped mid-response (the runtime stopping at the end of
            // a shutdown), the response fails: a parked iterator is resumed only to be
            // closed, and nothing waits for this connection any more.
            let in_flight = FailOnDrop(&responder);
            let delivered = self.await_response(&responder).await;
            std::mem::forget(in_flight);
            match delivered {
                ResponseEnd::Delivered { keep_alive: true }
                    if !self.peer_finished && !self.shutdown.is_closing() =>
                {
                    self.activity += 1;
                    self.state.set(ConnState::Idle);
                }
                // Shutting down with nothing of a next request received: nothing to
                // drain, close at once.
                ResponseEnd::Delivered { keep_alive: true }
                    if self.rbuf.is_empty() && !self.peer_finished =>
                {
                    return End::Quiet
                }
                ResponseEnd::Delivered { .. } => return End::AfterResponse,
                ResponseEnd::Dropped => return End::Quiet,
            }
        }
    }

    /// Reads until one request head is parsed.
    async fn read_head(&mut self) -> Result<RequestHead, NoRequest> {
        let mut head_started: Option<Instant> = None;
        loop {
            match self.sniff_preface() {
                Preface::Absent => {}
                Preface::Present => return Err(NoRequest::Http2),
                Preface::Partial => {
                    // Not parsed yet: the first 18 bytes of the preface look like a head.
                    if self
                        .read_more(
                            PREFACE.len(),
                            false,
                            Some(self.request_started + self.shared.config.header_timeout),
                        )
                        .await
                        .is_err()
                    {
                        return Err(NoRequest::Close);
                    }
                    continue;
                }
            }
            match self.parser.parse(&mut self.rbuf, &self.shared.head_limits) {
                Ok(Some(head)) => {
                    self.stage = Stage::Served;
                    self.request_started = head_started.unwrap_or_else(Instant::now);
                    return Ok(head);
                }
                Ok(None) => {}
                Err(err) => {
                    self.request_started = head_started.unwrap_or_else(Instant::now);
                    return Err(NoRequest::Refuse(err));
                }
            }
            if self.peer_finished {
                return Err(NoRequest::Close);
            }
            let idle = self.parser.pending(&self.rbuf) == 0;
            let grace = self.first_request_grace(idle);
            if idle && self.shutdown.is_closing() && grace.is_none() {
                return Err(NoRequest::Close);
            }
            let deadline = if idle {
                head_started = None;
                grace
            } else {
                let started = *head_started.get_or_insert_with(Instant::now);
                self.state.set(ConnState::Reading);
                Some(started + self.shared.config.header_timeout)
            };
            match self
                .read_more(
                    self.shared.config.recv_bytes,
                    idle && grace.is_none(),
                    deadline,
                )
                .await
            {
                Ok(_) => {}
                // A fresh connection looks again, with its grace.
                Err(ReadStop::Shutdown) if matches!(self.stage, Stage::Fresh { .. }) => {}
                Err(ReadStop::Eof) => {
                    self.peer_finished = true;
                    if self.parser.pending(&self.rbuf) > 0 {
                        // The client sent half a request and stopped: nothing to answer.
                        return Err(NoRequest::Close);
                    }
                }
                Err(ReadStop::TimedOut) if !idle => {
                    self.request_started = head_started.unwrap_or_else(Instant::now);
                    return Err(NoRequest::Refuse(HttpError::new(
                        ErrorKind::RequestTimeout,
                        "The request head was not received in time",
                    )));
                }
                Err(ReadStop::TimedOut | ReadStop::Shutdown) => return Err(NoRequest::Close),
                Err(ReadStop::Failed(err)) => {
                    self.socket_error("reading a request", &err);
                    return Err(NoRequest::Close);
                }
            }
        }
    }

    /// With `http2` on a cleartext connection that has had no request yet: whether what
    /// it sent so far is the HTTP/2 preface (h2c by prior knowledge).
    fn sniff_preface(&self) -> Preface {
        if !self.shared.config.http2.enabled
            || self.conn.is_tls()
            || !matches!(self.stage, Stage::Fresh { .. })
            || self.rbuf.is_empty()
        {
            return Preface::Absent;
        }
        let n = self.rbuf.len().min(PREFACE.len());
        if self.rbuf[..n] != PREFACE[..n] {
            Preface::Absent
        } else if n == PREFACE.len() {
            Preface::Present
        } else {
            Preface::Partial
        }
    }

    /// During a shutdown, until when a connection with no request yet may wait for its
    /// first (`None`: not fresh, not idle, or not shutting down).
    fn first_request_grace(&self, idle: bool) -> Option<Instant> {
        match self.stage {
            Stage::Fresh { accepted } if idle && self.shutdown.is_closing() => {
                let until = first_request_deadline(accepted);
                (Instant::now() < until).then_some(until)
            }
            _ => None,
        }
    }

    async fn read_body(&mut self, head: &RequestHead) -> Result<Body, BodyFailure> {
        let config = &self.shared.config;
        let Some(mut decoder) = BodyDecoder::new(head.framing, config.max_request_body_size) else {
            return Ok(Body::Empty);
        };
        self.state.set(ConnState::Reading);
        let mut spool = BodySpool::new(
            config.inbuf_overflow,
            decoder.remaining_hint(),
            &self.shared.budgets,
        );
        self.decode_buffered(&mut decoder, &mut spool)?;
        if !decoder.is_done() && head.expect_continue {
            if let Err(err) = self.send_page(CONTINUE).await {
                self.socket_error("sending 100 Continue", &err);
                return Err(BodyFailure::Closed);
            }
        }
        let started = Instant::now();
        while !decoder.is_done() {
            let deadline = body_deadline(&self.shared.config, started, spool.len());
            if self.rbuf.is_empty() && self.read_direct(&mut decoder, &mut spool, deadline).await? {
                continue;
            }
            match self.read_more(BODY_READ, false, deadline).await {
                Ok(_) => self.decode_buffered(&mut decoder, &mut spool)?,
                Err(stop) => return Err(self.body_read_failed(stop)),
            }
        }
        let initial = INITIAL_READ_BUFFER.min(self.shared.config.recv_bytes);
        if self.rbuf.is_empty() && (self.rbuf.capacity() == 0 || self.rbuf.capacity() > initial) {
            // Back to the small buffer of a connection between requests.
            self.rbuf = BytesMut::with_capacity(initial);
        }
        spool.finish().map_err(BodyFailure::Storage)
    }

    fn body_read_failed(&self, stop: ReadStop) -> BodyFailure {
        match stop {
            ReadStop::Failed(err) => {
                self.socket_error("reading a request body", &err);
                BodyFailure::Closed
            }
            ReadStop::TimedOut => BodyFailure::Protocol(HttpError::new(
                ErrorKind::RequestTimeout,
                "The request body was not received fast enough",
            )),
            // A body cut short cannot be answered meaningfully.
            ReadStop::Eof | ReadStop::Shutdown => BodyFailure::Closed,
        }
    }

    /// For a Content-Length body kept in memory, receives the next bytes straight into
    /// the body buffer, saving a copy through the read buffer. `Ok(false)` when that
    /// does not apply (chunked, or the body is going to a file).
    async fn read_direct(
        &mut self,
        decoder: &mut BodyDecoder,
        spool: &mut BodySpool,
        deadline: Option<Instant>,
    ) -> Result<bool, BodyFailure> {
        let Some(remaining) = decoder.remaining_hint() else {
            return Ok(false);
        };
        let want = usize::try_from(remaining)
            .unwrap_or(usize::MAX)
            .min(BODY_READ);
        let Some(target) = spool.memory_for(want) else {
            return Ok(false);
        };
        match self.read_into(target, want, false, deadline).await {
            Ok(n) => {
                spool.received_in_memory(n);
                decoder.skip_length(n);
                Ok(true)
            }
            Err(stop) => Err(self.body_read_failed(stop)),
        }
    }

    fn decode_buffered(
        &mut self,
        decoder: &mut BodyDecoder,
        spool: &mut BodySpool,
    ) -> Result<(), BodyFailure> {
        if self.rbuf.is_empty() {
            return Ok(());
        }
        let mut storage_error = None;
        let progress = decoder
            .decode(&self.rbuf, &mut |data| {
                if storage_error.is_none() {
                    if let Err(e) = spool.append(data) {
                        storage_error = Some(e);
                    }
                }
            })
            .map_err(BodyFailure::Protocol)?;
        self.rbuf.advance(progress.consumed);
        if let Some(err) = storage_error {
            return Err(BodyFailure::Storage(err));
        }
        spool.end_batch().map_err(BodyFailure::Storage)
    }

    /// Reads more bytes into the buffer. `idle`: no request is in progress, so
    /// shutdown closes the connection. `deadline`: the head must be complete by then.
    /// Inactivity for `channel_timeout` always ends the wait.
    async fn read_more(
        &mut self,
        max: usize,
        idle: bool,
        deadline: Option<Instant>,
    ) -> Result<usize, ReadStop> {
        let mut rbuf = std::mem::take(&mut self.rbuf);
        let max = read_size(&rbuf, max);
        let result = self.read_into(&mut rbuf, max, idle, deadline).await;
        self.rbuf = rbuf;
        result
    }

    /// `read_more` into any buffer.
    async fn read_into(
        &mut self,
        target: &mut impl ReadBuf,
        max: usize,
        idle: bool,
        deadline: Option<Instant>,
    ) -> Result<usize, ReadStop> {
        loop {
            let read = self.conn.read(target, max);
            let outcome = tokio::select! {
                biased;
                r = read => r,
                _ = self.idle_timer.as_mut() => {
                    if self.idle_expired(false) {
                        return Err(ReadStop::TimedOut);
                    }
                    continue;
                }
                _ = sleep_until_opt(deadline) => return Err(ReadStop::TimedOut),
                _ = self.shutdown.recv(), if idle && !self.shutdown.seen() => {
                    return Err(ReadStop::Shutdown);
                }
            };
            return match outcome {
                Ok(0) => Err(ReadStop::Eof),
                Ok(n) => {
                    self.activity += 1;
                    Ok(n)
                }
                Err(err) => Err(ReadStop::Failed(err)),
            };
        }
    }

    /// Called when the idle timer fires: true if nothing happened since it last fired
    /// (and `busy` is false); otherwise re-arms it for another `channel_timeout`.
    fn idle_expired(&mut self, busy: bool) -> bool {
        if !busy && self.activity == self.activity_seen {
            return true;
        }
        self.activity_seen = self.activity;
        let next = Instant::now() + self.shared.config.channel_timeout;
        self.idle_timer.as_mut().reset(next.into());
        false
    }

    /// Waits for the response to be produced and written.
    ///
    /// While nothing of the client's next request is buffered, the socket is watched
    /// too: a disconnect is noticed at once, and the producer need not wake this task
    /// when it completes the response itself (the client's next bytes will). Once
    /// bytes arrive they may be a whole pipelined request, so from then on the task
    /// stops reading and asks to be woken.
    ///
    async fn await_response(&mut self, responder: &Responder) -> ResponseEnd {
        let stall = self.shared.config.channel_timeout;
        let mut watching = !self.peer_finished && self.rbuf.is_empty();
        responder.set_consumer_watching(watching);
        loop {
            let want = read_size(&self.rbuf, self.shared.config.recv_bytes);
            let read = self.conn.read(&mut self.rbuf, want);
            let step = tokio::select! {
                biased;
                step = responder.next_step() => step,
                _ = self.shutdown.recv(), if !self.shutdown.seen() => {
                    // A completed response may not have woken us; look again.
                    continue;
                }
                _ = self.idle_timer.as_mut() => {
                    // Only a delivered response can leave the connection idle; an
                    // application may take as long as it likes.
                    // A response completed without waking us counts as activity once.
                    let busy = responder.completion() != Completion::SeenBefore;
                    if self.idle_expired(busy) {
                        return ResponseEnd::Dropped;
                    }
                    continue;
                }
                r = read, if watching => {
                    watching = false;
                    responder.set_consumer_watching(false);
                    match r {
                        Ok(0) => {
                            self.peer_finished = true;
                            self.info.set_disconnected();
                        }
                        Ok(_) => self.activity += 1,
                        Err(err) => {
                            self.info.set_disconnected();
                            self.socket_error("reading from a client", &err);
                            responder.fail();
                            return ResponseEnd::Dropped;
                        }
                    }
                    continue;
                }
            };
            match step {
                Step::Write(batch) => match responder.write_batch(batch, stall).await {
                    Ok(()) => self.activity += 1,
                    Err(err) => {
                        self.info.set_disconnected();
                        self.socket_error("writing a response", &err);
                        responder.fail();
                        return ResponseEnd::Dropped;
                    }
                },
                Step::Done { keep_alive } => return ResponseEnd::Delivered { keep_alive },
                Step::Failed => {
                    self.info.set_disconnected();
                    return ResponseEnd::Dropped;
                }
            }
        }
    }

    /// Answers a request the server refuses, then ends the connection.
    async fn reject(&mut self, head: Option<&RequestHead>, err: &HttpError) -> End {
        let version = head.map(|h| h.version);
        let page = protocol_error_page(version, err, self.shared.config.ident.as_deref());
        let sent = self.send_page(&page).await;
        self.page_sent(head, &page, &sent);
        match sent {
            Ok(()) => End::AfterResponse,
            Err(_) => End::Quiet,
        }
    }

    /// Counts and logs an error page the server answered on its own.
    fn page_sent(&self, head: Option<&RequestHead>, page: &[u8], sent: &io::Result<()>) {
        let observer = &self.shared.observer;
        if !observer.active() {
            return;
        }
        let head_len = crate::http::response::head_len(page);
        let status = page
            .get(9..12)
            .and_then(|code| std::str::from_utf8(code).ok())
            .and_then(|code| code.parse().ok())
            .unwrap_or(500);
        let facts = PageFacts {
            head,
            received: &self.rbuf,
            version: head.map_or(Version::Http11, |h| h.version).as_str(),
            status,
            body_bytes: (page.len() - head_len) as u64,
        };
        let outcome = if sent.is_ok() {
            Outcome::Closed
        } else {
            Outcome::Aborted
        };
        observer.page_sent(&facts, &self.info, self.request_started, outcome);
    }

    async fn send_page(&mut self, page: &[u8]) -> io::Result<()> {
        let deadline = tokio::time::Instant::now() + self.shared.config.channel_timeout;
        match timeout_at(deadline, self.conn.send_all(page)).await {
            Ok(result) => result,
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        }
    }

    fn socket_error(&self, doing: &str, err: &io::Error) {
        let ordinary = matches!(
            err.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::TimedOut
        );
        if self.shared.config.log_socket_errors && !ordinary {
            self.shared.log.log(
                LogLevel::Warning,
                format!("Socket error while {doing}: {err}"),
            );
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

enum BodyFailure {
    Protocol(HttpError),
    Storage(io::Error),
    Closed,
}

#[cfg(test)]
mod tests {
    //! The connection loop over a real socket pair, with a dispatcher that answers at
    //! once (no Python): ordering of pipelined requests, refusals, `100 Continue`,
    //! shutdown of an idle connection.

    use super::*;
    use crate::config::{Config, ProxyProtocol};
    use crate::proxy::TrustedPeers;
    use crate::server::budget::Budgets;
    use crate::server::conn_info::ClientTransport;
    use crate::server::dispatch::{Dispatcher, Request};
    use crate::server::responder::OutputLimits;
    use crate::server::responder::{Delivery, Part};
    use crate::server::shutdown::ShutdownSignal;
    use crate::server::shutdown::FIRST_REQUEST_GRACE;
    use crate::server::tracking::Observer;
    use crate::test_support::{block_on as run, Quiet};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    /// Answers every request with its target as the body, keep-alive.
    #[derive(Default)]
    struct Echo {
        calls: AtomicUsize,
        bodies: Mutex<Vec<Vec<u8>>>,
        /// Each request's client, as REMOTE_ADDR would show it, and its transport.
        clients: Mutex<Vec<(String, ClientTransport)>>,
    }

    impl Dispatcher for Echo {
        fn dispatch(&self, request: Request) {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let client = (request.conn.peer.to_string(), request.conn.transport);
            self.clients.lock().unwrap().push(client);
            let mut body = vec![0; request.body.len() as usize];
            let n = request.body.read_at(0, &mut body).unwrap_or(0);
            body.truncate(n);
            self.bodies.lock().unwrap().push(body);
            let target = request.head.target().to_vec();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                target.len()
            );
            let responder = &request.responder;
            let _ = responder.send(
                &[Part::Borrowed(head.as_bytes()), Part::Borrowed(&target)],
                Delivery::Direct,
            );
            responder.finish(request.head.keep_alive);
        }
    }

    struct Harness {
        client: UnixStream,
        echo: Arc<Echo>,
        shutdown: Arc<ShutdownSignal>,
        task: tokio::task::JoinHandle<()>,
    }

    fn connect() -> Harness {
        connect_with(Config::example())
    }

    fn connect_with(config: Config) -> Harness {
        let (server, client) = std::os::unix::net::UnixStream::pair().expect("a socket pair");
        server.set_nonblocking(true).unwrap();
        client.set_nonblocking(true).unwrap();
        let conn = Arc::new(Conn::new(socket2::Socket::from(server)).expect("registered"));
        let echo = Arc::new(Echo::default());
        let shutdown = ShutdownSignal::new();
        let shared = Arc::new(Shared {
            head_limits: config.head_limits(),
            output_limits: OutputLimits::of(&config),
            config,
            dispatcher: echo.clone(),
            log: Arc::new(Quiet),
            refusals: proxy_header::Refusals::new(Arc::new(Quiet)),
            shutdown: shutdown.clone(),
            budgets: Budgets::unlimited(),
            observer: Arc::new(Observer::new(None)),
            statics: None,
            tls: None,
        });
        let info = Arc::new(crate::test_support::unix_conn_info(shutdown.clone()));
        let task = tokio::spawn(serve(conn, info, shared));
        Harness {
            client: UnixStream::from_std(client).expect("a tokio stream"),
            echo,
            shutdown,
            task,
        }
    }

    /// Everything the server sends until it closes (or 2 s pass).
    async fn read_to_end(client: &mut UnixStream) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), client.read_to_end(&mut out)).await;
        out
    }

    /// Reads until `out` contains `needle`.
    async fn read_until(client: &mut UnixStream, needle: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while !out.windows(needle.len()).any(|w| w == needle) {
            let n = tokio::time::timeout(Duration::from_secs(2), client.read(&mut buf))
                .await
                .expect("the server answered in time")
                .expect("a read");
            assert!(n > 0, "closed before {needle:?}: {out:?}");
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    #[test]
    fn pipelined_requests_are_answered_in_order() {
        run(async {
            let mut h = connect();
            h.client
                .write_all(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /bb HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let out = read_to_end(&mut h.client).await;
            let text = String::from_utf8_lossy(&out);
            let a = text.find("\r\n\r\n/a").expect("the first response");
            let b = text.find("\r\n\r\n/bb").expect("the second response");
            assert!(a < b, "{text}");
            assert_eq!(h.echo.calls.load(Ordering::SeqCst), 2);
        });
    }

    #[test]
    fn a_malformed_request_gets_400_and_the_connection_closes() {
        run(async {
            let mut h = connect();
            h.client
                .write_all(b"GET / HTTP/1.1\r\nHost : t\r\n\r\n")
                .await
                .unwrap();
            let out = read_to_end(&mut h.client).await;
            // A head that did not parse has no version to answer in: HTTP/1.0, as
            // Waitress.
            assert!(
                out.starts_with(b"HTTP/1.0 400 "),
                "{:?}",
                String::from_utf8_lossy(&out)
            );
            assert_eq!(h.echo.calls.load(Ordering::SeqCst), 0);
            tokio::time::timeout(Duration::from_secs(3), h.task)
                .await
                .expect("the connection task ended")
                .unwrap();
        });
    }

    #[test]
    fn expect_100_continue_is_answered_before_the_body_is_sent() {
        run(async {
            let mut h = connect();
            h.client
                .write_all(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
                .await
                .unwrap();
            let interim = read_until(&mut h.client, b"\r\n\r\n").await;
            assert!(interim.starts_with(b"HTTP/1.1 100 Continue\r\n\r\n"));
            h.client.write_all(b"hello").await.unwrap();
            read_until(&mut h.client, b"/up").await;
            assert_eq!(*h.echo.bodies.lock().unwrap(), vec![b"hello".to_vec()]);
        });
    }

    #[test]
    fn shutdown_closes_an_idle_keep_alive_connection() {
        run(async {
            let mut h = connect();
            h.client
                .write_all(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
                .await
                .unwrap();
            read_until(&mut h.client, b"/x").await;
            h.shutdown.trigger();
            let rest = read_to_end(&mut h.client).await;
            assert!(rest.is_empty(), "{rest:?}");
            tokio::time::timeout(Duration::from_secs(3), h.task)
                .await
                .expect("the connection task ended")
                .unwrap();
        });
    }

    #[test]
    fn a_fresh_connection_during_a_shutdown_gets_its_first_request_answered() {
        run(async {
            let mut h = connect();
            h.shutdown.trigger();
            tokio::time::sleep(Duration::from_millis(50)).await;
            h.client
                .write_all(b"GET /late HTTP/1.1\r\nHost: t\r\n\r\n")
                .await
                .unwrap();
            let rest = String::from_utf8(read_to_end(&mut h.client).await).unwrap();
            assert!(rest.ends_with("/late"), "{rest:?}");
            tokio::time::timeout(Duration::from_secs(3), h.task)
                .await
                .expect("the connection closed after its one response")
                .unwrap();
        });
    }

    #[test]
    fn a_fresh_connection_that_stays_silent_is_closed_after_its_grace() {
        run(async {
            let mut h = connect();
            h.shutdown.trigger();
            let started = std::time::Instant::now();
            let rest = read_to_end(&mut h.client).await;
            assert!(rest.is_empty(), "{rest:?}");
            let waited = started.elapsed();
            assert!(
                waited < FIRST_REQUEST_GRACE + Duration::from_millis(500),
                "{waited:?}"
            );
        });
    }

    /// `proxy_protocol` on, trusting `trusted` (the test peer is a Unix socket:
    /// `localhost`), with a short `header_timeout`.
    fn proxied(trusted: &str) -> Harness {
        let trusted = TrustedPeers::parse(Some(trusted)).unwrap();
        connect_with(Config {
            header_timeout: Duration::from_millis(300),
            proxy_protocol: ProxyProtocol::Required { trusted },
            ..Config::example()
        })
    }

    const V2_TLS: &[u8] = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x14\
        \xc0\x00\x02\x07\xc6\x33\x64\x01\x15\xb3\x01\xbb\
        \x20\x00\x05\x01\x00\x00\x00\x00";

    #[test]
    fn a_proxy_header_names_the_client_of_every_request_on_the_connection() {
        run(async {
            let mut h = proxied("localhost");
            h.client
                .write_all(b"PROXY TCP4 192.0.2.7 198.51.100.1 5555 443\r\nGET /a HTTP/1.1\r\nHost: t\r\n\r\n")
                .await
                .unwrap();
            read_until(&mut h.client, b"/a").await;
            h.client
                .write_all(b"GET /b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            read_to_end(&mut h.client).await;
            let client = ("192.0.2.7:5555".to_owned(), ClientTransport::AsConfigured);
            assert_eq!(
                *h.echo.clients.lock().unwrap(),
                vec![client.clone(), client]
            );
        });
    }

    #[test]
    fn a_v2_header_in_pieces_with_the_ssl_tlv_means_tls() {
        run(async {
            let mut h = proxied("*");
            for piece in [&V2_TLS[..5], &V2_TLS[5..20], &V2_TLS[20..]] {
                h.client.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            h.client
                .write_all(b"GET /tls HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            read_until(&mut h.client, b"/tls").await;
            let client = ("192.0.2.7:5555".to_owned(), ClientTransport::Tls);
            assert_eq!(*h.echo.clients.lock().unwrap(), vec![client]);
        });
    }

    #[test]
    fn no_header_a_bad_one_or_an_untrusted_peer_closes_unanswered() {
        let cases: [(&str, &[u8]); 4] = [
            ("localhost", b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"),
            (
                "localhost",
                b"PROXY TCP4 192.0.2.7 ::1 5555 443\r\nGET / HTTP/1.1\r\n\r\n",
            ),
            ("localhost", b"PROXY TCP4 192.0.2.7"),
            (
                "10.0.0.1",
                b"PROXY UNKNOWN\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n",
            ),
        ];
        for (trusted, sent) in cases {
            run(async {
                let mut h = proxied(trusted);
                let _ = h.client.write_all(sent).await;
                let started = Instant::now();
                let out = read_to_end(&mut h.client).await;
                assert!(out.is_empty(), "{out:?}");
                assert!(started.elapsed() < Duration::from_secs(1), "{sent:?}");
                assert_eq!(h.echo.calls.load(Ordering::SeqCst), 0);
                tokio::time::timeout(Duration::from_secs(2), h.task)
                    .await
                    .expect("the connection task ended")
                    .unwrap();
            });
        }
    }
}

//! One HTTP/2 connection (h2 chosen by ALPN, or h2c by prior knowledge): the `h2` crate
//! speaks the protocol and this module drives it. Each stream becomes the same complete
//! request an HTTP/1.1 connection hands over: its head written as HTTP/1.1 and judged
//! by the same parser and limits, its body received in full before dispatch (spilled
//! past `inbuf_overflow`, at `min_body_rate`). Its response comes back through a
//! `Responder` as the HTTP/1.1 bytes the application side always produces, is read back
//! into HEADERS and DATA (`http/h2_translate.rs`) and sent within the stream's
//! flow-control window, so a slow stream holds its own queue, never a worker. A flood
//! (`http/h2_guard.rs`) closes the connection with ENHANCE_YOUR_CALM; shutdown sends
//! GOAWAY and lets the open streams finish. No Python here.

use std::future::poll_fn;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use h2::server::{Connection, SendResponse};
use h2::{Reason, RecvStream, SendStream};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout, timeout_at};

use super::conn_info::ConnInfo;
use super::dispatch::LogLevel;
use super::h2_io::{H2Io, IoWatch};
use super::responder::{Chunk, FileSegment, Responder, Step};
use super::shared::{body_deadline, hand_over, linger, Exchange, FailOnDrop, Shared, StateGauge};
use super::shutdown::Shutdown;
use super::socket::Conn;
use super::spool::{Body, BodySpool};
use super::tracking::PageFacts;
use crate::http::h2_translate::{request_head, Piece, ResponseHead, ResponseReader};
use crate::http::request::{BodyFraming, HeadParser, RequestHead, Version};
use crate::http::response::{error_page, head_len, protocol_error_page};
use crate::http::{ErrorKind, HttpError};
use crate::observe::access_format::Outcome;
use crate::observe::metrics::{self, Counter};

/// Streams reset by the client before they were accepted that `h2` keeps count of; past
/// it the connection is closed (its first defence against rapid reset).
pub const PENDING_ACCEPT_RESETS: usize = 20;
/// Streams the server itself reset for protocol errors before the connection is closed.
pub const LOCAL_ERROR_RESETS: usize = 256;
/// Response bytes `h2` may hold for one stream beyond its window (the relay sends no
/// more than the window allows, so this bounds only frame overhead).
const SEND_BUFFER: usize = 64 * 1024;
/// File bytes read at a time for a response under HTTP/2.
const FILE_READ: usize = 64 * 1024;
/// Times a stream being cut yields to the connection task before its RST_STREAM.
const RESET_YIELDS: usize = 4;
/// How long a connection closed for a flood has to take its GOAWAY.
const GOAWAY_GRACE: Duration = Duration::from_secs(1);

/// Serves an HTTP/2 connection to its end. `early`: bytes already read (the preface).
pub async fn serve(
    conn: Arc<Conn>,
    info: Arc<ConnInfo>,
    shared: Arc<Shared>,
    early: BytesMut,
    mut shutdown: Shutdown,
    accepted: Instant,
) {
    metrics::count(Counter::Http2Connections, 1);
    let _state = StateGauge::new();
    let watch = Arc::new(IoWatch::default());
    let io = H2Io::new(conn.clone(), early, watch.clone());
    let handshake = builder(&shared).handshake::<_, Bytes>(io);
    let deadline = accepted + shared.config.header_timeout;
    let mut connection = match timeout_at(deadline.into(), handshake).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(err)) => {
            debug(
                &shared,
                format!("HTTP/2 preface from {} refused: {err}", info.peer),
            );
            conn.shutdown_both();
            return;
        }
        Err(_) => {
            debug(
                &shared,
                format!("HTTP/2 preface from {} not received in time", info.peer),
            );
            conn.shutdown_both();
            return;
        }
    };
    if shutdown.is_closing() {
        connection.graceful_shutdown();
    }
    drive(
        &mut connection,
        &conn,
        &info,
        &shared,
        &watch,
        &mut shutdown,
    )
    .await;
    linger(&conn).await;
    conn.shutdown_both();
}

/// The `h2` settings: the options' limits and the constants above.
fn builder(shared: &Shared) -> h2::server::Builder {
    let settings = shared.config.http2;
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(settings.max_concurrent_streams)
        .initial_window_size(settings.stream_window)
        .initial_connection_window_size(settings.connection_window)
        .max_header_list_size(
            u32::try_from(shared.config.max_request_header_size).unwrap_or(u32::MAX),
        )
        .max_send_buffer_size(SEND_BUFFER)
        .max_pending_accept_reset_streams(PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(Some(LOCAL_ERROR_RESETS));
    builder
}

/// Accepts streams until the connection ends: the client leaves, a protocol error, a
/// flood, or GOAWAY (shutdown, idleness) and its last stream done.
async fn drive(
    connection: &mut Connection<H2Io, Bytes>,
    conn: &Arc<Conn>,
    info: &Arc<ConnInfo>,
    shared: &Arc<Shared>,
    watch: &IoWatch,
    shutdown: &mut Shutdown,
) {
    let idle_every = shared.config.channel_timeout;
    let idle = sleep_until((Instant::now() + idle_every).into());
    tokio::pin!(idle);
    let mut activity_seen = watch.activity();
    // The streams' tasks: aborted with the connection (dropped at the end of a shutdown,
    // say), which fails their responses as an HTTP/1.1 connection's end fails its own.
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
            _ = watch.flooded.notified() => {
                let kind = watch.flood().map_or("frames", |f| f.as_str());
                flooded(shared, info, &format!("of {kind}"));
                connection.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
                let _ = timeout(GOAWAY_GRACE, poll_fn(|cx| connection.poll_closed(cx))).await;
                return;
            }
            next = connection.accept() => match next {
                Some(Ok((request, respond))) => {
                    let stream = Stream {
                        conn: conn.clone(),
                        info: info.clone(),
                        shared: shared.clone(),
                        started: Instant::now(),
                    };
                    streams.spawn(stream.run(request, respond));
                }
                Some(Err(err)) if err.reason() == Some(Reason::ENHANCE_YOUR_CALM) => {
                    // h2's own limits (streams reset before they were accepted, streams
                    // it reset for errors, CONTINUATION frames): a flood too.
                    flooded(shared, info, &format!("({err})"));
                    return;
                }
                Some(Err(err)) => {
                    if !err.is_io() || shared.config.log_socket_errors {
                        debug(shared, format!("HTTP/2 connection from {} ended: {err}", info.peer));
                    }
                    return;
                }
                None => return,
            },
            _ = shutdown.recv(), if !shutdown.seen() => connection.graceful_shutdown(),
            _ = idle.as_mut() => {
                let activity = watch.activity();
                if activity == activity_seen && !connection.has_streams() {
                    connection.graceful_shutdown();
                }
                activity_seen = activity;
                idle.as_mut().reset((Instant::now() + idle_every).into());
            }
        }
    }
}

/// Counts and logs a connection closed for flooding (`what`: with what).
fn flooded(shared: &Shared, info: &ConnInfo, what: &str) {
    metrics::count(Counter::Http2Floods, 1);
    shared.log.log(
        LogLevel::Warning,
        format!(
            "HTTP/2 connection from {} closed: a flood {what}",
            info.peer
        ),
    );
}

fn debug(shared: &Shared, message: String) {
    shared.log.log(LogLevel::Debug, message);
}

/// One stream, from its request head to the end of its response.
struct Stream {
    conn: Arc<Conn>,
    info: Arc<ConnInfo>,
    shared: Arc<Shared>,
    started: Instant,
}

/// Why a request body was not received.
enum BodyFailure {
    /// Answer with this error.
    Refuse(HttpError),
    /// It could not be stored (answered 500).
    Storage(io::Error),
    /// The client reset the stream or left.
    Gone,
}

impl Stream {
    async fn run(self, request: http::Request<RecvStream>, mut respond: SendResponse<Bytes>) {
        let (parts, mut recv) = request.into_parts();
        let mut text = Vec::with_capacity(256);
        let head = match self.head(&parts, &mut text) {
            Ok(head) => head,
            Err(err) => return self.refuse(respond, &err, None, &text).await,
        };
        let body = match self.body(&mut recv, &head, &mut respond).await {
            Ok(body) => body,
            Err(BodyFailure::Refuse(err)) => {
                return self.refuse(respond, &err, Some(&head), &[]).await
            }
            Err(BodyFailure::Storage(err)) => {
                self.shared.log.log(
                    LogLevel::Error,
                    format!("Could not buffer a request body: {err}"),
                );
                let page = error_page(
                    Version::Http2,
                    500,
                    "Internal Server Error",
                    "The request body could not be stored",
                    self.shared.config.ident.as_deref(),
                );
                return self.answer(respond, page, 500, Some(&head), &[]).await;
            }
            Err(BodyFailure::Gone) => return,
        };
        drop(recv);
        let head_request = head.is_head();
        let responder = Responder::new(
            self.conn.clone(),
            self.shared.output_limits,
            self.shared.budgets.clone(),
        )
        .consumer_only();
        let exchange = Exchange {
            head,
            body,
            started: self.started,
            keep_alive: !self.info.server_closing(),
        };
        let responder = hand_over(&self.shared, &self.info, responder, exchange);
        let stall = self.shared.config.channel_timeout;
        let mut relay = Relay::new(respond, head_request, stall);
        let in_flight = FailOnDrop(&responder);
        let relayed = relay.run(&responder).await;
        std::mem::forget(in_flight);
        if relayed.is_err() {
            responder.fail();
        }
    }

    /// The request head, written as HTTP/1.1 into `text` and parsed by the HTTP/1.1
    /// rules.
    fn head(
        &self,
        parts: &http::request::Parts,
        text: &mut Vec<u8>,
    ) -> Result<RequestHead, HttpError> {
        let target = parts
            .uri
            .path_and_query()
            .map_or(&b""[..], |p| p.as_str().as_bytes());
        let authority = parts.uri.authority().map(|a| a.as_str().as_bytes());
        let fields = parts
            .headers
            .iter()
            .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()));
        request_head(
            text,
            parts.method.as_str().as_bytes(),
            target,
            authority,
            fields,
        )?;
        let mut buf = BytesMut::from(&text[..]);
        let mut head = HeadParser::new()
            .parse(&mut buf, &self.shared.head_limits)?
            .ok_or_else(|| HttpError::new(ErrorKind::BadRequest, "Incomplete request head"))?;
        if head.framing == BodyFraming::Chunked {
            return Err(HttpError::new(
                ErrorKind::BadRequest,
                "Transfer-Encoding is not allowed in HTTP/2",
            ));
        }
        head.version = Version::Http2;
        head.keep_alive = true;
        Ok(head)
    }

    /// Receives the whole body (answering `expect: 100-continue` first), giving its
    /// flow-control window back as it is stored.
    async fn body(
        &self,
        recv: &mut RecvStream,
        head: &RequestHead,
        respond: &mut SendResponse<Bytes>,
    ) -> Result<Body, BodyFailure> {
        let declared = match head.framing {
            BodyFraming::Length(n) => Some(n),
            _ if head.field(b"content-length").is_some() => Some(0),
            BodyFraming::None | BodyFraming::Chunked => None,
        };
        if recv.is_end_stream() {
            return match declared {
                Some(n) if n > 0 => Err(BodyFailure::Refuse(length_mismatch())),
                _ => Ok(Body::Empty),
            };
        }
        if head.expect_continue {
            let mut interim = http::Response::new(());
            *interim.status_mut() = http::StatusCode::CONTINUE;
            respond
                .send_informational(interim)
                .map_err(|_| BodyFailure::Gone)?;
        }
        let config = &self.shared.config;
        let mut spool = BodySpool::new(config.inbuf_overflow, declared, &self.shared.budgets);
        let started = Instant::now();
        loop {
            let received = spool.len();
            // Without a minimum rate, a body must not pause for `channel_timeout`.
            let deadline = body_deadline(config, started, received)
                .unwrap_or_else(|| Instant::now() + config.channel_timeout);
            let data = tokio::select! {
                data = poll_fn(|cx| recv.poll_data(cx)) => data,
                _ = sleep_until(deadline.into()) => {
                    return Err(BodyFailure::Refuse(HttpError::new(
                        ErrorKind::RequestTimeout,
                        "The request body was not received fast enough",
                    )));
                }
            };
            let data = match data {
                None => break,
                Some(Ok(data)) => data,
                Some(Err(_)) => return Err(BodyFailure::Gone),
            };
            let total = received + data.len() as u64;
            if total > config.max_request_body_size {
                return Err(BodyFailure::Refuse(HttpError::new(
                    ErrorKind::BodyTooLarge,
                    format!(
                        "The request body exceeds the limit of {} bytes",
                        config.max_request_body_size
                    ),
                )));
            }
            if declared.is_some_and(|n| total > n) {
                return Err(BodyFailure::Refuse(length_mismatch()));
            }
            spool.append(&data).map_err(BodyFailure::Storage)?;
            spool.end_batch().map_err(BodyFailure::Storage)?;
            let _ = recv.flow_control().release_capacity(data.len());
        }
        if declared.is_some_and(|n| n != spool.len()) {
            return Err(BodyFailure::Refuse(length_mismatch()));
        }
        spool.finish().map_err(BodyFailure::Storage)
    }

    /// Answers with the error page for `err` (no log line: the HTTP/1.1 rules decided
    /// it); `head` or else `received` (the request as far as it was written) names the
    /// request in the access log.
    async fn refuse(
        &self,
        respond: SendResponse<Bytes>,
        err: &HttpError,
        head: Option<&RequestHead>,
        received: &[u8],
    ) {
        let page = protocol_error_page(
            Some(Version::Http2),
            err,
            self.shared.config.ident.as_deref(),
        );
        self.answer(respond, page, err.kind.status(), head, received)
            .await;
    }

    /// Answers with a page the server wrote, and reports it to the metrics and the
    /// access log as the HTTP/1.1 connection reports its own pages.
    async fn answer(
        &self,
        respond: SendResponse<Bytes>,
        page: Vec<u8>,
        status: u16,
        head: Option<&RequestHead>,
        received: &[u8],
    ) {
        let body_bytes = (page.len() - head_len(&page)) as u64;
        let mut relay = Relay::new(respond, false, self.shared.config.channel_timeout);
        let sent = match relay.pass(Bytes::from(page)).await {
            Ok(()) => relay.end().await,
            Err(gone) => Err(gone),
        };
        let observer = &self.shared.observer;
        if observer.active() {
            let facts = PageFacts {
                head,
                received,
                version: Version::Http2.as_str(),
                status,
                body_bytes,
            };
            let outcome = match sent {
                Ok(()) => Outcome::KeptAlive,
                Err(StreamGone) => Outcome::Aborted,
            };
            observer.page_sent(&facts, &self.info, self.started, outcome);
        }
    }
}

fn length_mismatch() -> HttpError {
    HttpError::new(
        ErrorKind::BadRequest,
        "The request body does not match its Content-Length",
    )
}

/// Where a response is on its stream.
enum Out {
    /// Nothing sent yet.
    Head(SendResponse<Bytes>),
    /// The head is out; the body goes here.
    Body(SendStream<Bytes>),
    /// END_STREAM or RST_STREAM sent.
    Ended,
}

/// The response's bytes, read back and sent as frames.
struct Relay {
    out: Out,
    reader: ResponseReader,
    pieces: Vec<Piece>,
    /// A client that gives no window for this long is given up on.
    stall: Duration,
}

/// The stream cannot take the response (reset, gone, or stalled).
#[derive(Debug)]
struct StreamGone;

impl Relay {
    fn new(respond: SendResponse<Bytes>, head_request: bool, stall: Duration) -> Relay {
        Relay {
            out: Out::Head(respond),
            reader: ResponseReader::new(head_request),
            pieces: Vec::new(),
            stall,
        }
    }

    /// Follows `responder` to the response's end.
    async fn run(&mut self, responder: &Responder) -> Result<(), StreamGone> {
        loop {
            let step = tokio::select! {
                step = responder.next_step() => step,
                _ = self.reset() => return Err(StreamGone),
            };
            match step {
                Step::Write(batch) => {
                    let mut in_memory = 0usize;
                    for chunk in batch {
                        match chunk {
                            Chunk::Bytes(bytes) => {
                                in_memory += bytes.len();
                                responder.count_sent(bytes.len() as u64);
                                self.pass(bytes).await?;
                            }
                            Chunk::File(segment) => self.pass_file(&segment, responder).await?,
                            Chunk::Gathered(_) | Chunk::Spilled(_) => return Err(StreamGone),
                        }
                    }
                    responder.batch_written(in_memory);
                }
                Step::Done { .. } => return self.end().await,
                Step::Failed => {
                    self.cancel(Reason::INTERNAL_ERROR);
                    return Ok(());
                }
            }
        }
    }

    /// Waits until the client resets the stream.
    async fn reset(&mut self) {
        let _ = match &mut self.out {
            Out::Head(respond) => poll_fn(|cx| respond.poll_reset(cx)).await,
            Out::Body(stream) => poll_fn(|cx| stream.poll_reset(cx)).await,
            Out::Ended => std::future::pending().await,
        };
    }

    async fn pass_file(
        &mut self,
        segment: &FileSegment,
        responder: &Responder,
    ) -> Result<(), StreamGone> {
        let mut done = 0u64;
        while done < segment.len {
            let want = (segment.len - done).min(FILE_READ as u64) as usize;
            let mut buf = vec![0u8; want];
            let n = segment
                .file
                .read_at(&mut buf, segment.offset + done)
                .map_err(|_| StreamGone)?;
            if n == 0 {
                // The file ended before its announced length: the body is cut short.
                return Err(StreamGone);
            }
            buf.truncate(n);
            done += n as u64;
            responder.count_sent(n as u64);
            self.pass(Bytes::from(buf)).await?;
        }
        Ok(())
    }

    /// Reads `bytes` of the response and sends what they complete.
    async fn pass(&mut self, bytes: Bytes) -> Result<(), StreamGone> {
        self.reader
            .push(bytes, &mut self.pieces)
            .map_err(|_| StreamGone)?;
        // Taken out while sending (which needs `self`), given back for the next call.
        let mut pieces = std::mem::take(&mut self.pieces);
        let count = pieces.len();
        let complete = self.reader.complete();
        for (i, piece) in pieces.drain(..).enumerate() {
            let last = i + 1 == count && complete;
            match piece {
                Piece::Head(head) => self.send_head(head, last)?,
                Piece::Data(data) => self.send_data(data, last).await?,
            }
        }
        self.pieces = pieces;
        Ok(())
    }

    fn send_head(&mut self, head: ResponseHead, end: bool) -> Result<(), StreamGone> {
        let Out::Head(respond) = &mut self.out else {
            return Err(StreamGone);
        };
        let mut response = http::Response::new(());
        *response.status_mut() = http::StatusCode::from_u16(head.status).map_err(|_| StreamGone)?;
        let headers = response.headers_mut();
        for (name, value) in head.fields() {
            // The application side validated every field; one `http` still refuses is
            // left out rather than failing the response.
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name),
                http::HeaderValue::from_maybe_shared(head.shared(value)),
            ) {
                headers.append(name, value);
            }
        }
        let stream = respond
            .send_response(response, end)
            .map_err(|_| StreamGone)?;
        self.out = if end { Out::Ended } else { Out::Body(stream) };
        Ok(())
    }

    /// Sends `data` as the window allows it, waiting at most `stall` for each opening.
    async fn send_data(&mut self, mut data: Bytes, end: bool) -> Result<(), StreamGone> {
        let Out::Body(stream) = &mut self.out else {
            return if data.is_empty() {
                Ok(())
            } else {
                Err(StreamGone)
            };
        };
        while !data.is_empty() {
            stream.reserve_capacity(data.len());
            let room = loop {
                let room = stream.capacity();
                if room > 0 {
                    break room;
                }
                match timeout(self.stall, poll_fn(|cx| stream.poll_capacity(cx))).await {
                    Ok(Some(Ok(_))) => continue,
                    Ok(Some(Err(_)) | None) => return Err(StreamGone),
                    Err(_stalled) => {
                        stream.send_reset(Reason::CANCEL);
                        return Err(StreamGone);
                    }
                }
            };
            let piece = data.split_to(room.min(data.len()));
            stream
                .send_data(piece, end && data.is_empty())
                .map_err(|_| StreamGone)?;
        }
        if end {
            self.out = Out::Ended;
        }
        Ok(())
    }

    /// The response is over: END_STREAM if it was complete, else RST_STREAM so the
    /// client knows it was cut short.
    async fn end(&mut self) -> Result<(), StreamGone> {
        match &mut self.out {
            Out::Ended => Ok(()),
            Out::Body(stream) if self.reader.complete() => {
                let sent = stream.send_data(Bytes::new(), true);
                self.out = Out::Ended;
                sent.map_err(|_| StreamGone)
            }
            Out::Body(_) => {
                // RST_STREAM drops what h2 still holds of the stream: let the connection
                // task write the body's last bytes first (best effort: a client whose
                // window or socket is full loses them, as it would lose the stream).
                for _ in 0..RESET_YIELDS {
                    tokio::task::yield_now().await;
                }
                self.cancel(Reason::INTERNAL_ERROR);
                Ok(())
            }
            Out::Head(_) => {
                self.cancel(Reason::INTERNAL_ERROR);
                Ok(())
            }
        }
    }

    fn cancel(&mut self, reason: Reason) {
        match &mut self.out {
            Out::Head(respond) => respond.send_reset(reason),
            Out::Body(stream) => stream.send_reset(reason),
            Out::Ended => {}
        }
        self.out = Out::Ended;
    }
}

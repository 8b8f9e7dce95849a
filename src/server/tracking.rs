//! Follows one request from its head to its response's last byte, for the metrics and
//! the access log. The connection task starts a `Tracked` when it dispatches a request
//! (sharing the head's bytes, with where the log format's fields are in them), the
//! application side adds
//! the status and what only it knows (REMOTE_ADDR after proxy rules, response headers,
//! environ values), and the `Responder` ends it exactly once: when the last byte is
//! written or when the response is abandoned.
//!
//! No formatting or I/O happens here: the record goes to the access log's writer
//! thread; the metrics are relaxed atomics.

use std::time::{Instant, SystemTime};

use super::conn_info::{ConnInfo, Peer};
use crate::http::RequestHead;
use crate::observe::access_format::{Format, Outcome, Record, RequestText};
use crate::observe::access_log::AccessLog;
use crate::observe::metrics::{self, Gauge};
use crate::observe::Handler;

/// What a server reports finished requests to.
pub struct Observer {
    access: Option<AccessLog>,
}

impl Observer {
    pub fn new(access: Option<AccessLog>) -> Observer {
        Observer { access }
    }

    /// Whether anything wants to hear of requests (else nothing is tracked).
    pub fn active(&self) -> bool {
        self.access.is_some() || metrics::enabled()
    }

    pub fn format(&self) -> Option<&Format> {
        self.access.as_ref().map(AccessLog::format)
    }

    pub fn access_log(&self) -> Option<&AccessLog> {
        self.access.as_ref()
    }

    /// Starts following a request that is about to be dispatched.
    pub fn begin(
        &self,
        head: &RequestHead,
        info: &ConnInfo,
        started: Instant,
        handler: Handler,
    ) -> Tracked {
        metrics::gauge_add(Gauge::InFlight, 1);
        Tracked {
            started,
            handler,
            peer: info.peer.clone(),
            method: metrics::method_index(head.method()),
            status: 0,
            head_len: 0,
            // The head's bytes are shared, not copied: one allocation, the box.
            details: self.format().map(|format| {
                Box::new(Record {
                    // Set when the request ends (one clock read then, none now).
                    started: SystemTime::UNIX_EPOCH,
                    duration: Default::default(),
                    // Set by the application side (REMOTE_ADDR as the application saw it),
                    // else from `peer` when the request ends.
                    remote_addr: Default::default(),
                    request: RequestText::new(
                        head.bytes().clone(),
                        head.method_span(),
                        head.target_span(),
                        format
                            .request_headers()
                            .iter()
                            .map(|name| head.field_span(name.as_bytes())),
                    ),
                    version: head.version.as_str(),
                    status: None,
                    body_bytes: 0,
                    outcome: Outcome::Closed,
                    handler,
                    pid: std::process::id(),
                    response_headers: Vec::new(),
                    environ: Vec::new(),
                })
            }),
        }
    }

    /// A response ended: `sent` bytes went out in all.
    pub fn finished(&self, tracked: Tracked, outcome: Outcome, sent: u64) {
        metrics::gauge_add(Gauge::InFlight, -1);
        let duration = tracked.started.elapsed();
        metrics::request_done(tracked.handler, tracked.method, tracked.status, duration);
        let (Some(log), Some(mut record)) = (&self.access, tracked.details) else {
            return;
        };
        record.duration = duration;
        record.started = wall_clock_before(duration);
        if record.remote_addr.is_empty() {
            record.remote_addr = tracked.peer.remote_addr().as_bytes().into();
        }
        record.status = (tracked.status != 0).then_some(tracked.status);
        record.body_bytes = sent.saturating_sub(tracked.head_len);
        record.outcome = outcome;
        log.push(record);
    }

    /// A response the connection task wrote itself (an error page for a request that
    /// never reached the application): counted and logged like any other.
    pub fn page_sent(
        &self,
        page: &PageFacts<'_>,
        info: &ConnInfo,
        started: Instant,
        outcome: Outcome,
    ) {
        let duration = started.elapsed();
        let (method, target) = page.method_and_target();
        metrics::request_done(
            Handler::Server,
            metrics::method_index(method),
            page.status,
            duration,
        );
        let (Some(log), Some(format)) = (&self.access, self.format()) else {
            return;
        };
        let headers: Vec<Option<&[u8]>> = format
            .request_headers()
            .iter()
            .map(|name| page.head.and_then(|h| h.field(name.as_bytes())))
            .collect();
        log.push(Box::new(Record {
            started: wall_clock_before(duration),
            duration,
            remote_addr: info.peer.remote_addr().as_bytes().into(),
            request: RequestText::from_parts(method, target, &headers),
            version: page.version,
            status: Some(page.status),
            body_bytes: page.body_bytes,
            outcome,
            handler: Handler::Server,
            pid: std::process::id(),
            response_headers: Vec::new(),
            environ: Vec::new(),
        }));
    }

    /// Flushes and stops the access log.
    pub fn close(&self) {
        if let Some(log) = &self.access {
            log.close();
        }
    }
}

/// An error page the server sent on its own.
pub struct PageFacts<'a> {
    /// The request's head, when one was parsed.
    pub head: Option<&'a RequestHead>,
    /// Otherwise what was received of the request (its first line names it in the log).
    pub received: &'a [u8],
    pub version: &'static str,
    pub status: u16,
    pub body_bytes: u64,
}

impl PageFacts<'_> {
    /// The method and target: the head's, or the first two words of what was received
    /// (a request refused for a bad header still shows what it asked for).
    fn method_and_target(&self) -> (&[u8], &[u8]) {
        if let Some(head) = self.head {
            return (head.method(), head.target());
        }
        let line = self
            .received
            .split(|&b| b == b'\r' || b == b'\n')
            .next()
            .unwrap_or_default();
        let line = &line[..line.len().min(MAX_LOGGED_LINE)];
        let mut words = line.splitn(3, |&b| b == b' ');
        (
            words.next().unwrap_or_default(),
            words.next().unwrap_or_default(),
        )
    }
}

/// The most of an unparsed request line the log keeps.
const MAX_LOGGED_LINE: usize = 8 * 1024;

/// One request being followed.
pub struct Tracked {
    started: Instant,
    handler: Handler,
    /// The client, for the log line when the application never saw the request.
    peer: Peer,
    method: u8,
    /// 0 until the response head is sent.
    status: u16,
    head_len: u64,
    /// The access log's record, when there is an access log (boxed: it moves from the
    /// connection to the responder to the writer's queue as a pointer).
    details: Option<Box<Record>>,
}

impl Tracked {
    /// The response head (`status`, `head_len` bytes) is going out.
    pub fn note_head(&mut self, status: u16, head_len: usize) {
        self.status = status;
        self.head_len = head_len as u64;
    }

    /// The access log's record, to add what the application side knows.
    pub fn details(&mut self) -> Option<&mut Record> {
        self.details.as_deref_mut()
    }
}

/// The wall-clock time `ago` before now.
fn wall_clock_before(ago: std::time::Duration) -> SystemTime {
    let now = SystemTime::now();
    now.checked_sub(ago).unwrap_or(now)
}

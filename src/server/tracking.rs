//! Follows one request from its head to its response's last byte, for the metrics and
//! the access log. The connection task starts a `Tracked` when it dispatches a request
//! (copying from the head only what the log format needs), the application side adds
//! the status and what only it knows (REMOTE_ADDR after proxy rules, response headers,
//! environ values), and the `Responder` ends it exactly once: when the last byte is
//! written or when the response is abandoned.
//!
//! No formatting or I/O happens here: the record goes to the access log's writer
//! thread; the metrics are relaxed atomics.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::conn_info::ConnInfo;
use crate::http::RequestHead;
use crate::observe::access_format::{Format, Outcome, Record};
use crate::observe::access_log::AccessLog;
use crate::observe::metrics::{self, Gauge};

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
    pub fn begin(&self, head: &RequestHead, info: &ConnInfo, started: Instant) -> Tracked {
        metrics::gauge_add(Gauge::InFlight, 1);
        let wall = wall_clock_at(started);
        Tracked {
            started,
            method: metrics::method_index(head.method()),
            status: 0,
            head_len: 0,
            details: self.format().map(|format| {
                Box::new(Record {
                    started: wall,
                    duration: Default::default(),
                    remote_addr: info.peer.remote_addr(),
                    method: head.method().to_vec(),
                    target: head.target().to_vec(),
                    version: head.version.as_str(),
                    status: None,
                    body_bytes: 0,
                    outcome: Outcome::Closed,
                    pid: std::process::id(),
                    request_headers: format
                        .request_headers()
                        .iter()
                        .map(|name| head.field(name.as_bytes()).map(<[u8]>::to_vec))
                        .collect(),
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
        if tracked.status != 0 {
            metrics::request_done(tracked.method, tracked.status, duration);
        }
        let (Some(log), Some(mut record)) = (&self.access, tracked.details) else {
            return;
        };
        record.duration = duration;
        record.status = (tracked.status != 0).then_some(tracked.status);
        record.body_bytes = sent.saturating_sub(tracked.head_len);
        record.outcome = outcome;
        log.push(*record);
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
        let method = page.head.map_or(metrics::METHODS.len() as u8 - 1, |h| {
            metrics::method_index(h.method())
        });
        metrics::request_done(method, page.status, duration);
        let (Some(log), Some(format)) = (&self.access, self.format()) else {
            return;
        };
        let field = |name: &String| {
            page.head
                .and_then(|h| h.field(name.as_bytes()))
                .map(<[u8]>::to_vec)
        };
        log.push(Record {
            started: wall_clock_at(started),
            duration,
            remote_addr: info.peer.remote_addr(),
            method: page.head.map(|h| h.method().to_vec()).unwrap_or_default(),
            target: page.head.map(|h| h.target().to_vec()).unwrap_or_default(),
            version: page.version,
            status: Some(page.status),
            body_bytes: page.body_bytes,
            outcome,
            pid: std::process::id(),
            request_headers: format.request_headers().iter().map(field).collect(),
            response_headers: Vec::new(),
            environ: Vec::new(),
        });
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
    pub version: &'static str,
    pub status: u16,
    pub body_bytes: u64,
}

/// One request being followed.
pub struct Tracked {
    started: Instant,
    method: u8,
    /// 0 until the response head is sent.
    status: u16,
    head_len: u64,
    /// The access log's record, when there is an access log.
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

    pub fn started(&self) -> Instant {
        self.started
    }
}

/// The wall-clock time of `at` (an instant in the recent past).
fn wall_clock_at(at: Instant) -> SystemTime {
    SystemTime::now()
        .checked_sub(at.elapsed())
        .unwrap_or_else(SystemTime::now)
}

/// Shared by the connection tasks of one server.
pub type SharedObserver = Arc<Observer>;

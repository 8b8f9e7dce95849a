//! Stuck requests: which request each worker thread runs, since when, and a thread that
//! looks at them (`dump_slow_requests_after`, `request_timeout`). A request running past
//! the first is logged once with the Python stack of its thread (taken with the GIL,
//! from `sys._current_frames()`); past the second it is answered `504` if nothing of
//! its response went out yet (else its connection is cut) and, in a worker process, the
//! worker asks to be replaced. A Python thread cannot be stopped safely, so in a single
//! process the request keeps running: it is logged and counted.
//!
//! The pool records a request here only when one of the two options is set; the look
//! costs nothing on the request path beyond two uncontended locks. Timeouts are acted
//! on without the GIL (a stuck request may hold it), and a worker tells its supervisor
//! through its pipe from here, not from Python.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::http::request::Version;
use crate::http::response::error_page;
use crate::observe::metrics::{self, Counter};
use crate::server::{EventLog, LogLevel, Request, Responder};

/// Requests that ran past `request_timeout` in this process (for the worker's tick).
pub static TIMED_OUT: AtomicU64 = AtomicU64::new(0);

/// What the monitor looks for.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub dump_after: Option<Duration>,
    pub timeout: Option<Duration>,
}

impl Limits {
    pub fn any(&self) -> bool {
        self.dump_after.is_some() || self.timeout.is_some()
    }

    /// How often to look: a quarter of the shorter limit, within 50 ms and 1 s.
    fn period(&self) -> Duration {
        let shortest = [self.dump_after, self.timeout]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(Duration::from_secs(1));
        (shortest / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }
}

/// The request a thread is running.
struct Current {
    /// Which of the thread's requests this is (a look that took a while acts only if
    /// the thread is still on the same one).
    serial: u64,
    responder: Arc<Responder>,
    /// `METHOD /path` for the log (the query left out).
    label: String,
    version: Version,
    /// When the application was given the request (the time its body took to arrive,
    /// or it waited for a thread, is not the application's).
    started: Instant,
    dumped: bool,
    timed_out: bool,
}

/// One entry per worker thread.
pub struct InFlight {
    limits: Limits,
    slots: Vec<Mutex<Option<Current>>>,
    /// Each thread's Python thread identifier (`threading.get_ident()`).
    idents: Vec<AtomicU64>,
    stop: Mutex<bool>,
    wake: Condvar,
    given_up: Vec<AtomicBool>,
    serials: AtomicU64,
    /// The monitor thread, joined when it is stopped.
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Where a worker tells its supervisor that a request timed out (a pipe), without
    /// the GIL: a stuck request may hold it.
    report_fd: Option<RawFd>,
}

/// A slow request found by a look: what its dump needs.
struct Slow {
    index: usize,
    serial: u64,
    label: String,
    elapsed: Duration,
}

impl InFlight {
    /// `report_fd`: the supervisor's pipe (a worker), else None.
    pub fn new(threads: usize, limits: Limits, report_fd: Option<RawFd>) -> InFlight {
        InFlight {
            limits,
            slots: (0..threads).map(|_| Mutex::new(None)).collect(),
            idents: (0..threads).map(|_| AtomicU64::new(0)).collect(),
            stop: Mutex::new(false),
            wake: Condvar::new(),
            given_up: (0..threads).map(|_| AtomicBool::new(false)).collect(),
            serials: AtomicU64::new(0),
            thread: Mutex::new(None),
            report_fd,
        }
    }

    fn slot(&self, index: usize) -> Option<MutexGuard<'_, Option<Current>>> {
        self.slots
            .get(index)
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Thread `index` (whose Python identifier this call records) starts `request`.
    pub fn begin(&self, index: usize, request: &Request) {
        // SAFETY: pthread_self has no preconditions; on Linux it is the value CPython
        // uses as the thread's identifier.
        let ident = unsafe { libc::pthread_self() } as u64;
        if let Some(i) = self.idents.get(index) {
            i.store(ident, Ordering::Relaxed);
        }
        let target = request.head.target();
        let path = target.split(|&b| b == b'?').next().unwrap_or_default();
        let mut label = String::from_utf8_lossy(request.head.method()).into_owned();
        label.push(' ');
        label.push_str(&String::from_utf8_lossy(&path[..path.len().min(200)]));
        let serial = self.serials.fetch_add(1, Ordering::Relaxed);
        if let Some(mut slot) = self.slot(index) {
            *slot = Some(Current {
                serial,
                responder: request.responder.clone(),
                label,
                version: request.head.version,
                started: Instant::now(),
                dumped: false,
                timed_out: false,
            });
        }
    }

    /// Thread `index` is done with its request.
    pub fn end(&self, index: usize) {
        if let Some(mut slot) = self.slot(index) {
            *slot = None;
            // Cleared under the slot's lock, which a timeout holds while it acts.
            if let Some(g) = self.given_up.get(index) {
                g.store(false, Ordering::Relaxed);
            }
        }
    }

    /// Whether thread `index` runs a request that timed out (a shutdown need not wait
    /// for it).
    pub fn given_up(&self, index: usize) -> bool {
        self.given_up
            .get(index)
            .is_some_and(|g| g.load(Ordering::Relaxed))
    }

    /// Starts the thread that looks at the requests.
    pub fn start_monitor(
        self: &Arc<Self>,
        log: Arc<dyn EventLog>,
        ident: Option<String>,
    ) -> std::io::Result<()> {
        let this = self.clone();
        let handle = std::thread::Builder::new()
            .name("tapster-monitor".into())
            .spawn(move || this.monitor(&*log, ident.as_deref()))?;
        *self.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(())
    }

    /// Stops the monitor and waits for it (call without the GIL: it may be waiting for
    /// it to read a stack).
    pub fn stop_monitor(&self) {
        *self.stop.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.wake.notify_all();
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }

    fn stopped(&self) -> bool {
        *self.stop.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn monitor(&self, log: &dyn EventLog, ident: Option<&str>) {
        let period = self.limits.period();
        loop {
            let stop = self.stop.lock().unwrap_or_else(|e| e.into_inner());
            let (stop, _) = self
                .wake
                .wait_timeout_while(stop, period, |stop| !*stop)
                .unwrap_or_else(|e| e.into_inner());
            if *stop {
                return;
            }
            drop(stop);
            // Timeouts first, and without the GIL: a request stuck holding the GIL
            // must still be given up on.
            let slow: Vec<Slow> = (0..self.slots.len())
                .filter_map(|index| self.look(index, log, ident))
                .collect();
            for s in slow {
                if self.stopped() {
                    return;
                }
                self.dump(&s, log);
            }
        }
    }

    /// Checks thread `index`'s request against both limits: acts on a timeout at once
    /// (under the slot's lock, so the thread cannot move on meanwhile), and returns a
    /// request to dump.
    fn look(&self, index: usize, log: &dyn EventLog, ident: Option<&str>) -> Option<Slow> {
        let mut slot = self.slot(index)?;
        let current = slot.as_mut()?;
        let elapsed = current.started.elapsed();
        let over = |limit: Option<Duration>| limit.is_some_and(|l| elapsed >= l);
        if !current.timed_out && over(self.limits.timeout) {
            current.timed_out = true;
            self.timed_out(index, current, elapsed, log, ident);
        }
        if current.dumped || !over(self.limits.dump_after) {
            return None;
        }
        current.dumped = true;
        Some(Slow {
            index,
            serial: current.serial,
            label: current.label.clone(),
            elapsed,
        })
    }

    /// Logs a slow request with its thread's Python stack (taken with the GIL, so
    /// outside the slot's lock), unless the thread has moved on meanwhile.
    fn dump(&self, slow: &Slow, log: &dyn EventLog) {
        metrics::count(Counter::SlowRequests, 1);
        let thread_ident = self.idents[slow.index].load(Ordering::Relaxed);
        let stack = python_stack(thread_ident)
            .unwrap_or_else(|err| format!("  (its stack could not be read: {err})\n"));
        let same = self
            .slot(slow.index)
            .is_some_and(|s| s.as_ref().is_some_and(|c| c.serial == slow.serial));
        if !same {
            return;
        }
        log.log(
            LogLevel::Warning,
            format!(
                "Slow request: {} has been running for {:.1} s (thread tapster-{}); \
                 its Python stack, most recent call last:\n{}",
                slow.label,
                slow.elapsed.as_secs_f64(),
                slow.index,
                stack.trim_end()
            ),
        );
    }

    /// A request ran past `request_timeout` (called with its slot locked).
    fn timed_out(
        &self,
        index: usize,
        current: &Current,
        elapsed: Duration,
        log: &dyn EventLog,
        ident: Option<&str>,
    ) {
        metrics::count(Counter::RequestTimeouts, 1);
        TIMED_OUT.fetch_add(1, Ordering::Relaxed);
        let limit = self.limits.timeout.unwrap_or_default().as_secs_f64();
        let prefix = format!(
            "Request {} exceeded request_timeout ({limit} s) after {:.1} s",
            current.label,
            elapsed.as_secs_f64()
        );
        let Some(fd) = self.report_fd else {
            log.log(
                LogLevel::Warning,
                format!(
                    "{prefix}; a Python thread cannot be stopped safely, so it keeps running \
                     (with workers, its worker would be replaced)"
                ),
            );
            return;
        };
        self.given_up[index].store(true, Ordering::Relaxed);
        let page = error_page(
            current.version,
            504,
            "Gateway Timeout",
            "The application did not answer in time",
            ident,
        );
        let head_len = crate::http::response::head_len(&page);
        let answered = current
            .responder
            .answer_instead(Bytes::from(page), 504, head_len);
        if !answered {
            current.responder.fail();
        }
        let what = if answered {
            "answered 504 Gateway Timeout"
        } else {
            "its response had started, so its connection was cut"
        };
        log.log(
            LogLevel::Warning,
            format!("{prefix}: {what}; this worker is to be replaced"),
        );
        tell_supervisor(fd);
    }
}

/// Tells the supervisor (one line on the worker's pipe) that a request timed out. A
/// full or closed pipe is ignored: the supervisor is gone or has been told already.
fn tell_supervisor(fd: RawFd) {
    const LINE: &[u8] = b"timeout\n";
    // SAFETY: writes from a static buffer to a descriptor the worker keeps open for the
    // engine's lifetime; a short or failed write has no other effect.
    let _ = unsafe { libc::write(fd, LINE.as_ptr().cast(), LINE.len()) };
}

/// The Python stack of the thread with identifier `ident`, formatted as a traceback.
fn python_stack(ident: u64) -> PyResult<String> {
    Python::attach(|py| {
        let frames = py.import("sys")?.call_method0("_current_frames")?;
        let frames = frames.cast::<PyDict>()?;
        let Some(frame) = frames.get_item(ident)? else {
            return Ok("  (the thread has no Python frame)\n".to_owned());
        };
        let lines = py
            .import("traceback")?
            .call_method1("format_stack", (frame,))?;
        let text: String = ""
            .into_pyobject(py)?
            .call_method1("join", (lines,))?
            .extract()?;
        Ok(text)
    })
}

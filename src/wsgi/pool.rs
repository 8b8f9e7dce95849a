//! The pool of Python worker threads (`threads`, default 4).
//!
//! One thread at a time drains the queue: it takes the GIL once and runs every ready
//! job before letting go, so a busy server pays one GIL hand-off per batch, not per
//! request, and idle threads never fight over the GIL. The other threads stand by. If
//! every draining thread has been inside the same job for longer than `STALL` (the
//! application is blocked: sleeping, waiting on a database), a standby thread joins in,
//! up to `threads` at once, so blocking applications still get `threads`-way
//! concurrency.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use super::response::{AppContext, Exchange};
use crate::server::{Dispatcher, EventLog, LogLevel, Request};

/// How long the draining threads may be stuck in one job before another thread helps.
const STALL: Duration = Duration::from_millis(2);
/// Stall checks without queued work before a standby thread goes back to sleep.
const STANDBY_LINGER: u32 = 50;
/// The queue-depth warning is repeated at most this often.
const DEPTH_WARNING_INTERVAL: Duration = Duration::from_secs(5);

/// Work for a Python thread.
pub enum Job {
    /// A new request.
    Request(Request),
    /// A response parked while its client caught up.
    Resume(Box<Exchange>),
}

struct State {
    queue: VecDeque<Job>,
    /// Threads holding the GIL and draining the queue.
    running: usize,
    /// Threads waiting without a timeout.
    idle: usize,
    /// One waiting thread polls for stalls while work is queued.
    standby: bool,
    shutdown: bool,
    last_depth_warning: Option<Instant>,
}

/// The queue and the bookkeeping shared by the pool's threads and the I/O side.
pub struct PoolShared {
    state: Mutex<State>,
    work: Condvar,
    /// Per thread: when its current job started (nanoseconds since `epoch`, 0 = none).
    job_started: Vec<AtomicU64>,
    epoch: Instant,
    log: Arc<dyn EventLog>,
}

impl PoolShared {
    pub fn new(threads: usize, log: Arc<dyn EventLog>) -> PoolShared {
        PoolShared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                running: 0,
                idle: 0,
                standby: false,
                shutdown: false,
                last_depth_warning: None,
            }),
            work: Condvar::new(),
            job_started: (0..threads).map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
            log,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now_nanos(&self) -> u64 {
        // +1 so that 0 keeps meaning "no job".
        self.epoch.elapsed().as_nanos() as u64 + 1
    }

    /// Queues a job and wakes a thread if none is draining, or a standby if none is
    /// watching for stalls.
    pub fn submit(&self, job: Job) {
        let mut state = self.lock();
        state.queue.push_back(job);
        if state.running == 0 {
            self.work.notify_one();
        } else if !state.standby && state.idle > 0 {
            // Someone must watch for the draining threads getting stuck.
            self.work.notify_one();
        }
        if state.running == self.job_started.len() && self.all_stuck() {
            let now = Instant::now();
            let due = state
                .last_depth_warning
                .is_none_or(|t| now.duration_since(t) >= DEPTH_WARNING_INTERVAL);
            if due {
                state.last_depth_warning = Some(now);
                let depth = state.queue.len();
                drop(state);
                self.log
                    .log_queue(LogLevel::Warning, format!("Task queue depth is {depth}"));
            }
        }
    }

    /// At least one thread is draining, and every draining thread has been inside its
    /// current job for longer than `STALL` (the application is blocked, not busy
    /// with many short requests).
    fn all_stuck(&self) -> bool {
        let now = self.now_nanos();
        let stall = STALL.as_nanos() as u64;
        let mut draining = 0;
        for slot in &self.job_started {
            let started = slot.load(Ordering::Relaxed);
            if started == 0 {
                continue;
            }
            if now.saturating_sub(started) < stall {
                return false;
            }
            draining += 1;
        }
        draining > 0
    }

    /// Blocks (GIL released) until this thread should start draining; `None` at shutdown.
    fn wait_for_work(&self, index: usize) -> Option<Job> {
        let mut state = self.lock();
        loop {
            if !state.queue.is_empty() && (state.running == 0 || self.all_stuck()) {
                state.running += 1;
                self.job_started[index].store(self.now_nanos(), Ordering::Relaxed);
                return state.queue.pop_front();
            }
            if state.shutdown && state.queue.is_empty() {
                return None;
            }
            if !state.standby && (!state.queue.is_empty() || state.running > 0) {
                // Watch for stalls while others drain; linger a while after the queue
                // empties so a busy server does not wake a new standby per request.
                state.standby = true;
                let mut quiet = 0;
                while quiet < STANDBY_LINGER && !state.shutdown {
                    state = self
                        .work
                        .wait_timeout(state, STALL)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    if !state.queue.is_empty() && (state.running == 0 || self.all_stuck()) {
                        break;
                    }
                    if state.queue.is_empty() {
                        quiet += 1;
                    }
                }
                state.standby = false;
            } else {
                state.idle += 1;
                state = self.work.wait(state).unwrap_or_else(|e| e.into_inner());
                state.idle -= 1;
            }
        }
    }

    /// The next job for a thread that is already draining; `None` (and the thread stops
    /// draining) when the queue is empty.
    fn next_job(&self, index: usize) -> Option<Job> {
        let mut state = self.lock();
        match state.queue.pop_front() {
            Some(job) => {
                self.job_started[index].store(self.now_nanos(), Ordering::Relaxed);
                Some(job)
            }
            None => {
                self.job_started[index].store(0, Ordering::Relaxed);
                state.running -= 1;
                if state.shutdown {
                    self.work.notify_all();
                }
                None
            }
        }
    }

    fn shutdown(&self) {
        self.lock().shutdown = true;
        self.work.notify_all();
    }
}

impl Dispatcher for PoolShared {
    fn dispatch(&self, request: Request) {
        self.submit(Job::Request(request));
    }
}

/// The running threads.
pub struct Pool {
    shared: Arc<PoolShared>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    pub fn start(shared: Arc<PoolShared>, ctx: Arc<AppContext>) -> std::io::Result<Pool> {
        let mut threads = Vec::with_capacity(shared.job_started.len());
        for index in 0..shared.job_started.len() {
            let shared = shared.clone();
            let ctx = ctx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("tapster-{index}"))
                .spawn(move || worker(index, &shared, &ctx))?;
            threads.push(handle);
        }
        Ok(Pool { shared, threads })
    }

    /// Lets queued jobs finish, then stops the threads; waits up to `timeout` for them.
    /// Returns the number of threads still busy (stuck in the application).
    pub fn shutdown(self, timeout: Duration) -> usize {
        self.shared.shutdown();
        let deadline = Instant::now() + timeout;
        let mut busy = 0;
        for handle in self.threads {
            while !handle.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if handle.is_finished() {
                let _ = handle.join();
            } else {
                busy += 1;
            }
        }
        busy
    }
}

fn worker(index: usize, shared: &PoolShared, ctx: &Arc<AppContext>) {
    Python::attach(|py| {
        while let Some(first) = py.detach(|| shared.wait_for_work(index)) {
            let mut job = first;
            loop {
                run(py, ctx, job);
                match shared.next_job(index) {
                    Some(next) => job = next,
                    None => break,
                }
            }
        }
    });
}

fn run(py: Python<'_>, ctx: &Arc<AppContext>, job: Job) {
    let responder = match &job {
        Job::Request(request) => request.responder.clone(),
        Job::Resume(exchange) => exchange.responder(py),
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match job {
        Job::Request(request) => ctx.handle_request(py, request),
        Job::Resume(exchange) => ctx.resume(py, exchange),
    }));
    if outcome.is_err() {
        ctx.loggers.log(
            py,
            LogLevel::Error,
            "internal error while serving a request (a bug in Tapster); the connection was dropped",
        );
        responder.fail();
    }
}

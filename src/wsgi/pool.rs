//! The pool of Python worker threads (`threads`, default 4).
//!
//! One thread at a time drains the queue: it takes the GIL once and runs every ready
//! job before letting go, so a busy server pays one GIL hand-off per batch, not per
//! request, and idle threads never fight over the GIL. An I/O thread that queues work
//! while nobody drains wakes a worker only when it is about to sleep itself (or a batch
//! has built up), so a burst of requests costs one wake-up.
//!
//! A small watchdog thread ticks every `STALL` while the pool is busy. If every
//! draining thread has been inside its current job for longer than that (the
//! application is blocked: sleeping, waiting on a database) and work is waiting, it
//! recruits another worker, up to `threads` at once, so blocking applications still get
//! `threads`-way concurrency.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use super::monitor::InFlight;
use crate::observe::metrics::{self, Gauge};
use crate::server::{Dispatcher, EventLog, LogLevel, Request, Responder};

/// The watchdog's period: a draining thread found blocked (sleeping, waiting on I/O)
/// in the same job at two successive ticks gets help.
const STALL: Duration = Duration::from_millis(2);
/// Ticks a draining thread may spend in one job while running (busy, or just waiting
/// for a CPU) before another thread helps anyway, so short requests are not stuck
/// behind a long one (they then share the GIL, as under any threaded server).
const LONG_JOB_TICKS: u32 = 10;
/// Requests queued by an I/O thread before it wakes a worker without waiting to sleep.
const DEFERRED_WAKE_LIMIT: usize = 64;
/// The watchdog's period while nothing waits in the queue.
const QUIET_TICK: Duration = Duration::from_millis(10);
/// The watchdog sleeps until woken after this long without any draining thread.
const WATCHDOG_IDLE: Duration = Duration::from_secs(1);
/// The queue-depth warning is repeated at most this often.
const DEPTH_WARNING_INTERVAL: Duration = Duration::from_secs(5);

/// Runs new requests: the application side, as far as the pool knows it.
pub trait Runner: Send + Sync + 'static {
    fn run(this: &Arc<Self>, py: Python<'_>, request: Request);
}

/// Work that needs the GIL, from whoever submits it.
pub type Work = Box<dyn FnOnce(Python<'_>) + Send>;

/// Work for a Python thread.
pub enum Job {
    /// A new request, for the `Runner`.
    Request(Request),
    /// More of a response already started (a parked iterator resumed once its client
    /// caught up): its responder fails if the work panics.
    Continue {
        responder: Arc<Responder>,
        work: Work,
    },
    /// Deferred work that needs the GIL (closing a file after sendfile).
    Call(Work),
}

struct State {
    queue: VecDeque<Job>,
    /// Threads holding the GIL and draining the queue.
    running: usize,
    /// Threads waiting for work, most recently idle last: waking the last one keeps
    /// a single hot thread (caches, Python thread state) doing the work.
    idle: Vec<usize>,
    /// Threads unparked and not yet back at the queue: more wake-ups would be wasted.
    waking: usize,
    /// Extra drainers the watchdog asked for (the application is blocked).
    recruits: usize,
    /// The watchdog is in its long sleep and must be woken when work arrives.
    watchdog_asleep: bool,
    shutdown: bool,
    last_depth_warning: Option<Instant>,
}

/// The queue and the bookkeeping shared by the pool's threads and the I/O side.
pub struct PoolShared {
    state: Mutex<State>,
    /// The worker threads, to unpark them.
    workers: Vec<OnceLock<Thread>>,
    /// The watchdog waits here.
    tick: Condvar,
    /// Per thread: the serial number of the job it is running (0 = not draining).
    current_job: Vec<AtomicU64>,
    /// Per thread: `current_job` as the watchdog saw it at its last tick.
    seen_job: Vec<AtomicU64>,
    /// Per thread: its kernel thread id, to ask whether it is blocked.
    tids: Vec<AtomicI32>,
    /// An I/O thread queued work without waking a worker (see `Dispatcher::flush`).
    wake_deferred: AtomicBool,
    log: Arc<dyn EventLog>,
    /// Which request each thread runs, when stuck requests are looked for.
    in_flight: Option<Arc<InFlight>>,
}

impl PoolShared {
    pub fn new(threads: usize, log: Arc<dyn EventLog>) -> PoolShared {
        PoolShared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                running: 0,
                idle: Vec::with_capacity(threads),
                waking: 0,
                recruits: 0,
                watchdog_asleep: false,
                shutdown: false,
                last_depth_warning: None,
            }),
            workers: (0..threads).map(|_| OnceLock::new()).collect(),
            tick: Condvar::new(),
            current_job: (0..threads).map(|_| AtomicU64::new(0)).collect(),
            seen_job: (0..threads).map(|_| AtomicU64::new(0)).collect(),
            tids: (0..threads).map(|_| AtomicI32::new(0)).collect(),
            wake_deferred: AtomicBool::new(false),
            log,
            in_flight: None,
        }
    }

    /// Records each thread's request in `in_flight` (for the stuck-request monitor).
    pub fn with_in_flight(mut self, in_flight: Arc<InFlight>) -> PoolShared {
        self.in_flight = Some(in_flight);
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a job and wakes a worker if none is draining.
    pub fn submit(&self, job: Job) {
        self.enqueue(job, false);
    }

    /// Like `submit`; with `defer`, the wake-up of an idle worker waits until the
    /// calling I/O thread is about to sleep (`flush`) or a batch has built up.
    fn enqueue(&self, job: Job, defer: bool) {
        let mut state = self.lock();
        state.queue.push_back(job);
        metrics::gauge_set(Gauge::QueueDepth, state.queue.len() as i64);
        if state.running == 0 && state.waking == 0 {
            if defer && state.queue.len() < DEFERRED_WAKE_LIMIT {
                self.wake_deferred.store(true, Ordering::Release);
            } else {
                self.wake_one(&mut state);
            }
        }
        if state.watchdog_asleep {
            state.watchdog_asleep = false;
            self.tick.notify_one();
        } else if state.running > 0
            && state.idle.len() > state.recruits
            && state.waking == 0
            && self.runners_unchanged()
        {
            // Every runner is still in the job the watchdog saw at its last tick: it
            // may be blocked, so let the watchdog look now rather than a tick later.
            self.tick.notify_one();
        }
    }

    /// Every draining thread is in the job the watchdog last saw it in.
    fn runners_unchanged(&self) -> bool {
        self.current_job
            .iter()
            .zip(&self.seen_job)
            .all(|(now, seen)| {
                let job = now.load(Ordering::Relaxed);
                job == 0 || job == seen.load(Ordering::Relaxed)
            })
    }

    /// At least one thread is draining, and every draining thread is stuck in its
    /// current job: found in it at the previous tick too and blocked now, or found in
    /// it for `LONG_JOB_TICKS` ticks. A thread that is merely waiting for a CPU is not
    /// stuck. `seen` is the watchdog's memory: (job, ticks) per thread.
    fn all_stuck(&self, seen: &mut [(u64, u32)]) -> bool {
        let mut draining = 0;
        let mut stuck = 0;
        for (((slot, tid), seen), published) in self
            .current_job
            .iter()
            .zip(&self.tids)
            .zip(seen)
            .zip(&self.seen_job)
        {
            let job = slot.load(Ordering::Relaxed);
            published.store(job, Ordering::Relaxed);
            if job == 0 {
                *seen = (0, 0);
                continue;
            }
            draining += 1;
            if job != seen.0 {
                *seen = (job, 0);
                continue;
            }
            seen.1 = seen.1.saturating_add(1);
            if seen.1 >= LONG_JOB_TICKS || thread_blocked(tid.load(Ordering::Relaxed)) {
                stuck += 1;
            }
        }
        draining > 0 && stuck == draining
    }

    /// Blocks (GIL released) until this thread should start draining; `None` at shutdown.
    fn wait_for_work(&self, index: usize, serial: u64) -> Option<Job> {
        let mut state = self.lock();
        let mut parked = false;
        loop {
            if parked && !state.idle.contains(&index) {
                // Popped off the idle stack by a wake-up (not a spurious return).
                state.waking = state.waking.saturating_sub(1);
            }
            if !state.queue.is_empty() && (state.running == 0 || state.recruits > 0) {
                state.recruits = state.recruits.saturating_sub(1);
                state.running += 1;
                self.current_job[index].store(serial, Ordering::Relaxed);
                let job = state.queue.pop_front();
                metrics::gauge_set(Gauge::QueueDepth, state.queue.len() as i64);
                return job;
            }
            if state.shutdown && state.queue.is_empty() {
                return None;
            }
            if !state.idle.contains(&index) {
                state.idle.push(index);
            }
            drop(state);
            // Spurious returns are fine: the conditions are checked again.
            std::thread::park();
            parked = true;
            state = self.lock();
        }
    }

    /// Unparks the most recently idle worker.
    fn wake_one(&self, state: &mut State) {
        if let Some(index) = state.idle.pop() {
            state.waking += 1;
            if let Some(thread) = self.workers[index].get() {
                thread.unpark();
            }
        }
    }

    fn wake_all(&self, state: &mut State) {
        for index in std::mem::take(&mut state.idle) {
            state.waking += 1;
            if let Some(thread) = self.workers[index].get() {
                thread.unpark();
            }
        }
    }

    /// The next job for a thread that is already draining; `None` (and the thread stops
    /// draining) when the queue is empty.
    fn next_job(&self, index: usize, serial: u64) -> Option<Job> {
        let mut state = self.lock();
        match state.queue.pop_front() {
            Some(job) => {
                self.current_job[index].store(serial, Ordering::Relaxed);
                metrics::gauge_set(Gauge::QueueDepth, state.queue.len() as i64);
                Some(job)
            }
            None => {
                self.current_job[index].store(0, Ordering::Relaxed);
                state.running -= 1;
                if state.shutdown {
                    self.wake_all(&mut state);
                }
                None
            }
        }
    }

    /// The watchdog's loop: recruit a worker when the draining ones are all stuck.
    fn watchdog(&self) {
        let mut state = self.lock();
        let mut last_busy = Instant::now();
        let mut seen = vec![(0u64, 0u32); self.current_job.len()];
        loop {
            if state.shutdown {
                return;
            }
            let busy = state.running > 0 || !state.queue.is_empty();
            if busy {
                last_busy = Instant::now();
            } else if last_busy.elapsed() >= WATCHDOG_IDLE {
                state.watchdog_asleep = true;
                while state.watchdog_asleep && !state.shutdown {
                    state = self.tick.wait(state).unwrap_or_else(|e| e.into_inner());
                }
                last_busy = Instant::now();
                continue;
            }
            // Tick fast only while work is waiting and a helper could be recruited.
            let period = if state.queue.is_empty() || state.idle.len() <= state.recruits {
                QUIET_TICK
            } else {
                STALL
            };
            state = self
                .tick
                .wait_timeout(state, period)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            if state.queue.is_empty() {
                continue;
            }
            // Asking the kernel about each runner costs a little; do it only when a
            // helper could be recruited, or a queue-depth warning is due.
            if state.idle.len() <= state.recruits && !self.depth_warning_due(&state) {
                continue;
            }
            // The kernel is asked without the pool lock: dispatching never waits on it.
            drop(state);
            let stuck = self.all_stuck(&mut seen);
            state = self.lock();
            if !stuck || state.queue.is_empty() {
                continue;
            }
            if state.idle.len() > state.recruits {
                state.recruits += 1;
                self.wake_one(&mut state);
            } else {
                self.warn_queue_depth(&mut state);
            }
        }
    }

    fn depth_warning_due(&self, state: &State) -> bool {
        state
            .last_depth_warning
            .is_none_or(|t| t.elapsed() >= DEPTH_WARNING_INTERVAL)
    }

    /// Every worker is stuck in the application and requests are waiting.
    fn warn_queue_depth(&self, state: &mut State) {
        if self.depth_warning_due(state) {
            state.last_depth_warning = Some(Instant::now());
            self.log.log_queue(
                LogLevel::Warning,
                format!("Task queue depth is {}", state.queue.len()),
            );
        }
    }

    /// Drops the requests waiting in the queue: each one's response fails, so nothing
    /// of it reaches the application. Resumed responses and deferred calls stay: they
    /// only close what the application returned.
    fn discard_requests(&self) {
        let mut state = self.lock();
        let (requests, rest): (VecDeque<Job>, VecDeque<Job>) = std::mem::take(&mut state.queue)
            .into_iter()
            .partition(|job| matches!(job, Job::Request(_)));
        state.queue = rest;
        drop(state);
        for job in requests {
            if let Job::Request(request) = job {
                request.responder.fail();
            }
        }
    }

    fn shutdown(&self) {
        if let Some(in_flight) = &self.in_flight {
            in_flight.stop_monitor();
        }
        let mut state = self.lock();
        state.shutdown = true;
        self.wake_all(&mut state);
        drop(state);
        self.tick.notify_all();
    }
}

impl Dispatcher for PoolShared {
    fn dispatch(&self, request: Request) {
        let served = REQUESTS.fetch_add(1, Ordering::Relaxed) + 1;
        if served == REQUEST_LIMIT.load(Ordering::Relaxed) {
            // The line also wakes the thread in `Server.run()`, whose tick tells the
            // supervisor now rather than at its next poll.
            self.log.log(
                LogLevel::Info,
                format!("max_requests reached ({served} requests): this worker is to be replaced"),
            );
        }
        self.enqueue(Job::Request(request), true);
    }

    fn flush(&self) {
        if !self.wake_deferred.swap(false, Ordering::AcqRel) {
            return;
        }
        let mut state = self.lock();
        if state.running == 0 && state.waking == 0 && !state.queue.is_empty() {
            self.wake_one(&mut state);
        }
    }
}

/// The running threads.
pub struct Pool {
    shared: Arc<PoolShared>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    pub fn start<R: Runner>(shared: Arc<PoolShared>, runner: Arc<R>) -> std::io::Result<Pool> {
        metrics::gauge_set(Gauge::Threads, shared.current_job.len() as i64);
        let mut threads = Vec::with_capacity(shared.current_job.len() + 1);
        for index in 0..shared.current_job.len() {
            let shared = shared.clone();
            let runner = runner.clone();
            let handle = std::thread::Builder::new()
                .name(format!("tapster-{index}"))
                .spawn(move || worker(index, &shared, &runner))?;
            threads.push(handle);
        }
        let watchdog = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("tapster-watchdog".into())
                .spawn(move || {
                    // Its ticks must not preempt a worker on the same CPU either.
                    crate::threads::prefer_batching();
                    watchdog.watchdog()
                })?,
        );
        Ok(Pool { shared, threads })
    }

    /// Lets queued jobs finish, then stops the threads; waits up to `timeout` for them.
    /// Requests still queued at the deadline are dropped unanswered (their connections
    /// are gone by then). Returns the number of threads still busy (stuck in the
    /// application).
    pub fn shutdown(self, timeout: Duration) -> usize {
        self.shared.shutdown();
        let deadline = Instant::now() + timeout;
        let mut busy = 0;
        let given_up = |index: usize| {
            self.shared
                .in_flight
                .as_ref()
                .is_some_and(|f| f.given_up(index))
        };
        for (index, handle) in self.threads.into_iter().enumerate() {
            // A thread stuck past request_timeout is not waited for.
            while !handle.is_finished() && Instant::now() < deadline && !given_up(index) {
                std::thread::sleep(Duration::from_millis(5));
            }
            if handle.is_finished() {
                let _ = handle.join();
            } else {
                busy += 1;
            }
        }
        if busy > 0 {
            ABANDONED_THREADS.fetch_add(busy as u64, Ordering::Relaxed);
            self.shared.discard_requests();
        }
        busy
    }
}

fn worker<R: Runner>(index: usize, shared: &PoolShared, runner: &Arc<R>) {
    // Registered before the first wait, so a wake-up can never miss this thread.
    let _ = shared.workers[index].set(std::thread::current());
    metrics::set_thread_role(metrics::Role::Application);
    // SAFETY: gettid has no preconditions.
    shared.tids[index].store(unsafe { libc::gettid() }, Ordering::Relaxed);
    // Serial numbers of this thread's jobs, so the watchdog can tell a long job from
    // a run of short ones without reading the clock per job.
    let mut serial: u64 = 1;
    Python::attach(|py| {
        while let Some(first) = py.detach(|| shared.wait_for_work(index, serial)) {
            let mut job = first;
            loop {
                run(py, runner, shared, index, job);
                serial += 1;
                match shared.next_job(index, serial) {
                    Some(next) => job = next,
                    None => break,
                }
            }
        }
    });
}

/// Whether a thread of this process is blocked (sleeping or in uninterruptible wait)
/// rather than running or waiting for a CPU. Unknown counts as blocked.
fn thread_blocked(tid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")) else {
        return true;
    };
    // The state is the first field after the parenthesised command name.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('R'))
}

fn run<R: Runner>(py: Python<'_>, runner: &Arc<R>, shared: &PoolShared, index: usize, job: Job) {
    let responder = match &job {
        Job::Request(request) => {
            if let Some(in_flight) = &shared.in_flight {
                in_flight.begin(index, request);
            }
            Some(request.responder.clone())
        }
        Job::Continue { responder, .. } => Some(responder.clone()),
        Job::Call(_) => None,
    };
    let busy = responder.is_some();
    if busy {
        metrics::gauge_add(Gauge::ThreadsBusy, 1);
    }
    let _done = JobDone {
        shared,
        index,
        busy,
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let exit_guard = HangOnThreadExit;
        match job {
            Job::Request(request) => R::run(runner, py, request),
            Job::Continue { work, .. } | Job::Call(work) => work(py),
        }
        std::mem::forget(exit_guard);
    }));
    if outcome.is_err() {
        shared.log.log(
            LogLevel::Error,
            "internal error while serving a request (a bug in Tapster); the connection was dropped"
                .into(),
        );
        if let Some(responder) = responder {
            responder.fail();
        }
    }
}

/// Ends a job's bookkeeping, however the job ended.
struct JobDone<'a> {
    shared: &'a PoolShared,
    index: usize,
    busy: bool,
}

impl Drop for JobDone<'_> {
    fn drop(&mut self) {
        if self.busy {
            metrics::gauge_add(Gauge::ThreadsBusy, -1);
        }
        if let Some(in_flight) = &self.shared.in_flight {
            in_flight.end(self.index);
        }
    }
}

/// Worker threads a shutdown gave up on (still inside the application at its
/// deadline), in this process. Exposed in `tapster._tapster.stats()`: the command line
/// then exits without finalizing the interpreter under them.
pub static ABANDONED_THREADS: AtomicU64 = AtomicU64::new(0);

/// Requests handed to the application since the process started (what
/// `max_requests` counts).
pub static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// A worker's `max_requests` (0: none), set by `Server.run()`: from that many
/// requests on, responses close their connection, so that clients move to the other
/// workers while this one is being replaced.
pub static REQUEST_LIMIT: AtomicU64 = AtomicU64::new(0);

/// Whether this process has served its `max_requests`.
pub fn past_request_limit() -> bool {
    let limit = REQUEST_LIMIT.load(Ordering::Relaxed);
    limit != 0 && REQUESTS.load(Ordering::Relaxed) >= limit
}

/// Keeps a worker thread that Python ends from reaching `catch_unwind`.
///
/// CPython before 3.14 ends a thread that asks for the GIL once the interpreter is
/// finalizing (a request still running when `run()` returned after its
/// `shutdown_timeout`, and the program then exited) with `pthread_exit`, a forced
/// unwind. Caught by `catch_unwind` (ours, or the one around every Rust thread), glibc
/// aborts the process ("FATAL: exception not rethrown"), with status 134 instead of
/// the exit status the program chose. This guard's destructor runs during that unwind
/// and parks the thread for good instead, as Python 3.14 does itself; the process then
/// exits normally. It is forgotten when the job returns, and lets a Rust panic pass.
/// Any other unwind that is not a Rust panic (a C++ exception out of an extension
/// module) while no shutdown has abandoned threads is a fault: the process aborts,
/// as it would without the guard, saying why.
struct HangOnThreadExit;

impl Drop for HangOnThreadExit {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        if ABANDONED_THREADS.load(Ordering::Relaxed) == 0 {
            eprintln!("tapster: a foreign exception unwound through a worker thread; aborting");
            std::process::abort();
        }
        loop {
            std::thread::park();
        }
    }
}

#[cfg(test)]
mod tests {
    //! The queue's bookkeeping, driven from the test thread (no Python runs: jobs are
    //! only queued, taken and dropped).

    use super::*;
    use crate::server::budget::Budgets;
    use crate::server::responder::OutputLimits;
    use crate::server::shutdown::ShutdownSignal;
    use crate::server::socket::Conn;
    use crate::server::Body;
    use crate::test_support::{runtime, Quiet};

    fn pool(threads: usize) -> PoolShared {
        PoolShared::new(threads, Arc::new(Quiet))
    }

    fn call() -> Job {
        Job::Call(Box::new(|_py| {}))
    }

    /// A request on a real (socket-pair) connection, inside `runtime`.
    fn request(runtime: &tokio::runtime::Runtime) -> Request {
        let _enter = runtime.enter();
        let (server, _client) = std::os::unix::net::UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        let conn = Arc::new(Conn::new(socket2::Socket::from(server)).unwrap());
        let head = crate::test_support::head(b"POST /x HTTP/1.1\r\nHost: t\r\n\r\n");
        let limits = OutputLimits {
            overflow: 1 << 20,
            high_watermark: 1 << 24,
        };
        Request {
            head,
            body: Body::Empty,
            conn: Arc::new(crate::test_support::unix_conn_info(ShutdownSignal::new())),
            responder: Arc::new(Responder::new(conn, limits, Budgets::unlimited())),
        }
    }

    #[test]
    fn one_thread_drains_the_queue_and_stops_when_it_is_empty() {
        let shared = pool(2);
        shared.submit(call());
        shared.submit(call());
        assert!(shared.wait_for_work(0, 1).is_some());
        assert_eq!(shared.lock().running, 1);
        assert!(shared.next_job(0, 2).is_some());
        assert!(shared.next_job(0, 3).is_none());
        assert_eq!(shared.lock().running, 0);
        assert_eq!(shared.current_job[0].load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_second_thread_joins_only_when_recruited() {
        let shared = pool(2);
        shared.submit(call());
        shared.submit(call());
        assert!(shared.wait_for_work(0, 1).is_some());
        // Thread 1 would park now: work waits, but one thread is already draining.
        {
            let state = shared.lock();
            assert!(!state.queue.is_empty() && state.running == 1 && state.recruits == 0);
        }
        shared.lock().recruits = 1;
        assert!(shared.wait_for_work(1, 1).is_some());
        assert_eq!(shared.lock().running, 2);
    }

    #[test]
    fn at_shutdown_an_idle_thread_gets_no_more_work() {
        let shared = pool(1);
        shared.shutdown();
        assert!(shared.wait_for_work(0, 1).is_none());
    }

    #[test]
    fn discarded_requests_fail_and_other_jobs_stay() {
        let runtime = runtime();
        let shared = pool(1);
        let first = request(&runtime);
        let first_responder = first.responder.clone();
        shared.dispatch(first);
        shared.submit(call());
        shared.dispatch(request(&runtime));
        shared.discard_requests();
        let state = shared.lock();
        assert_eq!(state.queue.len(), 1);
        assert!(matches!(state.queue.front(), Some(Job::Call(_))));
        drop(state);
        assert!(
            first_responder.is_failed(),
            "a dropped request's response must fail"
        );
    }
}

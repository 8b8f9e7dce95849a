//! The metrics: counters, gauges and a histogram as atomics in one region of memory,
//! one slot per worker process. With workers the region is a shared anonymous mapping
//! made by the supervisor before the first fork, so every worker writes its own slot
//! and whoever answers a scrape sums them all; in a single process it is the same
//! region with one slot in use.
//!
//! The request path only does relaxed increments on its own slot (nothing at all while
//! metrics are off), and within the slot on its own thread role's shard: the I/O
//! threads and the application's threads each write their own cache lines, so a
//! request's counting does not bounce lines between cores; the shards are summed when
//! scraped. Rendering the Prometheus text reads every slot and `/proc`; it
//! runs on the metrics listener's task, never on a worker thread. No sockets, no Python.

use super::Handler;
use std::fmt::Write as _;
use std::io;
use std::sync::atomic::{AtomicI64, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Worker slots in the region: the most worker processes alive at once (old and new
/// ones during a reload count twice). A worker started when all are taken serves
/// without metrics, and the supervisor says so.
pub const MAX_SLOTS: usize = 128;

/// Counters (monotonic, summed over every slot that was ever used).
#[derive(Clone, Copy, Debug)]
pub enum Counter {
    Accepted,
    RefusedProxyProtocol,
    RefusedTlsHandshake,
    BytesReceived,
    BytesSent,
    SendfileBytes,
    SlowRequests,
    RequestTimeouts,
    AccessLogDropped,
    Http2Connections,
    Http2Floods,
}

const COUNTERS: usize = 11;

/// Per-worker gauges (zeroed by the supervisor when the worker is gone).
#[derive(Clone, Copy, Debug)]
pub enum Gauge {
    InFlight,
    QueueDepth,
    ThreadsBusy,
    Threads,
    ConnectionsReading,
    ConnectionsResponding,
    ConnectionsIdle,
}

const GAUGES: usize = 7;

/// What a connection is doing, for `tapster_connections{state}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Waiting for a request (new, or kept alive after one).
    Idle,
    /// Receiving a request's head or body.
    Reading,
    /// Its request is with the application or its response is being written.
    Responding,
}

impl ConnState {
    fn gauge(self) -> Gauge {
        match self {
            ConnState::Idle => Gauge::ConnectionsIdle,
            ConnState::Reading => Gauge::ConnectionsReading,
            ConnState::Responding => Gauge::ConnectionsResponding,
        }
    }
}

/// Why a worker process ended, for `tapster_worker_exits_total{reason}`.
pub const EXIT_REASONS: [&str; 8] = [
    "max_requests",
    "max_worker_memory",
    "reload",
    "request_timeout",
    "scale_down",
    "shutdown",
    "crashed",
    "boot_failure",
];

/// The `method` label's values; anything else is `other`.
pub const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other",
];
/// The `status` label's values: the class, or `none` for a request that ended with no
/// response (its client left while the application ran, or the server was stopping).
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// Upper bounds of the duration histogram's buckets, in microseconds (then `+Inf`).
const BUCKETS_US: [u64; 13] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];
const BUCKETS: usize = BUCKETS_US.len() + 1;

/// Which shard of its slot a thread writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The I/O threads (and any other thread).
    Io = 0,
    /// The threads that run the application.
    Application = 1,
}

const ROLES: usize = 2;

thread_local! {
    static ROLE: std::cell::Cell<Role> = const { std::cell::Cell::new(Role::Io) };
}

/// The calling thread writes `role`'s shard from now on.
pub fn set_thread_role(role: Role) {
    ROLE.with(|r| r.set(role));
}

/// One worker's numbers.
#[repr(C)]
pub struct Slot {
    /// The process using this slot (0: free).
    pid: AtomicU32,
    shards: [Shard; ROLES],
}

/// What the threads of one role counted; its own cache lines (128 bytes apart, past
/// the adjacent-line prefetcher too).
#[repr(C, align(128))]
struct Shard {
    counters: [AtomicU64; COUNTERS],
    gauges: [AtomicI64; GAUGES],
    requests: [[[AtomicU64; STATUS_CLASSES.len()]; METHODS.len()]; Handler::ALL.len()],
    /// Observations per bucket (not cumulative; the text is).
    buckets: [AtomicU64; BUCKETS],
    duration_sum_us: AtomicU64,
}

impl Slot {
    /// The calling thread's shard.
    #[inline]
    fn mine(&self) -> &Shard {
        &self.shards[ROLE.with(|r| r.get()) as usize]
    }

    fn counter(&self, c: Counter) -> u64 {
        self.shards
            .iter()
            .map(|s| s.counters[c as usize].load(Ordering::Relaxed))
            .sum()
    }

    fn gauge(&self, g: Gauge) -> i64 {
        self.shards
            .iter()
            .map(|s| s.gauges[g as usize].load(Ordering::Relaxed))
            .sum()
    }

    fn requests(&self, handler: usize, method: usize, class: usize) -> u64 {
        self.shards
            .iter()
            .map(|s| s.requests[handler][method][class].load(Ordering::Relaxed))
            .sum()
    }

    fn bucket(&self, i: usize) -> u64 {
        self.shards
            .iter()
            .map(|s| s.buckets[i].load(Ordering::Relaxed))
            .sum()
    }

    fn duration_sum_us(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.duration_sum_us.load(Ordering::Relaxed))
            .sum()
    }
}

/// The whole region: the supervisor's own numbers, then the slots.
#[repr(C)]
pub struct Region {
    /// The supervisor's pid (0: a single process, no supervisor).
    supervisor: AtomicU32,
    worker_starts: AtomicU64,
    worker_exits: [AtomicU64; EXIT_REASONS.len()],
    slots: [Slot; MAX_SLOTS],
}

/// The region, once made (inherited by forked workers at the same address).
static REGION: AtomicPtr<Region> = AtomicPtr::new(std::ptr::null_mut());
/// This process's slot; null while metrics are off here.
static SLOT: AtomicPtr<Slot> = AtomicPtr::new(std::ptr::null_mut());

fn region() -> Option<&'static Region> {
    let ptr = REGION.load(Ordering::Acquire);
    // SAFETY: REGION is only ever set to a mapping of `size_of::<Region>()` bytes that
    // is never unmapped; all-zero bytes are a valid `Region` (atomics), and every field
    // is only accessed atomically.
    unsafe { ptr.as_ref() }
}

#[inline]
fn slot() -> Option<&'static Slot> {
    let ptr = SLOT.load(Ordering::Relaxed);
    // SAFETY: SLOT points into the region (see `region`) or is null.
    unsafe { ptr.as_ref() }
}

/// Makes the region (once per process tree; later calls keep the first). Shared with
/// processes forked afterwards.
pub fn create() -> io::Result<()> {
    if region().is_some() {
        return Ok(());
    }
    let size = std::mem::size_of::<Region>();
    // SAFETY: an anonymous mapping with no address hint touches no existing memory.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // Zero-filled by the kernel: every counter starts at 0. Never unmapped.
    REGION.store(ptr.cast(), Ordering::Release);
    Ok(())
}

/// Whether a region exists in this process.
pub fn exists() -> bool {
    region().is_some()
}

/// Records the supervisor's pid (its process metrics are reported too).
pub fn set_supervisor(pid: u32) {
    if let Some(r) = region() {
        r.supervisor.store(pid, Ordering::Relaxed);
    }
}

/// This process records into slot `index` from now on.
pub fn attach(index: usize) -> io::Result<()> {
    let r = region().ok_or_else(|| io::Error::other("no metrics region"))?;
    let slot = r
        .slots
        .get(index)
        .ok_or_else(|| io::Error::other(format!("metrics slot {index} out of range")))?;
    slot.pid.store(std::process::id(), Ordering::Relaxed);
    SLOT.store(std::ptr::from_ref(slot).cast_mut(), Ordering::Relaxed);
    Ok(())
}

/// The lowest slot no process uses (for the supervisor to hand to a new worker).
pub fn free_slot(taken: &[usize]) -> Option<usize> {
    let r = region()?;
    (0..MAX_SLOTS).find(|i| !taken.contains(i) && r.slots[*i].pid.load(Ordering::Relaxed) == 0)
}

/// The worker in slot `index` is gone: its gauges no longer count, and the slot may be
/// reused (its counters stay, so the sums never go down).
pub fn release(index: usize) {
    let Some(slot) = region().and_then(|r| r.slots.get(index)) else {
        return;
    };
    for g in slot.shards.iter().flat_map(|s| &s.gauges) {
        g.store(0, Ordering::Relaxed);
    }
    slot.pid.store(0, Ordering::Relaxed);
}

/// Whether this process records metrics.
#[inline]
pub fn enabled() -> bool {
    slot().is_some()
}

#[inline]
pub fn count(counter: Counter, n: u64) {
    if let Some(s) = slot() {
        s.mine().counters[counter as usize].fetch_add(n, Ordering::Relaxed);
    }
}

#[inline]
pub fn gauge_add(gauge: Gauge, delta: i64) {
    if let Some(s) = slot() {
        s.mine().gauges[gauge as usize].fetch_add(delta, Ordering::Relaxed);
    }
}

#[inline]
pub fn gauge_set(gauge: Gauge, value: i64) {
    if let Some(s) = slot() {
        // The value lives in the I/O shard (the other's stays 0); sets are rare.
        s.shards[Role::Io as usize].gauges[gauge as usize].store(value, Ordering::Relaxed);
    }
}

/// A connection moves from `from` (None: it is new) to `to` (None: it closed).
#[inline]
pub fn connection_moved(from: Option<ConnState>, to: Option<ConnState>) {
    if from == to {
        return;
    }
    if let Some(s) = slot() {
        let shard = s.mine();
        if let Some(f) = from {
            shard.gauges[f.gauge() as usize].fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(t) = to {
            shard.gauges[t.gauge() as usize].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The `method` label index of a request method.
pub fn method_index(method: &[u8]) -> u8 {
    METHODS[..METHODS.len() - 1]
        .iter()
        .position(|m| m.as_bytes() == method)
        .unwrap_or(METHODS.len() - 1) as u8
}

/// One request ended (answered or not; `status` 0: no response was sent): counted by
/// method and status class, and its duration observed.
pub fn request_done(handler: Handler, method: u8, status: u16, duration: Duration) {
    let Some(s) = slot() else {
        return;
    };
    let s = s.mine();
    let class = match status / 100 {
        0 => STATUS_CLASSES.len() - 1,
        c => usize::from(c).min(STATUS_CLASSES.len() - 1) - 1,
    };
    let method = usize::from(method).min(METHODS.len() - 1);
    s.requests[handler as usize][method][class].fetch_add(1, Ordering::Relaxed);
    let us = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
    let bucket = BUCKETS_US.partition_point(|&bound| bound < us);
    s.buckets[bucket].fetch_add(1, Ordering::Relaxed);
    s.duration_sum_us.fetch_add(us, Ordering::Relaxed);
}

/// The supervisor started a worker.
pub fn worker_started() {
    if let Some(r) = region() {
        r.worker_starts.fetch_add(1, Ordering::Relaxed);
    }
}

/// The supervisor reaped a worker that ended for `reason` (one of `EXIT_REASONS`).
pub fn worker_exited(reason: &str) -> Result<(), String> {
    let index = EXIT_REASONS
        .iter()
        .position(|r| *r == reason)
        .ok_or_else(|| format!("unknown worker exit reason {reason:?}"))?;
    if let Some(r) = region() {
        r.worker_exits[index].fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

// ----- the Prometheus text -----------------------------------------------------------------

/// The slots in use now, as (label, slot).
fn live_slots(r: &'static Region) -> Vec<(usize, &'static Slot)> {
    r.slots
        .iter()
        .enumerate()
        .filter(|(_, s)| s.pid.load(Ordering::Relaxed) != 0)
        .collect()
}

fn sum_counter(r: &Region, c: Counter) -> u64 {
    r.slots.iter().map(|s| s.counter(c)).sum()
}

/// The whole exposition (text format 0.0.4), or `None` while there is no region.
pub fn render() -> Option<String> {
    let r = region()?;
    let mut out = String::with_capacity(8 * 1024);
    render_requests(r, &mut out);
    render_duration(r, &mut out);
    render_counters(r, &mut out);
    render_workers(r, &mut out);
    render_gauges(r, &mut out);
    render_processes(r, &mut out);
    Some(out)
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn render_requests(r: &Region, out: &mut String) {
    header(
        out,
        "tapster_requests_total",
        "counter",
        "Requests that ended (answered in full or not), by method, status class (none: no response) and handler (application, static, or server: refused before either).",
    );
    for (h, handler) in Handler::ALL.iter().enumerate() {
        for (m, method) in METHODS.iter().enumerate() {
            for (c, class) in STATUS_CLASSES.iter().enumerate() {
                let n: u64 = r.slots.iter().map(|s| s.requests(h, m, c)).sum();
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "tapster_requests_total{{method=\"{method}\",status=\"{class}\",handler=\"{}\"}} {n}",
                        handler.name()
                    );
                }
            }
        }
    }
}

fn render_duration(r: &Region, out: &mut String) {
    let name = "tapster_request_duration_seconds";
    header(
        out,
        name,
        "histogram",
        "From a request's first byte to its response's last byte.",
    );
    let mut cumulative = 0u64;
    for i in 0..BUCKETS {
        cumulative += r.slots.iter().map(|s| s.bucket(i)).sum::<u64>();
        match BUCKETS_US.get(i) {
            Some(us) => {
                let le = *us as f64 / 1e6;
                let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
            }
            None => {
                let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
            }
        }
    }
    let sum_us: u64 = r.slots.iter().map(Slot::duration_sum_us).sum();
    let _ = writeln!(out, "{name}_sum {}", sum_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count {cumulative}");
}

fn render_counters(r: &Region, out: &mut String) {
    let simple = [
        (
            "tapster_connections_accepted_total",
            Counter::Accepted,
            "Connections accepted.",
        ),
        (
            "tapster_received_bytes_total",
            Counter::BytesReceived,
            "Bytes read from clients.",
        ),
        (
            "tapster_sent_bytes_total",
            Counter::BytesSent,
            "Bytes written to clients (sendfile included).",
        ),
        (
            "tapster_sendfile_bytes_total",
            Counter::SendfileBytes,
            "Bytes sent with sendfile(2).",
        ),
        (
            "tapster_slow_requests_total",
            Counter::SlowRequests,
            "Requests that ran past dump_slow_requests_after.",
        ),
        (
            "tapster_request_timeouts_total",
            Counter::RequestTimeouts,
            "Requests that ran past request_timeout.",
        ),
        (
            "tapster_access_log_dropped_total",
            Counter::AccessLogDropped,
            "Access-log lines dropped because the log could not keep up.",
        ),
        (
            "tapster_http2_connections_total",
            Counter::Http2Connections,
            "Connections that spoke HTTP/2 (h2 by ALPN or h2c by prior knowledge).",
        ),
        (
            "tapster_http2_floods_total",
            Counter::Http2Floods,
            "HTTP/2 connections closed with ENHANCE_YOUR_CALM for flooding.",
        ),
    ];
    for (name, counter, help) in simple {
        header(out, name, "counter", help);
        let _ = writeln!(out, "{name} {}", sum_counter(r, counter));
    }
    let name = "tapster_connections_refused_total";
    header(
        out,
        name,
        "counter",
        "Connections closed unanswered, by reason.",
    );
    let _ = writeln!(
        out,
        "{name}{{reason=\"proxy_protocol\"}} {}",
        sum_counter(r, Counter::RefusedProxyProtocol)
    );
    let _ = writeln!(
        out,
        "{name}{{reason=\"tls_handshake\"}} {}",
        sum_counter(r, Counter::RefusedTlsHandshake)
    );
}

fn render_workers(r: &Region, out: &mut String) {
    if r.supervisor.load(Ordering::Relaxed) == 0 {
        return;
    }
    header(
        out,
        "tapster_worker_starts_total",
        "counter",
        "Worker processes started.",
    );
    let _ = writeln!(
        out,
        "tapster_worker_starts_total {}",
        r.worker_starts.load(Ordering::Relaxed)
    );
    let name = "tapster_worker_exits_total";
    header(
        out,
        name,
        "counter",
        "Worker processes that ended, by reason.",
    );
    for (reason, n) in EXIT_REASONS.iter().zip(&r.worker_exits) {
        let _ = writeln!(
            out,
            "{name}{{reason=\"{reason}\"}} {}",
            n.load(Ordering::Relaxed)
        );
    }
}

fn render_gauges(r: &'static Region, out: &mut String) {
    let live = live_slots(r);
    let simple = [
        (
            "tapster_requests_in_flight",
            Gauge::InFlight,
            "Requests received and not yet answered in full.",
        ),
        (
            "tapster_queue_depth",
            Gauge::QueueDepth,
            "Requests waiting for a worker thread.",
        ),
        (
            "tapster_threads_busy",
            Gauge::ThreadsBusy,
            "Worker threads running the application.",
        ),
        ("tapster_threads", Gauge::Threads, "Worker threads."),
    ];
    for (name, gauge, help) in simple {
        header(out, name, "gauge", help);
        for (index, slot) in &live {
            let v = slot.gauge(gauge).max(0);
            let _ = writeln!(out, "{name}{{worker=\"{index}\"}} {v}");
        }
    }
    let name = "tapster_connections";
    header(out, name, "gauge", "Open client connections, by state.");
    for (index, slot) in &live {
        for (state, gauge) in [
            ("reading", Gauge::ConnectionsReading),
            ("responding", Gauge::ConnectionsResponding),
            ("idle", Gauge::ConnectionsIdle),
        ] {
            let v = slot.gauge(gauge).max(0);
            let _ = writeln!(out, "{name}{{worker=\"{index}\",state=\"{state}\"}} {v}");
        }
    }
}

/// What `/proc` says of one process.
struct ProcessStats {
    cpu_seconds: f64,
    rss_bytes: u64,
    open_fds: usize,
}

fn process_stats(pid: u32) -> Option<ProcessStats> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command: state is field 3; utime 14, stime 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let rss_pages: u64 = fields.get(21)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let (hz, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    Some(ProcessStats {
        cpu_seconds: ticks as f64 / hz.max(1) as f64,
        rss_bytes: rss_pages * page.max(1) as u64,
        open_fds,
    })
}

fn render_processes(r: &'static Region, out: &mut String) {
    let mut processes: Vec<(String, ProcessStats)> = live_slots(r)
        .into_iter()
        .filter_map(|(index, slot)| {
            process_stats(slot.pid.load(Ordering::Relaxed)).map(|s| (index.to_string(), s))
        })
        .collect();
    let supervisor = r.supervisor.load(Ordering::Relaxed);
    if supervisor != 0 {
        if let Some(stats) = process_stats(supervisor) {
            processes.push(("supervisor".to_owned(), stats));
        }
    }
    header(
        out,
        "process_cpu_seconds_total",
        "counter",
        "User and system CPU time spent, in seconds.",
    );
    for (worker, s) in &processes {
        let _ = writeln!(
            out,
            "process_cpu_seconds_total{{worker=\"{worker}\"}} {}",
            s.cpu_seconds
        );
    }
    header(
        out,
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
    );
    for (worker, s) in &processes {
        let _ = writeln!(
            out,
            "process_resident_memory_bytes{{worker=\"{worker}\"}} {}",
            s.rss_bytes
        );
    }
    header(out, "process_open_fds", "gauge", "Open file descriptors.");
    for (worker, s) in &processes {
        let _ = writeln!(
            out,
            "process_open_fds{{worker=\"{worker}\"}} {}",
            s.open_fds
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_outside_the_list_are_other() {
        assert_eq!(METHODS[method_index(b"GET") as usize], "GET");
        assert_eq!(METHODS[method_index(b"OPTIONS") as usize], "OPTIONS");
        assert_eq!(METHODS[method_index(b"get") as usize], "other");
        assert_eq!(METHODS[method_index(b"PROPFIND") as usize], "other");
    }

    #[test]
    fn a_forked_process_counts_into_the_same_region_and_a_scrape_sums_it() {
        create().unwrap();
        attach(7).unwrap();
        request_done(
            Handler::Static,
            method_index(b"PATCH"),
            404,
            Duration::from_millis(3),
        );
        // SAFETY: the child only touches atomics in the shared mapping, then _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            if attach(8).is_ok() {
                request_done(
                    Handler::Static,
                    method_index(b"PATCH"),
                    404,
                    Duration::from_millis(3),
                );
                count(Counter::SlowRequests, 5);
            }
            // SAFETY: ends the child at once, running nothing of the parent's.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let text = render().unwrap();
        assert!(
            text.contains(
                "tapster_requests_total{method=\"PATCH\",status=\"4xx\",handler=\"static\"} 2\n"
            ),
            "{text}"
        );
        let r = region().unwrap();
        assert_eq!(r.slots[8].counter(Counter::SlowRequests), 5);
        // The child's slot is free again once released; its counters stay in the sums.
        release(8);
        assert_eq!(free_slot(&[0, 1, 2, 3, 4, 5, 6]), Some(8));
        assert!(render()
            .unwrap()
            .contains("method=\"PATCH\",status=\"4xx\",handler=\"static\"} 2\n"));
    }

    #[test]
    fn bucket_bounds_are_inclusive_upper_bounds() {
        assert_eq!(BUCKETS_US.partition_point(|&b| b < 1_000), 0);
        assert_eq!(BUCKETS_US.partition_point(|&b| b < 1_001), 1);
        assert_eq!(BUCKETS_US.partition_point(|&b| b < 20_000_000), BUCKETS - 1);
    }
}

//! The access log's writer: finished requests' records queue here (a push under a
//! short lock, from whichever thread ended the response), and one background thread
//! formats them and writes them out in batches: to a file opened for appending (whole
//! lines per `write`, so workers sharing the file never interleave within a line), to
//! standard error, or to a `LineSink` (the Python logger, which is `wsgi/`'s).
//!
//! Nothing here blocks a worker: a full queue drops records and counts them
//! (`tapster_access_log_dropped_total`), a slow disk slows only the writer thread.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::access_format::{Format, Record};
use super::metrics::{self, Counter};

/// Records waiting for the writer, at most, and the bytes they may keep alive (each
/// holds its request head): beyond either, new ones are dropped (a writer that cannot
/// keep up must not grow memory without bound).
const MAX_PENDING: usize = 16 * 1024;
const MAX_PENDING_BYTES: usize = 32 << 20;
/// What a record costs besides the head it keeps.
const RECORD_BYTES: usize = 512;
/// The writer wakes at once when this many records wait...
const BATCH: usize = 512;
/// ...and otherwise this often.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Drops are reported at most this often.
const DROP_REPORT_EVERY: Duration = Duration::from_secs(10);

/// Where formatted lines go when not to a file or standard error.
pub trait LineSink: Send + 'static {
    /// `lines`: whole lines, each ending in `\n`.
    fn write_lines(&mut self, lines: &[u8]);
}

/// Where the access log goes.
pub enum Destination {
    /// A file, opened for appending (and reopened on `reopen`).
    File(PathBuf),
    Stderr,
    Sink(Box<dyn LineSink>),
}

/// How the writer reports its own trouble (a file it cannot open or write, drops).
pub type ErrorReport = Arc<dyn Fn(String) + Send + Sync>;

struct Queue {
    // Boxed on purpose: a record moves through the queue as a pointer, not as its
    // few hundred bytes.
    #[allow(clippy::vec_box)]
    records: Vec<Box<Record>>,
    /// What `records` keep alive, about.
    bytes: usize,
    dropped: u64,
    stop: bool,
}

struct Shared {
    format: Format,
    queue: Mutex<Queue>,
    wake: Condvar,
    reopen: AtomicBool,
}

/// The access log of one server: `push` from any thread; `close` flushes and stops it.
pub struct AccessLog {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl AccessLog {
    /// Opens the destination (a file that cannot be opened is an error now, not a
    /// silent loss later) and starts the writer thread.
    pub fn start(format: Format, dest: Destination, report: ErrorReport) -> io::Result<AccessLog> {
        let out = Output::open(dest)?;
        let shared = Arc::new(Shared {
            format,
            queue: Mutex::new(Queue {
                records: Vec::with_capacity(BATCH),
                bytes: 0,
                dropped: 0,
                stop: false,
            }),
            wake: Condvar::new(),
            reopen: AtomicBool::new(false),
        });
        let for_writer = shared.clone();
        let writer = std::thread::Builder::new()
            .name("tapster-access-log".into())
            .spawn(move || write_loop(&for_writer, out, &report))?;
        Ok(AccessLog {
            shared,
            writer: Mutex::new(Some(writer)),
        })
    }

    pub fn format(&self) -> &Format {
        &self.shared.format
    }

    /// Queues one record; never blocks beyond the queue's lock.
    pub fn push(&self, record: Box<Record>) {
        let size = RECORD_BYTES + record.request.retained();
        let mut queue = self.shared.lock();
        if queue.records.len() >= MAX_PENDING
            || queue.bytes + size > MAX_PENDING_BYTES
            || queue.stop
        {
            queue.dropped += 1;
            drop(queue);
            metrics::count(Counter::AccessLogDropped, 1);
            return;
        }
        queue.bytes += size;
        queue.records.push(record);
        if queue.records.len() == BATCH {
            self.shared.wake.notify_one();
        }
    }

    /// Reopens the file at its path (after logrotate moved it), before the next batch.
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }

    /// Writes what is queued and stops the writer. Idempotent.
    pub fn close(&self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_one();
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.close();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

enum Output {
    File { path: PathBuf, file: File },
    Stderr,
    Sink(Box<dyn LineSink>),
}

impl Output {
    fn open(dest: Destination) -> io::Result<Output> {
        Ok(match dest {
            Destination::File(path) => Output::File {
                file: open_append(&path)?,
                path,
            },
            Destination::Stderr => Output::Stderr,
            Destination::Sink(sink) => Output::Sink(sink),
        })
    }

    fn write(&mut self, lines: &[u8]) -> io::Result<()> {
        match self {
            Output::File { file, .. } => file.write_all(lines),
            Output::Stderr => write_atomic_pieces(&mut io::stderr().lock(), lines),
            Output::Sink(sink) => {
                sink.write_lines(lines);
                Ok(())
            }
        }
    }

    fn reopen(&mut self) -> io::Result<()> {
        if let Output::File { path, file } = self {
            *file = open_append(path)?;
        }
        Ok(())
    }
}

/// Standard error may be a pipe shared with other workers, where only writes of up to
/// `PIPE_BUF` bytes are atomic: lines go out in pieces of whole lines within that size
/// (a longer line alone), so two processes' lines never interleave mid-line.
fn write_atomic_pieces(out: &mut impl Write, mut lines: &[u8]) -> io::Result<()> {
    const PIPE_BUF: usize = 4096;
    while !lines.is_empty() {
        let window = &lines[..lines.len().min(PIPE_BUF)];
        let end = match memchr::memrchr(b'\n', window) {
            Some(nl) if lines.len() > PIPE_BUF => nl + 1,
            _ if lines.len() <= PIPE_BUF => lines.len(),
            // One line longer than PIPE_BUF: it goes alone.
            _ => memchr::memchr(b'\n', lines).map_or(lines.len(), |nl| nl + 1),
        };
        out.write_all(&lines[..end])?;
        lines = &lines[end..];
    }
    Ok(())
}

fn open_append(path: &PathBuf) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("access log {}: {e}", path.display())))
}

#[allow(clippy::vec_box)] // see `Queue::records`
fn write_loop(shared: &Shared, mut out: Output, report: &ErrorReport) {
    let mut batch: Vec<Box<Record>> = Vec::with_capacity(BATCH);
    let mut text: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut last_drop_report: Option<Instant> = None;
    let mut failing = false;
    loop {
        let (stop, dropped) = {
            let mut queue = shared.lock();
            if queue.records.is_empty() && !queue.stop && !shared.reopen.load(Ordering::Acquire) {
                queue = shared
                    .wake
                    .wait_timeout(queue, FLUSH_EVERY)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            std::mem::swap(&mut batch, &mut queue.records);
            queue.bytes = 0;
            (queue.stop, std::mem::take(&mut queue.dropped))
        };
        if shared.reopen.swap(false, Ordering::AcqRel) {
            if let Err(err) = out.reopen() {
                report(format!("Could not reopen the access log: {err}"));
            }
        }
        if dropped > 0 && last_drop_report.is_none_or(|t| t.elapsed() >= DROP_REPORT_EVERY) {
            last_drop_report = Some(Instant::now());
            report(format!(
                "The access log could not keep up: {dropped} line(s) dropped"
            ));
        }
        text.clear();
        for record in batch.drain(..) {
            shared.format.render(&record, &mut text);
        }
        if !text.is_empty() {
            match out.write(&text) {
                Ok(()) => failing = false,
                Err(err) if !failing => {
                    failing = true;
                    report(format!("Could not write the access log: {err}"));
                }
                Err(_) => {}
            }
        }
        if stop {
            return;
        }
        if text.capacity() > 1 << 20 {
            text = Vec::with_capacity(64 * 1024);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::access_format::Outcome;
    use std::time::SystemTime;

    fn record(target: &str) -> Box<Record> {
        Box::new(Record {
            started: SystemTime::now(),
            duration: Duration::from_millis(1),
            remote_addr: b"10.0.0.1"[..].into(),
            request: crate::observe::access_format::RequestText::from_parts(
                b"GET",
                target.as_bytes(),
                &[],
            ),
            version: "HTTP/1.1",
            status: Some(200),
            body_bytes: 5,
            outcome: Outcome::KeptAlive,
            handler: crate::observe::Handler::Application,
            pid: 1,
            response_headers: Vec::new(),
            environ: Vec::new(),
        })
    }

    fn wait_for(path: &std::path::Path, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if std::fs::read_to_string(path)
                .unwrap_or_default()
                .contains(text)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("{text:?} never reached {}", path.display());
    }

    #[test]
    fn lines_reach_the_file_in_the_background_and_reopen_follows_a_rename() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let format = Format::parse("%(U)s %(s)s").unwrap();
        let log =
            AccessLog::start(format, Destination::File(path.clone()), Arc::new(|_| {})).unwrap();
        log.push(record("/first"));
        wait_for(&path, "/first 200\n");
        let moved = dir.path().join("access.log.1");
        std::fs::rename(&path, &moved).unwrap();
        log.reopen();
        // Give the writer its reopen before the next line (it reopens before a batch).
        let deadline = Instant::now() + Duration::from_secs(5);
        while !path.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        log.push(record("/second"));
        log.close();
        assert_eq!(std::fs::read_to_string(&moved).unwrap(), "/first 200\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "/second 200\n");
        // After close, records are dropped (counted), not queued forever.
        log.push(record("/late"));
        assert!(!std::fs::read_to_string(&path).unwrap().contains("/late"));
    }

    #[test]
    fn standard_error_gets_whole_lines_within_pipe_buf_per_write() {
        struct Writes(Vec<Vec<u8>>);
        impl Write for Writes {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.push(buf.to_vec());
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut text = Vec::new();
        for i in 0..500 {
            text.extend_from_slice(format!("line {i} {}\n", "x".repeat(i % 50)).as_bytes());
        }
        text.extend_from_slice(&[b'y'; 5000]);
        text.push(b'\n');
        text.extend_from_slice(b"last\n");
        let mut out = Writes(Vec::new());
        write_atomic_pieces(&mut out, &text).unwrap();
        assert_eq!(out.0.concat(), text);
        for piece in &out.0 {
            assert!(piece.ends_with(b"\n"), "a piece ends mid-line");
            let lines = piece.iter().filter(|&&b| b == b'\n').count();
            assert!(
                piece.len() <= 4096 || lines == 1,
                "{} bytes, {lines} lines",
                piece.len()
            );
        }
    }

    #[test]
    fn a_file_that_cannot_be_opened_is_an_error_at_start() {
        let err = AccessLog::start(
            Format::parse("%(s)s").unwrap(),
            Destination::File("/nonexistent-dir/x/access.log".into()),
            Arc::new(|_| {}),
        )
        .err()
        .unwrap();
        assert!(
            err.to_string().contains("/nonexistent-dir/x/access.log"),
            "{err}"
        );
    }

    #[test]
    fn a_full_queue_drops_and_reports_instead_of_growing() {
        struct Slow(Arc<Mutex<usize>>);
        impl LineSink for Slow {
            fn write_lines(&mut self, lines: &[u8]) {
                std::thread::sleep(Duration::from_millis(300));
                *self.0.lock().unwrap() += lines.iter().filter(|&&b| b == b'\n').count();
            }
        }
        let written = Arc::new(Mutex::new(0));
        let reports = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen = reports.clone();
        let log = AccessLog::start(
            Format::parse("%(s)s").unwrap(),
            Destination::Sink(Box::new(Slow(written.clone()))),
            Arc::new(move |m| seen.lock().unwrap().push(m)),
        )
        .unwrap();
        let pushed = MAX_PENDING * 3;
        for _ in 0..pushed {
            log.push(record("/"));
        }
        log.close();
        let written = *written.lock().unwrap();
        assert!(
            written < pushed,
            "{written} of {pushed} written: nothing was dropped"
        );
        assert!(written >= MAX_PENDING.min(pushed) / 2, "{written}");
        let reports = reports.lock().unwrap();
        assert!(reports.iter().any(|m| m.contains("dropped")), "{reports:?}");
    }
}

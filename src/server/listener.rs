//! Listening sockets, the accept loops, the connection limit and the runtime's life:
//! start, graceful shutdown (stop accepting, let in-flight requests finish, close idle
//! connections at once), stop.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use socket2::{SockAddr, Socket};
use tokio::io::unix::AsyncFd;
use tokio::runtime::Runtime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::budget::Budgets;
use super::conn_info::{ConnInfo, ListenerInfo, ListenerKind, Peer};
use super::connection::{self, Shared};
use super::dispatch::{Dispatcher, EventLog, LogLevel};
use super::responder::OutputLimits;
use super::shutdown::{Shutdown, ShutdownSignal};
use super::socket::{register, Conn};
use crate::config::Config;

/// `TCP_NOTSENT_LOWAT` for accepted TCP connections: the kernel keeps at most this much
/// not-yet-transmitted data queued, and reports the socket writable again below it.
/// Without it one `sendfile(2)` fills the whole send buffer, and the rest of the file
/// is transmitted from the ACK path, that is on the receiver's CPU when the client is
/// local; with it the server's own calls do the transmitting (on loopback, a 64 MiB
/// file goes out about 1.5 times faster). In-flight data is not limited by it, so
/// throughput over long, fast links is unaffected.
const NOTSENT_LOWAT: u32 = 128 * 1024;

/// A bound, listening socket handed over by the Python layer.
pub struct ListenerSpec {
    pub socket: Socket,
    pub info: Arc<ListenerInfo>,
}

/// Counts open connections so shutdown can wait for them.
struct ConnCount {
    open: Mutex<usize>,
    changed: Condvar,
}

struct ConnGuard(Arc<ConnCount>);

impl ConnGuard {
    /// Counts one more open connection until the guard drops.
    fn new(count: &Arc<ConnCount>) -> ConnGuard {
        *count.open.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        ConnGuard(count.clone())
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut open = self.0.open.lock().unwrap_or_else(|e| e.into_inner());
        *open -= 1;
        self.0.changed.notify_all();
    }
}

/// A started server: the runtime with its accept loops and connections.
pub struct Running {
    runtime: Option<Runtime>,
    /// Duplicates of the listening sockets, to stop them listening at shutdown.
    listening: Vec<Socket>,
    shutdown: Arc<ShutdownSignal>,
    count: Arc<ConnCount>,
}

/// Starts the I/O runtime and accepts on every listener.
pub fn start(
    config: Config,
    listeners: Vec<ListenerSpec>,
    dispatcher: Arc<dyn Dispatcher>,
    log: Arc<dyn EventLog>,
) -> io::Result<Running> {
    let flusher = dispatcher.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.io_threads)
        .thread_name("tapster-io")
        .on_thread_park(move || flusher.flush())
        .on_thread_start(crate::threads::prefer_batching)
        .enable_io()
        .enable_time()
        .build()?;
    let shutdown = ShutdownSignal::new();
    let count = Arc::new(ConnCount {
        open: Mutex::new(0),
        changed: Condvar::new(),
    });
    let limit = Arc::new(Semaphore::new(config.connection_limit));
    let shared = Arc::new(Shared {
        head_limits: config.head_limits(),
        output_limits: OutputLimits::of(&config),
        budgets: Budgets::new(
            config.inbuf_memory_budget,
            config.outbuf_memory_budget,
            config.outbuf_spill_budget,
        ),
        config,
        dispatcher,
        log,
        shutdown: shutdown.clone(),
    });
    let mut listening = Vec::with_capacity(listeners.len());
    {
        let _enter = runtime.enter();
        for spec in listeners {
            spec.socket.set_nonblocking(true)?;
            listening.push(spec.socket.try_clone()?);
            let listener = register(spec.socket)?;
            runtime.spawn(accept_loop(
                listener,
                spec.info,
                shared.clone(),
                limit.clone(),
                count.clone(),
            ));
        }
    }
    Ok(Running {
        runtime: Some(runtime),
        listening,
        shutdown,
        count,
    })
}

impl Running {
    /// Stops accepting, closes idle connections, and makes responses in progress the
    /// last on their connection. Returns at once.
    pub fn begin_shutdown(&self) {
        self.shutdown.trigger();
        for socket in &self.listening {
            // Takes the socket out of the listening state for every descriptor that
            // refers to it (the Python layer holds one too): new connections are
            // refused instead of waiting in the backlog for an accept that never comes.
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Waits (blocking this thread) until every connection has closed or `timeout`
    /// passes. Returns the number still open.
    pub fn wait_for_connections(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut open = self.count.open.lock().unwrap_or_else(|e| e.into_inner());
        while *open > 0 {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            open = self
                .count
                .changed
                .wait_timeout(open, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *open
    }

    /// Stops the runtime, dropping whatever connections remain.
    pub fn stop(mut self) {
        self.begin_shutdown();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// One listener's loop: take a place under the connection limit, accept, start the
/// connection's task; until shutdown.
async fn accept_loop(
    listener: AsyncFd<Socket>,
    info: Arc<ListenerInfo>,
    shared: Arc<Shared>,
    limit: Arc<Semaphore>,
    count: Arc<ConnCount>,
) {
    let mut shutdown = shared.shutdown.subscribe();
    if shutdown.is_closing() {
        return;
    }
    let mut errors = AcceptErrors::default();
    loop {
        let Some(permit) = place_under_limit(&limit, &shared, &mut shutdown).await else {
            return;
        };
        let accepted = tokio::select! {
            biased;
            _ = shutdown.recv() => return,
            r = accept(&listener) => r,
        };
        if shutdown.is_closing() {
            // The listener was taken down by `begin_shutdown`.
            return;
        }
        match accepted {
            Ok((socket, peer)) => {
                errors.recovered(&shared);
                let guard = ConnGuard::new(&count);
                start_connection(socket, peer, &info, &shared, move || {
                    drop(guard);
                    drop(permit);
                });
            }
            Err(err) => errors.failed(&err, &shared).await,
        }
    }
}

/// A place under `connection_limit`, waiting (and saying so in the log) while there is
/// none; `None` at shutdown.
async fn place_under_limit(
    limit: &Arc<Semaphore>,
    shared: &Shared,
    shutdown: &mut Shutdown,
) -> Option<OwnedSemaphorePermit> {
    if let Ok(permit) = limit.clone().try_acquire_owned() {
        return Some(permit);
    }
    shared.log.log(
        LogLevel::Warning,
        "total open connections reached the connection limit, no longer accepting new connections"
            .into(),
    );
    let permit = tokio::select! {
        p = limit.clone().acquire_owned() => p.ok()?,
        _ = shutdown.recv() => return None,
    };
    shared.log.log(
        LogLevel::Info,
        "total open connections dropped below the connection limit, listening again".into(),
    );
    Some(permit)
}

/// How often a run of failing `accept`s is logged at most.
const ACCEPT_ERROR_REPORT: Duration = Duration::from_secs(5);

/// The failed `accept`s of one listener: the first is logged at once, later ones at
/// most every `ACCEPT_ERROR_REPORT` with how many there were, so a process out of
/// descriptors does not flood its log.
#[derive(Default)]
struct AcceptErrors {
    last_report: Option<Instant>,
    unreported: u64,
}

impl AcceptErrors {
    /// Logs `err` if a report is due, and backs off when the process is out of
    /// descriptors or memory instead of spinning.
    async fn failed(&mut self, err: &io::Error, shared: &Shared) {
        if err.kind() == io::ErrorKind::ConnectionAborted {
            return;
        }
        self.unreported += 1;
        let due = self
            .last_report
            .is_none_or(|at| at.elapsed() >= ACCEPT_ERROR_REPORT);
        if due && shared.config.log_socket_errors {
            let repeats = match self.unreported {
                1 => String::new(),
                n => format!(" ({n} failures since the last report)"),
            };
            shared.log.log(
                LogLevel::Warning,
                format!("server accept() threw an exception: {err}{repeats}"),
            );
            self.last_report = Some(Instant::now());
            self.unreported = 0;
        }
        if matches!(
            err.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        ) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An `accept` worked: failures since the last report are reported now, so the end
    /// of a run is in the log too.
    fn recovered(&mut self, shared: &Shared) {
        if self.unreported == 0 {
            return;
        }
        if shared.config.log_socket_errors {
            shared.log.log(
                LogLevel::Info,
                format!(
                    "server accept() works again ({} failures since the last report)",
                    self.unreported
                ),
            );
        }
        self.unreported = 0;
        self.last_report = None;
    }
}

/// Sets up an accepted socket and spawns its connection task; `done` runs when the
/// task ends (it releases the connection's place and count).
fn start_connection(
    socket: Socket,
    peer: SockAddr,
    info: &Arc<ListenerInfo>,
    shared: &Arc<Shared>,
    done: impl FnOnce() + Send + 'static,
) {
    if info.kind == ListenerKind::Tcp {
        let _ = socket.set_tcp_nodelay(true);
        let _ = socket.set_tcp_notsent_lowat(NOTSENT_LOWAT);
    }
    let conn = match Conn::new(socket) {
        Ok(c) => Arc::new(c),
        Err(err) => {
            shared.log.log(
                LogLevel::Warning,
                format!("could not register a connection: {err}"),
            );
            return done();
        }
    };
    let peer = match info.kind {
        ListenerKind::Tcp => peer.as_socket().map_or(Peer::Unix, Peer::Tcp),
        ListenerKind::Unix => Peer::Unix,
    };
    let conn_info = Arc::new(ConnInfo::new(peer, info.clone(), shared.shutdown.clone()));
    let shared = shared.clone();
    tokio::spawn(async move {
        connection::serve(conn, conn_info, shared).await;
        done();
    });
}

/// Accepts one connection, non-blocking and close-on-exec from the start.
async fn accept(listener: &AsyncFd<Socket>) -> io::Result<(Socket, SockAddr)> {
    loop {
        let mut guard = listener.readable().await?;
        let result = guard.try_io(|l| {
            // SAFETY: `try_init` hands us storage large enough for any socket address and
            // its length; the listening descriptor stays open while `l` is borrowed.
            let (fd, addr) = unsafe {
                SockAddr::try_init(|storage, len| {
                    let fd = libc::accept4(
                        l.as_raw_fd(),
                        storage.cast(),
                        len,
                        libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    );
                    if fd < 0 {
                        Err(io::Error::last_os_error())
                    } else {
                        Ok(fd)
                    }
                })
            }?;
            // SAFETY: accept4 returned a new descriptor that nothing else owns.
            let socket = unsafe { Socket::from_raw_fd(fd) };
            Ok((socket, addr))
        });
        match result {
            Ok(Err(err)) if err.kind() == io::ErrorKind::Interrupted => continue,
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}

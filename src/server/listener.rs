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
use super::conn_info::{ConnInfo, ListenerInfo, ListenerKind, Peer, Security};
use super::connection;
use super::dispatch::{Dispatcher, EventLog, LogLevel};
use super::exclusive::ExclusiveGate;
use super::proxy_header::Refusals;
use super::ratelimit::{suppressed_note, RateLimit, Verdict};
use super::responder::OutputLimits;
use super::shared::Shared;
use super::shutdown::{Shutdown, ShutdownSignal};
use super::socket::{register, Conn};
use super::static_files::StaticFiles;
use super::tls::Acceptor;
use super::tracking::Observer;
use crate::config::Config;
use crate::observe::metrics::{self, Counter};

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
    pub sharing: Sharing,
}

/// Who else uses a listening socket: decides how it is watched and what a shutdown
/// does to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sharing {
    /// Bound for this process alone: watched by the reactor, and taken out of the
    /// listening state at shutdown, so new connections are refused at once.
    Owned,
    /// Owned by someone who outlives this server (systemd, a descriptor passed with
    /// `fd://`, a supervisor's `SO_REUSEPORT` socket for this worker): watched by the
    /// reactor, left listening at shutdown for its owner.
    Inherited,
    /// Shared with the other worker processes: accepted through an `ExclusiveGate` (one
    /// worker woken per connection), left listening at shutdown.
    Workers,
}

/// Counts open connections (and running accept loops) so shutdown can wait for them.
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
    /// Duplicates of the `Owned` listening sockets, to stop them listening at shutdown.
    listening: Vec<Socket>,
    shutdown: Arc<ShutdownSignal>,
    count: Arc<ConnCount>,
}

/// What a server runs on besides its configuration and the application's listeners.
pub struct Services {
    pub dispatcher: Arc<dyn Dispatcher>,
    pub log: Arc<dyn EventLog>,
    pub observer: Arc<Observer>,
    /// The metrics listener's socket (`metrics_listen`), bound and listening.
    pub metrics: Option<Socket>,
    /// The TLS sessions' maker (`certfile`), which the TLS listeners need.
    pub tls: Option<Arc<Acceptor>>,
}

/// Starts the I/O runtime and accepts on every listener.
pub fn start(
    config: Config,
    listeners: Vec<ListenerSpec>,
    services: Services,
) -> io::Result<Running> {
    let Services {
        dispatcher,
        log,
        observer,
        metrics: metrics_socket,
        tls,
    } = services;
    if tls.is_none() && listeners.iter().any(|l| l.info.security == Security::Tls) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a listener speaks TLS but no certfile is set",
        ));
    }
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
    let statics = StaticFiles::open(&config.statics)
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
    if let Some(note) = statics.as_ref().and_then(StaticFiles::opener_note) {
        log.log(LogLevel::Warning, note.to_owned());
    }
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
        refusals: Refusals::new(log.clone()),
        log: log.clone(),
        shutdown: shutdown.clone(),
        observer,
        statics,
        tls,
    });
    let mut listening = Vec::with_capacity(listeners.len());
    {
        let _enter = runtime.enter();
        if let Some(socket) = metrics_socket {
            runtime.spawn(super::metrics_endpoint::serve(
                socket,
                shutdown.clone(),
                log,
            ));
        }
        for spec in listeners {
            spec.socket.set_nonblocking(true)?;
            if spec.sharing == Sharing::Owned {
                listening.push(spec.socket.try_clone()?);
            }
            let source = Source::new(spec.socket, spec.sharing)?;
            // Counted like a connection, so that a shutdown waits for the loop to
            // have served what it accepted on its way out (`Source::leave`).
            let guard = ConnGuard::new(&count);
            runtime.spawn(accept_loop(
                guard,
                source,
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
    _counted: ConnGuard,
    mut source: Source,
    info: Arc<ListenerInfo>,
    shared: Arc<Shared>,
    limit: Arc<Semaphore>,
    count: Arc<ConnCount>,
) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut errors = AcceptErrors::default();
    while !shutdown.is_closing() {
        let Some(permit) = place_under_limit(&limit, &shared, &mut shutdown).await else {
            break;
        };
        let accepted = tokio::select! {
            biased;
            _ = shutdown.recv() => break,
            r = source.accept() => r,
        };
        match accepted {
            Ok((socket, peer)) => {
                errors.recovered(&shared);
                serve_accepted(socket, peer, Some(permit), &info, &shared, &count);
            }
            // The listener was taken down by `begin_shutdown`.
            Err(_) if shutdown.is_closing() => break,
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
                // Whoever owns the socket (a supervisor draining its workers) took it
                // out of the listening state.
                shared.log.log(
                    LogLevel::Info,
                    "stopped accepting: the listening socket was shut down".into(),
                );
                break;
            }
            Err(err) => errors.failed(&err, &shared).await,
        }
    }
    // With a listener shared by workers, what is pending may have woken this worker
    // alone: it is served here (its responses close), not left for a wake-up that
    // never comes.
    for (socket, peer) in source.leave() {
        let permit = limit.clone().try_acquire_owned().ok();
        serve_accepted(socket, peer, permit, &info, &shared, &count);
    }
}

/// Starts an accepted connection, counted until it ends (and holding its place under
/// the limit, when it has one).
fn serve_accepted(
    socket: Socket,
    peer: SockAddr,
    permit: Option<OwnedSemaphorePermit>,
    info: &Arc<ListenerInfo>,
    shared: &Arc<Shared>,
    count: &Arc<ConnCount>,
) {
    let guard = ConnGuard::new(count);
    start_connection(socket, peer, info, shared, move || {
        drop(guard);
        drop(permit);
    });
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
struct AcceptErrors(RateLimit);

impl Default for AcceptErrors {
    fn default() -> AcceptErrors {
        AcceptErrors(RateLimit::new(ACCEPT_ERROR_REPORT))
    }
}

impl AcceptErrors {
    /// Logs `err` if a report is due, and backs off when the process is out of
    /// descriptors or memory instead of spinning.
    async fn failed(&mut self, err: &io::Error, shared: &Shared) {
        if err.kind() == io::ErrorKind::ConnectionAborted {
            return;
        }
        if let Verdict::Say { suppressed } = self.0.hit(Instant::now()) {
            if shared.config.log_socket_errors {
                let note = suppressed_note(suppressed);
                shared.log.log(
                    LogLevel::Warning,
                    format!("server accept() threw an exception: {err}{note}"),
                );
            }
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
        let unsaid = self.0.end_run();
        if unsaid > 0 && shared.config.log_socket_errors {
            shared.log.log(
                LogLevel::Info,
                format!("server accept() works again ({unsaid} failures since the last report)"),
            );
        }
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
    metrics::count(Counter::Accepted, 1);
    if info.kind == ListenerKind::Tcp {
        let _ = socket.set_tcp_nodelay(true);
        let _ = socket.set_tcp_notsent_lowat(NOTSENT_LOWAT);
    }
    let conn = match info.security {
        Security::Cleartext => Conn::new(socket),
        Security::Tls => match shared.tls.as_ref().map(|tls| tls.session()) {
            Some(Ok(session)) => Conn::tls(socket, session),
            Some(Err(err)) => Err(io::Error::other(err)),
            None => Err(io::Error::other("no TLS configuration")),
        },
    };
    let conn = match conn {
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

/// Where an accept loop learns that a connection is pending.
enum Source {
    Reactor(AsyncFd<Socket>),
    Gate { socket: Socket, gate: ExclusiveGate },
}

impl Source {
    fn new(socket: Socket, sharing: Sharing) -> io::Result<Source> {
        Ok(match sharing {
            Sharing::Owned | Sharing::Inherited => Source::Reactor(register(socket)?),
            Sharing::Workers => Source::Gate {
                gate: ExclusiveGate::new(socket.as_raw_fd())?,
                socket,
            },
        })
    }

    /// Stops watching the listener; with a shared listener, also accepts whatever is
    /// pending (connections whose wake-up came to this worker).
    fn leave(&mut self) -> Vec<(Socket, SockAddr)> {
        let Source::Gate { socket, gate } = self else {
            return Vec::new();
        };
        gate.leave();
        let mut pending = Vec::new();
        while let Ok(accepted) = accept4(socket) {
            pending.push(accepted);
        }
        pending
    }

    /// Accepts one connection, non-blocking and close-on-exec from the start.
    async fn accept(&mut self) -> io::Result<(Socket, SockAddr)> {
        match self {
            Source::Reactor(listener) => loop {
                let mut guard = listener.readable().await?;
                match guard.try_io(|l| accept4(l.get_ref())) {
                    Ok(Err(err)) if err.kind() == io::ErrorKind::Interrupted => continue,
                    Ok(r) => return r,
                    Err(_would_block) => continue,
                }
            },
            Source::Gate { socket, gate } => loop {
                gate.readable().await;
                // One connection per turn, then the turn goes back (to the tail of the
                // queue): a burst of connections is spread over the idle workers
                // instead of going to the first one woken.
                match accept4(socket) {
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                    r => {
                        gate.drained();
                        if matches!(&r, Err(err) if err.kind() == io::ErrorKind::WouldBlock) {
                            continue;
                        }
                        return r;
                    }
                }
            },
        }
    }
}

/// One `accept4(2)` on a non-blocking listener.
fn accept4(listener: &Socket) -> io::Result<(Socket, SockAddr)> {
    // SAFETY: `try_init` hands us storage large enough for any socket address and its
    // length; the listening descriptor stays open while `listener` is borrowed.
    let (fd, addr) = unsafe {
        SockAddr::try_init(|storage, len| {
            let fd = libc::accept4(
                listener.as_raw_fd(),
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
    Ok((unsafe { Socket::from_raw_fd(fd) }, addr))
}

//! `tapster._tapster.Server`: the object the Python layer builds with the application,
//! the validated engine options (`options::EngineConfig`) and the bound listening
//! sockets. `run()` starts the I/O runtime and
//! the worker pool and blocks (GIL released) until `close()` or a signal; it then shuts
//! down gracefully.

use std::os::fd::FromRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use socket2::Socket;

use super::environ::EnvironTemplate;
use super::exchange::AppContext;
use super::file_wrapper::{FileWrapper, ZeroCopyTypes};
use super::log::{Control, Loggers};
use super::monitor::{InFlight, Limits};
use super::observe_py::LoggerSink;
use super::options::EngineConfig;
use super::pool::{Pool, PoolShared, REQUEST_LIMIT};
use super::signals::SignalWaker;
use super::start_response::ResponseSettings;
use super::WsgiConfig;
use crate::config::{AccessLogTarget, Config};
use crate::observe::access_log::{AccessLog, Destination};
use crate::observe::metrics;
use crate::server::tls::Acceptor;
use crate::server::tracking::Observer;
use crate::server::{
    self, Dispatcher, EventLog, ListenerInfo, ListenerKind, ListenerSpec, LogLevel, Security,
    Services, Sharing,
};

/// How often the thread in `run()` wakes to let Python handle signals (main thread only).
const SIGNAL_POLL: Duration = Duration::from_millis(100);

#[pyclass(module = "tapster._tapster", name = "Server", frozen)]
pub struct PyServer {
    app: Py<PyAny>,
    config: Config,
    wsgi: WsgiConfig,
    listeners: Mutex<Option<Vec<ListenerSpec>>>,
    /// The metrics listener (`metrics_listen`), until `run()` takes it.
    metrics: Mutex<Option<Socket>>,
    control: Arc<Control>,
    /// The running server's observer (for `reopen_logs`).
    observer: Mutex<Option<Arc<Observer>>>,
    /// The TLS listeners' sessions maker (`certfile`), kept for `reload_certificates`.
    tls: Option<Arc<Acceptor>>,
}

/// One listener as the Python layer describes it: `(fileno, "tcp" | "unix",
/// server_port, "owned" | "inherited" | "workers", "cleartext" | "tls")`.
type ListenerTuple = (i32, String, String, String, String);

/// A duplicate of descriptor `fd`, owned by the engine.
fn duplicate(fd: i32) -> PyResult<Socket> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor the caller says is open returns a new
    // descriptor (or -1); it does not touch memory.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(PyOSError::new_err(
            std::io::Error::last_os_error().to_string(),
        ));
    }
    // SAFETY: `dup` is a fresh descriptor that nothing else owns.
    Ok(unsafe { Socket::from_raw_fd(dup) })
}

fn listener_from(
    (fd, kind, server_port, sharing, security): ListenerTuple,
) -> PyResult<ListenerSpec> {
    let security = match security.as_str() {
        "cleartext" => Security::Cleartext,
        "tls" => Security::Tls,
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown listener security {other:?}"
            )))
        }
    };
    let kind = match kind.as_str() {
        "tcp" => ListenerKind::Tcp,
        "unix" => ListenerKind::Unix,
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown listener kind {other:?}"
            )))
        }
    };
    let sharing = match sharing.as_str() {
        "owned" => Sharing::Owned,
        "inherited" => Sharing::Inherited,
        "workers" => Sharing::Workers,
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown listener sharing {other:?}"
            )))
        }
    };
    let socket = duplicate(fd)?;
    Ok(ListenerSpec {
        socket,
        info: Arc::new(ListenerInfo {
            kind,
            security,
            server_port,
            app_data: Default::default(),
        }),
        sharing,
    })
}

#[pymethods]
impl PyServer {
    /// `options`: the validated engine options. `listeners`: `(fileno, "tcp" |
    /// "unix", server_port, sharing, security)` for each bound, listening socket, where
    /// sharing is `owned` (this process's alone: refused at shutdown), `inherited` (left
    /// listening for its owner) or `workers` (shared with other worker processes), and
    /// security `cleartext` or `tls` (which needs `certfile`); the server keeps its own
    /// duplicates of the descriptors. The certificate files are read here. `metrics`: the descriptor of
    /// the bound, listening metrics socket (`metrics_listen`), if any.
    #[new]
    #[pyo3(signature = (app, options, listeners, metrics=None))]
    fn new(
        app: Py<PyAny>,
        options: PyRef<'_, EngineConfig>,
        listeners: Vec<ListenerTuple>,
        metrics: Option<i32>,
    ) -> PyResult<PyServer> {
        let (config, wsgi) = (options.config.clone(), options.wsgi.clone());
        let listeners = listeners
            .into_iter()
            .map(listener_from)
            .collect::<PyResult<Vec<_>>>()?;
        let tls = config
            .tls
            .as_ref()
            .map(|settings| Acceptor::new(settings).map(Arc::new))
            .transpose()
            .map_err(PyValueError::new_err)?;
        Ok(PyServer {
            app,
            config,
            wsgi,
            tls,
            listeners: Mutex::new(Some(listeners)),
            metrics: Mutex::new(metrics.map(duplicate).transpose()?),
            control: Arc::new(Control::default()),
            observer: Mutex::new(None),
        })
    }

    /// Serves until `close()` is called or a signal handler raises; then stops accepting,
    /// lets requests in progress finish (up to `shutdown_timeout`), and returns (or
    /// re-raises what the signal handler raised).
    ///
    /// `tick`, when given, is called with no arguments once the server accepts, then
    /// about every 100 ms while it serves (on the thread running `run()`), and at once
    /// when `max_requests` is reached; what it raises stops the server as a signal
    /// handler's exception does. `max_requests` (a worker's, 0 for none): from that
    /// many requests on, responses close their connection.
    ///
    /// `wakeup_fd`: the read end of the pipe Python's `signal.set_wakeup_fd` writes to
    /// (-1: none). A signal then wakes `run()` at once instead of at its next poll.
    ///
    /// `report_fd`: in a supervised worker, the pipe to the supervisor (-1: none). A
    /// request past `request_timeout` is then answered 504 and the worker asks, on that
    /// pipe, to be replaced; without one it is only logged and counted.
    #[pyo3(signature = (tick=None, max_requests=0, wakeup_fd=-1, report_fd=-1))]
    fn run(
        &self,
        py: Python<'_>,
        tick: Option<Bound<'_, PyAny>>,
        max_requests: u64,
        wakeup_fd: i32,
        report_fd: i32,
    ) -> PyResult<()> {
        REQUEST_LIMIT.store(max_requests, std::sync::atomic::Ordering::Relaxed);
        let listeners = self
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("this server has already run"))?;
        if self.control.close_requested() {
            return Ok(());
        }
        let loggers = Arc::new(Loggers::new(py)?);
        let _signals = (wakeup_fd >= 0)
            .then(|| SignalWaker::start(wakeup_fd, self.control.clone()))
            .transpose()
            .map_err(|e| PyOSError::new_err(e.to_string()))?;
        let observer = self.observer(py)?;
        let report_fd = (report_fd >= 0).then_some(report_fd);
        let (pool, running) = self.start(py, listeners, &loggers, &observer, report_fd)?;
        let outcome = self.serve_until_stopped(py, &loggers, tick.as_ref());
        self.shut_down(py, running, pool, &loggers);
        match loggers.take_interrupt() {
            Some(err) if outcome.is_ok() => Err(err),
            _ => outcome,
        }
    }

    /// Asks `run()` to stop; safe from any thread, and before `run()`.
    fn close(&self) {
        self.control.request_close();
    }

    /// Reads `certfile`, `keyfile` and `ca_certs` again (SIGHUP): connections accepted
    /// from now on use them; open ones keep their session. False without TLS; on an
    /// error (ValueError, naming the file) the files read before stay in use.
    fn reload_certificates(&self) -> PyResult<bool> {
        match &self.tls {
            None => Ok(false),
            Some(tls) => tls.reload().map(|()| true).map_err(PyValueError::new_err),
        }
    }

    /// Reopens the access log file at its path (SIGUSR1, after logrotate moved it).
    fn reopen_logs(&self) {
        let observer = self.observer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(log) = observer.as_ref().and_then(|o| o.access_log()) {
            log.reopen();
        }
    }
}

impl PyServer {
    /// The access log (opened now, so a bad path fails `run()` at once) and the
    /// metrics region (this process's slot, unless a supervisor gave it one already).
    fn observer(&self, py: Python<'_>) -> PyResult<Arc<Observer>> {
        let metrics_socket = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
        // A worker's region and slot come from its supervisor (none: all were taken).
        if metrics_socket.is_some() && !metrics::exists() {
            metrics::create()
                .and_then(|()| metrics::attach(0))
                .map_err(|e| PyOSError::new_err(format!("metrics: {e}")))?;
        }
        drop(metrics_socket);
        let dest = match &self.config.access_log {
            AccessLogTarget::Off => None,
            AccessLogTarget::File(path) => Some(Destination::File(path.clone())),
            AccessLogTarget::Stderr => Some(Destination::Stderr),
            AccessLogTarget::Logger => Some(Destination::Sink(Box::new(LoggerSink::new(py)?))),
        };
        let access = match dest {
            None => None,
            Some(dest) => {
                let control = self.control.clone();
                let report = Arc::new(move |line: String| control.log(LogLevel::Warning, line));
                let format = self.config.access_log_format.clone();
                Some(
                    AccessLog::start(format, dest, report)
                        .map_err(|e| PyOSError::new_err(e.to_string()))?,
                )
            }
        };
        let observer = Arc::new(Observer::new(access));
        *self.observer.lock().unwrap_or_else(|e| e.into_inner()) = Some(observer.clone());
        Ok(observer)
    }

    /// Starts the worker pool and the I/O runtime on `listeners`.
    fn start(
        &self,
        py: Python<'_>,
        listeners: Vec<ListenerSpec>,
        loggers: &Arc<Loggers>,
        observer: &Arc<Observer>,
        report_fd: Option<i32>,
    ) -> PyResult<(Pool, server::Running)> {
        let log: Arc<dyn EventLog> = self.control.clone();
        let limits = Limits {
            dump_after: self.config.dump_slow_requests_after,
            timeout: self.config.request_timeout,
        };
        let mut pool_shared = PoolShared::new(self.config.threads, log.clone());
        if limits.any() {
            let in_flight = Arc::new(InFlight::new(self.config.threads, limits, report_fd));
            in_flight
                .start_monitor(log.clone(), self.config.ident.clone())
                .map_err(|e| PyOSError::new_err(e.to_string()))?;
            pool_shared = pool_shared.with_in_flight(in_flight);
        }
        let pool_shared = Arc::new(pool_shared);
        let file_wrapper = py.get_type::<FileWrapper>().into_any().unbind();
        let ctx = Arc::new(AppContext {
            app: self.app.clone_ref(py),
            template: EnvironTemplate::new(
                py,
                &self.wsgi,
                self.config.ident.as_deref(),
                file_wrapper,
            )?,
            loggers: loggers.clone(),
            settings: Arc::new(ResponseSettings {
                ident: self.config.ident.clone(),
                expose_tracebacks: self.wsgi.expose_tracebacks,
            }),
            pool: pool_shared.clone(),
            zero_copy: ZeroCopyTypes::new(py)?,
        });
        let pool =
            Pool::start(pool_shared.clone(), ctx).map_err(|e| PyOSError::new_err(e.to_string()))?;
        let dispatcher: Arc<dyn Dispatcher> = pool_shared;
        let services = Services {
            dispatcher,
            log,
            observer: observer.clone(),
            metrics: self
                .metrics
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
            tls: self.tls.clone(),
        };
        match server::start(self.config.clone(), listeners, services) {
            Ok(running) => Ok((pool, running)),
            Err(err) => {
                py.detach(|| pool.shutdown(Duration::from_secs(1)));
                Err(PyOSError::new_err(err.to_string()))
            }
        }
    }

    /// Blocks (GIL released) until `close()`, a signal handler or `tick` raises; on
    /// the main thread, or with a `tick`, it wakes every `SIGNAL_POLL` to let Python run
    /// its signal handlers and the tick.
    fn serve_until_stopped(
        &self,
        py: Python<'_>,
        loggers: &Loggers,
        tick: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let poll = (tick.is_some() || is_main_thread(py)?).then_some(SIGNAL_POLL);
        loop {
            if let Some(tick) = tick {
                tick.call0()?;
            }
            py.detach(|| self.control.wait(poll));
            self.control.flush_logs(py, loggers);
            if let Some(err) = loggers.take_interrupt() {
                return Err(err);
            }
            if self.control.close_requested() {
                return Ok(());
            }
            py.check_signals()?;
        }
    }

    /// The graceful shutdown: stop accepting, let connections finish for up to
    /// `shutdown_timeout`, drop the rest, then stop the pool (requests still queued are
    /// dropped, threads stuck in the application are left behind and counted).
    fn shut_down(&self, py: Python<'_>, running: server::Running, pool: Pool, loggers: &Loggers) {
        running.begin_shutdown();
        loggers.log(
            py,
            LogLevel::Info,
            "Shutting down: no longer accepting connections",
        );
        let deadline = Instant::now() + self.config.shutdown_timeout;
        let (open, waited) = self.wait_for_connections(py, &running, deadline, loggers);
        if open > 0 {
            loggers.log(
                py,
                LogLevel::Warning,
                &format!(
                    "{open} connection(s) still open after the shutdown timeout; closing them"
                ),
            );
        }
        // Connections go first: dropping one mid-response fails that response, and the
        // still-running pool closes its iterator (`close()` runs for every response).
        py.detach(|| running.stop());
        let remaining = match waited {
            Waited::Interrupted => Duration::from_millis(100),
            Waited::Done => deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(100)),
        };
        let busy = py.detach(|| pool.shutdown(remaining));
        if busy > 0 {
            loggers.log(
                py,
                LogLevel::Warning,
                &format!("{busy} thread(s) still running"),
            );
        }
        // The access log's last lines (its writer may need the GIL for the logger sink).
        let observer = self
            .observer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(observer) = observer {
            py.detach(|| observer.close());
        }
        self.control.flush_logs(py, loggers);
        loggers.log(py, LogLevel::Info, "Server stopped");
    }

    /// Waits until every connection has closed or `deadline` passes (or a second
    /// interrupt comes); returns how many are still open, and why it stopped waiting.
    fn wait_for_connections(
        &self,
        py: Python<'_>,
        running: &server::Running,
        deadline: Instant,
        loggers: &Loggers,
    ) -> (usize, Waited) {
        let mut open = 1;
        while open > 0 {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let slice = (deadline - now).min(SIGNAL_POLL);
            open = py.detach(|| running.wait_for_connections(slice));
            self.control.flush_logs(py, loggers);
            if loggers.take_interrupt().is_some() || py.check_signals().is_err() {
                // A second interrupt: stop at once.
                return (open, Waited::Interrupted);
            }
        }
        (open, Waited::Done)
    }
}

/// How waiting for connections at shutdown ended.
enum Waited {
    /// All closed, or the deadline passed.
    Done,
    /// A second interrupt: the threads get no more time either.
    Interrupted,
}

fn is_main_thread(py: Python<'_>) -> PyResult<bool> {
    let threading = py.import("threading")?;
    let current = threading.call_method0("current_thread")?;
    let main = threading.call_method0("main_thread")?;
    Ok(current.is(&main))
}

//! `tapster._tapster.Server`: the object the Python layer builds with the application,
//! the cast options and the bound listening sockets. `run()` starts the I/O runtime and
//! the worker pool and blocks (GIL released) until `close()` or a signal; it then shuts
//! down gracefully.

use std::os::fd::FromRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use socket2::Socket;

use super::environ::EnvironTemplate;
use super::exchange::AppContext;
use super::file_wrapper::{FileWrapper, ZeroCopyTypes};
use super::log::{Control, Loggers};
use super::pool::{Pool, PoolShared};
use super::start_response::ResponseSettings;
use super::WsgiConfig;
use crate::config::Config;
use crate::proxy::{self, ProxyConfig, TrustedPeers};
use crate::server::{
    self, Dispatcher, EventLog, ListenerInfo, ListenerKind, ListenerSpec, LogLevel,
};

/// How often the thread in `run()` wakes to let Python handle signals (main thread only).
const SIGNAL_POLL: Duration = Duration::from_millis(100);

#[pyclass(module = "tapster._tapster", name = "Server", frozen)]
pub struct PyServer {
    app: Py<PyAny>,
    config: Config,
    wsgi: WsgiConfig,
    listeners: Mutex<Option<Vec<ListenerSpec>>>,
    control: Arc<Control>,
}

/// Reads one option, falling back to `default` when it is absent or None.
fn opt<'py, T: FromPyObjectOwned<'py>>(
    options: &Bound<'py, PyDict>,
    name: &str,
    default: T,
) -> PyResult<T> {
    match options.get_item(name)? {
        Some(value) if !value.is_none() => value.extract::<T>().map_err(|e| {
            let e: PyErr = e.into();
            PyValueError::new_err(format!("invalid value for {name}: {e}"))
        }),
        _ => Ok(default),
    }
}

fn seconds(value: f64, name: &str) -> PyResult<Duration> {
    if !value.is_finite() || value <= 0.0 {
        return Err(PyValueError::new_err(format!(
            "{name} must be a positive number of seconds"
        )));
    }
    // Longer than a year is as good as forever, and stays clear of `Instant` overflow
    // and of tokio's timer range (about two years).
    const A_YEAR: f64 = 365.0 * 24.0 * 3600.0;
    Ok(Duration::from_secs_f64(value.min(A_YEAR)))
}

/// The options the engine takes (exported to Python as `ENGINE_OPTIONS`; the others
/// shape binding in the Python layer or have no effect).
pub const KNOWN_OPTIONS: &[&str] = &[
    "threads",
    "io_threads",
    "connection_limit",
    "recv_bytes",
    "inbuf_overflow",
    "outbuf_overflow",
    "outbuf_high_watermark",
    "inbuf_memory_budget",
    "outbuf_memory_budget",
    "outbuf_spill_budget",
    "channel_timeout",
    "header_timeout",
    "min_body_rate",
    "max_request_header_size",
    "max_request_line_size",
    "max_request_headers",
    "max_request_body_size",
    "shutdown_timeout",
    "ident",
    "log_socket_errors",
    "url_scheme",
    "url_prefix",
    "server_name",
    "expose_tracebacks",
    "clear_untrusted_proxy_headers",
    "log_untrusted_proxy_headers",
    "trusted_proxy",
    "trusted_proxy_count",
    "trusted_proxy_headers",
];

fn parse_options(options: &Bound<'_, PyDict>) -> PyResult<(Config, WsgiConfig)> {
    for key in options.keys() {
        let key: String = key.extract()?;
        if !KNOWN_OPTIONS.contains(&key.as_str()) {
            return Err(PyValueError::new_err(format!("Unknown adjustment '{key}'")));
        }
    }
    let d = Config::default();
    let config = Config {
        threads: opt(options, "threads", d.threads)?,
        io_threads: opt(options, "io_threads", d.io_threads)?,
        connection_limit: opt(options, "connection_limit", d.connection_limit)?,
        recv_bytes: opt(options, "recv_bytes", d.recv_bytes)?,
        inbuf_overflow: opt(options, "inbuf_overflow", d.inbuf_overflow)?,
        outbuf_overflow: opt(options, "outbuf_overflow", d.outbuf_overflow)?,
        outbuf_high_watermark: opt(options, "outbuf_high_watermark", d.outbuf_high_watermark)?,
        inbuf_memory_budget: opt(options, "inbuf_memory_budget", d.inbuf_memory_budget)?,
        outbuf_memory_budget: opt(options, "outbuf_memory_budget", d.outbuf_memory_budget)?,
        outbuf_spill_budget: opt(options, "outbuf_spill_budget", d.outbuf_spill_budget)?,
        channel_timeout: seconds(
            opt(options, "channel_timeout", d.channel_timeout.as_secs_f64())?,
            "channel_timeout",
        )?,
        header_timeout: seconds(
            opt(options, "header_timeout", d.header_timeout.as_secs_f64())?,
            "header_timeout",
        )?,
        min_body_rate: opt(options, "min_body_rate", d.min_body_rate)?,
        max_request_header_size: opt(
            options,
            "max_request_header_size",
            d.max_request_header_size,
        )?,
        max_request_line_size: opt(options, "max_request_line_size", d.max_request_line_size)?,
        max_request_headers: opt(options, "max_request_headers", d.max_request_headers)?,
        max_request_body_size: opt(options, "max_request_body_size", d.max_request_body_size)?,
        shutdown_timeout: seconds(
            opt(
                options,
                "shutdown_timeout",
                d.shutdown_timeout.as_secs_f64(),
            )?,
            "shutdown_timeout",
        )?,
        ident: match options.get_item("ident")? {
            None => d.ident,
            Some(v) if v.is_none() => None,
            Some(v) => {
                let s: String = v.extract()?;
                if s.is_empty() {
                    None
                } else {
                    Some(s)
                }
            }
        },
        log_socket_errors: opt(options, "log_socket_errors", d.log_socket_errors)?,
    };
    config.validate().map_err(PyValueError::new_err)?;
    if let Some(ident) = &config.ident {
        if ident.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err(PyValueError::new_err(
                "ident must not contain control characters",
            ));
        }
    }
    let w = WsgiConfig::default();
    let wsgi = WsgiConfig {
        url_scheme: opt(options, "url_scheme", w.url_scheme)?,
        url_prefix: opt(options, "url_prefix", w.url_prefix)?,
        server_name: opt(options, "server_name", w.server_name)?,
        expose_tracebacks: opt(options, "expose_tracebacks", w.expose_tracebacks)?,
        proxy: parse_proxy_options(options)?,
    };
    Ok((config, wsgi))
}

fn parse_proxy_options(options: &Bound<'_, PyDict>) -> PyResult<ProxyConfig> {
    let trusted: Option<String> = opt(options, "trusted_proxy", None)?;
    let trusted = TrustedPeers::parse(trusted.as_deref()).map_err(PyValueError::new_err)?;
    let names: Vec<String> = opt(options, "trusted_proxy_headers", Vec::new())?;
    let mut headers = 0;
    for name in &names {
        let bit = proxy::HEADERS
            .iter()
            .find(|(_, _, display)| display.eq_ignore_ascii_case(name))
            .map(|(bit, _, _)| *bit)
            .ok_or_else(|| {
                PyValueError::new_err(format!("unknown trusted proxy header {name:?}"))
            })?;
        headers |= bit;
    }
    let count: usize = opt(options, "trusted_proxy_count", 1)?;
    if count == 0 {
        return Err(PyValueError::new_err(
            "trusted_proxy_count must be at least 1",
        ));
    }
    Ok(ProxyConfig {
        trusted,
        count,
        headers,
        clear_untrusted: opt(options, "clear_untrusted_proxy_headers", true)?,
        log_untrusted: opt(options, "log_untrusted_proxy_headers", false)?,
    })
}

fn listener_from(fd: i32, kind: &str, server_port: String) -> PyResult<ListenerSpec> {
    let kind = match kind {
        "tcp" => ListenerKind::Tcp,
        "unix" => ListenerKind::Unix,
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown listener kind {other:?}"
            )))
        }
    };
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor the caller says is open returns a new
    // descriptor (or -1); it does not touch memory.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(PyOSError::new_err(
            std::io::Error::last_os_error().to_string(),
        ));
    }
    // SAFETY: `dup` is a fresh descriptor that nothing else owns.
    let socket = unsafe { Socket::from_raw_fd(dup) };
    Ok(ListenerSpec {
        socket,
        info: Arc::new(ListenerInfo {
            kind,
            server_port,
            app_data: Default::default(),
        }),
    })
}

#[pymethods]
impl PyServer {
    /// `listeners`: `(fileno, "tcp" | "unix", server_port)` for each bound, listening
    /// socket; the server keeps its own duplicates of the descriptors.
    #[new]
    fn new(
        app: Py<PyAny>,
        options: &Bound<'_, PyDict>,
        listeners: Vec<(i32, String, String)>,
    ) -> PyResult<PyServer> {
        let (config, wsgi) = parse_options(options)?;
        let listeners = listeners
            .into_iter()
            .map(|(fd, kind, port)| listener_from(fd, &kind, port))
            .collect::<PyResult<Vec<_>>>()?;
        Ok(PyServer {
            app,
            config,
            wsgi,
            listeners: Mutex::new(Some(listeners)),
            control: Arc::new(Control::default()),
        })
    }

    /// Serves until `close()` is called or a signal handler raises; then stops accepting,
    /// lets requests in progress finish (up to `shutdown_timeout`), and returns (or
    /// re-raises what the signal handler raised).
    fn run(&self, py: Python<'_>) -> PyResult<()> {
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
        let log: Arc<dyn EventLog> = self.control.clone();
        let pool_shared = Arc::new(PoolShared::new(self.config.threads, log.clone()));
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
        let running = match server::start(self.config.clone(), listeners, dispatcher, log) {
            Ok(r) => r,
            Err(err) => {
                py.detach(|| pool.shutdown(Duration::from_secs(1)));
                return Err(PyOSError::new_err(err.to_string()));
            }
        };
        let on_main_thread = is_main_thread(py)?;
        let poll = on_main_thread.then_some(SIGNAL_POLL);
        let outcome = loop {
            py.detach(|| self.control.wait(poll));
            self.control.flush_logs(py, &loggers);
            if self.control.close_requested() {
                break Ok(());
            }
            if let Err(err) = py.check_signals() {
                break Err(err);
            }
        };

        running.begin_shutdown();
        let deadline = Instant::now() + self.config.shutdown_timeout;
        let mut open = 1;
        while open > 0 {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let slice = (deadline - now).min(SIGNAL_POLL);
            open = py.detach(|| running.wait_for_connections(slice));
            self.control.flush_logs(py, &loggers);
            if py.check_signals().is_err() {
                // A second interrupt: stop waiting.
                break;
            }
        }
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
        let remaining = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        let busy = py.detach(|| pool.shutdown(remaining));
        if busy > 0 {
            loggers.log(
                py,
                LogLevel::Warning,
                &format!("{busy} thread(s) still running"),
            );
        }
        self.control.flush_logs(py, &loggers);
        outcome
    }

    /// Asks `run()` to stop; safe from any thread, and before `run()`.
    fn close(&self) {
        self.control.request_close();
    }
}

fn is_main_thread(py: Python<'_>) -> PyResult<bool> {
    let threading = py.import("threading")?;
    let current = threading.call_method0("current_thread")?;
    let main = threading.call_method0("main_thread")?;
    Ok(current.is(&main))
}

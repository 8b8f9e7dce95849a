//! The engine options as the Python layer hands them over (cast from keyword
//! arguments, the command line or a PasteDeploy file by the one table of option
//! records in `tapster/options.py`): every engine option is required here, extracted
//! into its field, and validated once, with an error that names it. Nothing here has
//! a default: the defaults live in the Python records alone.

use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::WsgiConfig;
use crate::config::{
    AccessLogTarget, Config, Http2Config, ProxyProtocol, StaticConfig, StaticMount, StaticOpen,
    TlsConfig,
};
use crate::observe::access_format::Format;
use crate::proxy::{self, ProxyConfig, TrustedPeers};
use crate::server::tls::Acceptor;

/// The options the engine takes (exported to Python as `ENGINE_OPTIONS`, where a test
/// checks them against the records that say `engine=True`).
pub const ENGINE_OPTIONS: &[&str] = &[
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
    "proxy_protocol",
    "access_log",
    "access_log_format",
    "access_log_logger",
    "dump_slow_requests_after",
    "request_timeout",
    "static",
    "static_fallthrough",
    "static_index",
    "static_follow_symlinks",
    "static_max_age",
    "static_immutable_pattern",
    "certfile",
    "keyfile",
    "ca_certs",
    "cert_reqs",
    "tls_min_version",
    "http2",
    "h2_max_concurrent_streams",
    "h2_initial_window_size",
    "h2_connection_window_size",
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

/// Validated engine options, made once (before any socket is bound) and handed to
/// `Server`.
#[pyclass(module = "tapster._tapster", name = "EngineConfig", frozen)]
pub struct EngineConfig {
    pub config: Config,
    pub wsgi: WsgiConfig,
}

#[pymethods]
impl EngineConfig {
    /// `options`: every name of `ENGINE_OPTIONS`, with its cast value.
    #[new]
    fn new(options: &Bound<'_, PyDict>) -> PyResult<EngineConfig> {
        for key in options.keys() {
            let key: String = key.extract()?;
            if !ENGINE_OPTIONS.contains(&key.as_str()) {
                return Err(PyValueError::new_err(format!(
                    "{key:?} is not an engine option"
                )));
            }
        }
        let config = engine_config(options)?;
        let wsgi = WsgiConfig {
            url_scheme: required(options, "url_scheme")?,
            url_prefix: required(options, "url_prefix")?,
            server_name: required(options, "server_name")?,
            expose_tracebacks: required(options, "expose_tracebacks")?,
            proxy: proxy_config(options)?,
        };
        Ok(EngineConfig { config, wsgi })
    }
}

/// One option's value; its absence is an error (the Python layer always sends all).
fn required<'py, T: FromPyObjectOwned<'py>>(
    options: &Bound<'py, PyDict>,
    name: &str,
) -> PyResult<T> {
    let value = options
        .get_item(name)?
        .ok_or_else(|| PyValueError::new_err(format!("engine option {name} is missing")))?;
    value.extract::<T>().map_err(|e| {
        let e: PyErr = e.into();
        PyValueError::new_err(format!("invalid value for {name}: {e}"))
    })
}

/// A duration option given in seconds.
fn seconds(options: &Bound<'_, PyDict>, name: &str) -> PyResult<Duration> {
    let value: f64 = required(options, name)?;
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

/// A duration in seconds where 0 means off.
fn seconds_or_off(options: &Bound<'_, PyDict>, name: &str) -> PyResult<Option<Duration>> {
    let value: f64 = required(options, name)?;
    if value == 0.0 {
        return Ok(None);
    }
    seconds(options, name).map(Some)
}

/// `access_log` (a path, or `-` for standard error) or `access_log_logger`, and the
/// parsed `access_log_format`.
fn access_log(o: &Bound<'_, PyDict>) -> PyResult<(AccessLogTarget, Format)> {
    let path: Option<String> = required(o, "access_log")?;
    let logger: bool = required(o, "access_log_logger")?;
    let text: String = required(o, "access_log_format")?;
    let format = Format::parse(&text).map_err(PyValueError::new_err)?;
    let target = match (path.as_deref().filter(|p| !p.is_empty()), logger) {
        (Some(_), true) => {
            return Err(PyValueError::new_err(
                "access_log and access_log_logger exclude each other: the lines go to a file \
                 or to the logger tapster.access, not both",
            ))
        }
        (None, true) => AccessLogTarget::Logger,
        (None, false) => AccessLogTarget::Off,
        (Some("-"), false) => AccessLogTarget::Stderr,
        (Some(path), false) => AccessLogTarget::File(path.into()),
    };
    Ok((target, format))
}

/// `static` (entries `prefix=directory`) and the `static_*` options.
fn statics(o: &Bound<'_, PyDict>) -> PyResult<StaticConfig> {
    let entries: Vec<String> = required(o, "static")?;
    let mounts = entries
        .iter()
        .map(|entry| StaticMount::parse(entry))
        .collect::<Result<Vec<_>, _>>()
        .map_err(PyValueError::new_err)?;
    let follow: bool = required(o, "static_follow_symlinks")?;
    let pattern: Option<String> = required(o, "static_immutable_pattern")?;
    Ok(StaticConfig {
        mounts,
        fallthrough: required(o, "static_fallthrough")?,
        index: required(o, "static_index")?,
        open: if follow {
            StaticOpen::FollowSymlinks
        } else {
            StaticOpen::Beneath
        },
        max_age: required(o, "static_max_age")?,
        immutable_pattern: pattern.filter(|p| !p.is_empty()),
    })
}

/// `certfile` and the options around it; the files are read once here, so that a
/// bad one stops the start (before any worker is forked) with its name.
fn tls(o: &Bound<'_, PyDict>) -> PyResult<Option<TlsConfig>> {
    let certfile: Option<String> = required(o, "certfile")?;
    let keyfile: Option<String> = required(o, "keyfile")?;
    let ca_certs: Option<String> = required(o, "ca_certs")?;
    let cert_reqs: String = required(o, "cert_reqs")?;
    let min_version: String = required(o, "tls_min_version")?;
    let tls = TlsConfig::from_options(
        certfile.as_deref().filter(|s| !s.is_empty()),
        keyfile.as_deref().filter(|s| !s.is_empty()),
        ca_certs.as_deref().filter(|s| !s.is_empty()),
        &cert_reqs,
        &min_version,
    )
    .map_err(PyValueError::new_err)?;
    let http2: bool = required(o, "http2")?;
    let tls = tls.map(|settings| TlsConfig { http2, ..settings });
    if let Some(settings) = &tls {
        Acceptor::new(settings).map_err(PyValueError::new_err)?;
    }
    Ok(tls)
}

fn engine_config(o: &Bound<'_, PyDict>) -> PyResult<Config> {
    let ident: Option<String> = required(o, "ident")?;
    let (access_log, access_log_format) = access_log(o)?;
    let config = Config {
        threads: required(o, "threads")?,
        io_threads: required(o, "io_threads")?,
        connection_limit: required(o, "connection_limit")?,
        recv_bytes: required(o, "recv_bytes")?,
        inbuf_overflow: required(o, "inbuf_overflow")?,
        outbuf_overflow: required(o, "outbuf_overflow")?,
        outbuf_high_watermark: required(o, "outbuf_high_watermark")?,
        inbuf_memory_budget: required(o, "inbuf_memory_budget")?,
        outbuf_memory_budget: required(o, "outbuf_memory_budget")?,
        outbuf_spill_budget: required(o, "outbuf_spill_budget")?,
        channel_timeout: seconds(o, "channel_timeout")?,
        header_timeout: seconds(o, "header_timeout")?,
        min_body_rate: required(o, "min_body_rate")?,
        max_request_header_size: required(o, "max_request_header_size")?,
        max_request_line_size: required(o, "max_request_line_size")?,
        max_request_headers: required(o, "max_request_headers")?,
        max_request_body_size: required(o, "max_request_body_size")?,
        shutdown_timeout: seconds(o, "shutdown_timeout")?,
        ident: ident.filter(|s| !s.is_empty()),
        log_socket_errors: required(o, "log_socket_errors")?,
        proxy_protocol: proxy_protocol(o)?,
        access_log,
        access_log_format,
        dump_slow_requests_after: seconds_or_off(o, "dump_slow_requests_after")?,
        request_timeout: seconds_or_off(o, "request_timeout")?,
        statics: statics(o)?,
        tls: tls(o)?,
        http2: Http2Config {
            enabled: required(o, "http2")?,
            max_concurrent_streams: required(o, "h2_max_concurrent_streams")?,
            stream_window: required(o, "h2_initial_window_size")?,
            connection_window: required(o, "h2_connection_window_size")?,
        },
    };
    config.validate().map_err(PyValueError::new_err)?;
    Ok(config)
}

/// `proxy_protocol`, with the peers allowed to send the header (`trusted_proxy`, which
/// it needs: without it every connection would be refused).
fn proxy_protocol(o: &Bound<'_, PyDict>) -> PyResult<ProxyProtocol> {
    if !required::<bool>(o, "proxy_protocol")? {
        return Ok(ProxyProtocol::Off);
    }
    let trusted: Option<String> = required(o, "trusted_proxy")?;
    let trusted = TrustedPeers::parse(trusted.as_deref()).map_err(PyValueError::new_err)?;
    if trusted.is_nobody() {
        return Err(PyValueError::new_err(
            "proxy_protocol needs trusted_proxy: the load balancers allowed to send PROXY \
             headers (addresses or CIDR ranges, localhost for a Unix socket, * for every peer)",
        ));
    }
    Ok(ProxyProtocol::Required { trusted })
}

fn proxy_config(o: &Bound<'_, PyDict>) -> PyResult<ProxyConfig> {
    let trusted: Option<String> = required(o, "trusted_proxy")?;
    let trusted = TrustedPeers::parse(trusted.as_deref()).map_err(PyValueError::new_err)?;
    let names: Vec<String> = required(o, "trusted_proxy_headers")?;
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
    let count: usize = required(o, "trusted_proxy_count")?;
    if count == 0 {
        return Err(PyValueError::new_err(
            "trusted_proxy_count must be at least 1",
        ));
    }
    Ok(ProxyConfig {
        trusted,
        count,
        headers,
        clear_untrusted: required(o, "clear_untrusted_proxy_headers")?,
        log_untrusted: required(o, "log_untrusted_proxy_headers")?,
    })
}

//! Every server option, validated once at start-up into one read-only struct.
//!
//! Names follow Waitress's adjustments. The Python layer casts user input (strings from
//! the CLI or a PasteDeploy file) and resolves listen addresses; `Config::validate`
//! checks ranges here and names the offending option in its error.

use std::time::Duration;

use std::path::PathBuf;

use crate::http::request::HeadLimits;
use crate::observe::access_format::Format;
use crate::proxy::TrustedPeers;

#[derive(Clone, Debug)]
pub struct Config {
    /// Python worker threads that may run the application at the same time.
    pub threads: usize,
    /// Tokio I/O threads (socket reads, parsing, slow writes).
    pub io_threads: usize,
    /// Open client connections at most; beyond it new connections wait in the backlog.
    pub connection_limit: usize,
    /// Bytes asked of each `recv`.
    pub recv_bytes: usize,
    /// A request body moves to a temporary file at this size.
    pub inbuf_overflow: usize,
    /// Pending response bytes move to a temporary file beyond this size.
    pub outbuf_overflow: usize,
    /// Pending response bytes above which the application is paused.
    pub outbuf_high_watermark: usize,
    /// Request-body bytes all connections together may hold in memory; past it,
    /// bodies are received into temporary files.
    pub inbuf_memory_budget: u64,
    /// Queued response bytes all connections together may hold in memory; past it,
    /// queued output goes to temporary files.
    pub outbuf_memory_budget: u64,
    /// Queued response bytes all connections together may hold in temporary files;
    /// past it, a producer whose output is spilled is paused until it drains.
    pub outbuf_spill_budget: u64,
    /// Idle (no request in progress, nothing read or written) connections close after this.
    pub channel_timeout: Duration,
    /// A request head must arrive completely within this time of its first byte.
    pub header_timeout: Duration,
    /// After `header_timeout`, a request body must keep arriving at this many bytes a
    /// second on average (0: no minimum).
    pub min_body_rate: u64,
    pub max_request_header_size: usize,
    pub max_request_line_size: usize,
    pub max_request_headers: usize,
    pub max_request_body_size: u64,
    /// How long a graceful shutdown waits for in-flight requests.
    pub shutdown_timeout: Duration,
    /// Value of the Server header and SERVER_SOFTWARE; `None` sends no Server header.
    pub ident: Option<String>,
    pub log_socket_errors: bool,
    /// Whether every connection starts with a PROXY protocol header, and from whom.
    pub proxy_protocol: ProxyProtocol,
    /// Where the access log goes (`access_log`, `access_log_logger`).
    pub access_log: AccessLogTarget,
    /// How its lines look (`access_log_format`).
    pub access_log_format: Format,
    /// A request running this long is logged with its Python stack.
    pub dump_slow_requests_after: Option<Duration>,
    /// A request running this long is given up on (answered 504 in a worker).
    pub request_timeout: Option<Duration>,
    /// Static file mounts and how they answer (`static`, `static_*`).
    pub statics: StaticConfig,
    /// The certificate and TLS settings of the listeners that speak TLS (`certfile`,
    /// `keyfile`, `ca_certs`, `cert_reqs`, `tls_min_version`); `None` without `certfile`.
    pub tls: Option<TlsConfig>,
    /// HTTP/2 beside HTTP/1.1 (`http2`, `h2_*`).
    pub http2: Http2Config,
}

/// `http2` and its limits (plain data; `server/http2.rs` applies them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Http2Config {
    /// Whether HTTP/2 is spoken: h2 by ALPN on TLS listeners, h2c by prior knowledge
    /// on cleartext ones.
    pub enabled: bool,
    /// Streams a client may have open at once (`h2_max_concurrent_streams`).
    pub max_concurrent_streams: u32,
    /// Request-body bytes a client may send on one stream before the server has read
    /// them (`h2_initial_window_size`).
    pub stream_window: u32,
    /// The same for all the streams of a connection together (`h2_connection_window_size`).
    pub connection_window: u32,
}

impl Default for Http2Config {
    /// The defaults of the options.
    fn default() -> Self {
        Http2Config {
            enabled: false,
            max_concurrent_streams: 100,
            stream_window: 262_144,
            connection_window: 1_048_576,
        }
    }
}

impl Http2Config {
    /// The largest flow-control window HTTP/2 allows (RFC 9113 section 6.9.1).
    pub const MAX_WINDOW: u32 = (1 << 31) - 1;

    fn validate(&self) -> Result<(), String> {
        if self.max_concurrent_streams == 0 {
            return Err("h2_max_concurrent_streams must be a positive integer".into());
        }
        for (name, value) in [
            ("h2_initial_window_size", self.stream_window),
            ("h2_connection_window_size", self.connection_window),
        ] {
            if !(65_535..=Self::MAX_WINDOW).contains(&value) {
                return Err(format!(
                    "{name} must be between 65535 and {} bytes",
                    Self::MAX_WINDOW
                ));
            }
        }
        Ok(())
    }
}

/// `certfile` and the TLS options around it (plain data; `server/tls.rs` reads the
/// files, at start-up and again on a reload).
#[derive(Clone, Debug)]
pub struct TlsConfig {
    /// PEM: the server's certificate, then its chain.
    pub certfile: PathBuf,
    /// PEM: the private key (`None`: it is in `certfile`).
    pub keyfile: Option<PathBuf>,
    pub clients: ClientCertificates,
    pub min_version: TlsVersion,
    /// ALPN offers `h2` before `http/1.1` (`http2`).
    pub http2: bool,
}

/// `cert_reqs` with `ca_certs`: whether clients are asked for a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientCertificates {
    /// `none`: no certificate is asked for.
    NotAsked,
    /// `optional`: asked for; a client without one is served, one with a certificate
    /// the CAs did not sign is refused.
    Optional { ca_certs: PathBuf },
    /// `required`: a client without a certificate signed by the CAs is refused.
    Required { ca_certs: PathBuf },
}

/// `tls_min_version`: the oldest protocol version a client may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsConfig {
    /// Builds it from the options as given: `certfile` (empty: no TLS), `keyfile`,
    /// `ca_certs`, `cert_reqs` (`none`, `optional`, `required`, or Gunicorn's 0, 1, 2)
    /// and `tls_min_version` (`1.2` or `1.3`). Errors name the option.
    pub fn from_options(
        certfile: Option<&str>,
        keyfile: Option<&str>,
        ca_certs: Option<&str>,
        cert_reqs: &str,
        min_version: &str,
    ) -> Result<Option<TlsConfig>, String> {
        let min_version = match min_version.trim() {
            "1.2" | "TLSv1.2" => TlsVersion::Tls12,
            "1.3" | "TLSv1.3" => TlsVersion::Tls13,
            other => return Err(format!("tls_min_version must be 1.2 or 1.3, not {other:?}")),
        };
        let wanted = match cert_reqs.trim().to_ascii_lowercase().as_str() {
            "none" | "0" => None,
            "optional" | "1" => Some(false),
            "required" | "2" => Some(true),
            other => {
                return Err(format!(
                    "cert_reqs must be none, optional or required (or 0, 1, 2), not {other:?}"
                ))
            }
        };
        let Some(certfile) = certfile else {
            for (name, given) in [
                ("keyfile", keyfile.is_some()),
                ("ca_certs", ca_certs.is_some()),
                ("cert_reqs", wanted.is_some()),
            ] {
                if given {
                    return Err(format!(
                        "{name} is set but certfile is not: TLS needs certfile"
                    ));
                }
            }
            return Ok(None);
        };
        let clients = match (wanted, ca_certs) {
            (None, None) => ClientCertificates::NotAsked,
            (None, Some(_)) => {
                return Err(
                    "ca_certs is set but cert_reqs is none: say cert_reqs=optional \
                     or cert_reqs=required for client certificates"
                        .into(),
                )
            }
            (Some(_), None) => {
                return Err(
                    "cert_reqs asks for client certificates: ca_certs must name \
                     the CA certificates (PEM) that sign them"
                        .into(),
                )
            }
            (Some(false), Some(ca)) => ClientCertificates::Optional {
                ca_certs: ca.into(),
            },
            (Some(true), Some(ca)) => ClientCertificates::Required {
                ca_certs: ca.into(),
            },
        };
        Ok(Some(TlsConfig {
            certfile: certfile.into(),
            keyfile: keyfile.map(PathBuf::from),
            clients,
            min_version,
            http2: false,
        }))
    }
}

/// `static` and the `static_*` options.
#[derive(Clone, Debug, Default)]
pub struct StaticConfig {
    pub mounts: Vec<StaticMount>,
    /// A request under a mount that the mount does not serve goes to the application.
    pub fallthrough: bool,
    /// A directory's `index.html` answers for it.
    pub index: bool,
    pub open: StaticOpen,
    /// `Cache-Control: public, max-age=N` (0: `no-cache`).
    pub max_age: u64,
    /// Paths (below the mount) matching this regular expression are cached for a year
    /// as `immutable`.
    pub immutable_pattern: Option<String>,
}

/// One `static` entry: `prefix=directory`.
#[derive(Clone, Debug)]
pub struct StaticMount {
    /// `/static`: starts with `/`, no trailing slash (`/` alone is the whole site).
    pub prefix: String,
    pub directory: PathBuf,
}

/// How a mount opens the files below its directory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StaticOpen {
    /// Never outside the directory: symlinks are followed only while they stay in it.
    #[default]
    Beneath,
    /// `static_follow_symlinks`: symlinks are followed wherever they lead.
    FollowSymlinks,
}

impl StaticConfig {
    /// Every directory exists, no prefix is mounted twice, the pattern compiles.
    fn validate(&self) -> Result<(), String> {
        for (i, mount) in self.mounts.iter().enumerate() {
            if !mount.directory.is_dir() {
                return Err(format!(
                    "static: {} (for {}) is not a directory",
                    mount.directory.display(),
                    if mount.prefix.is_empty() {
                        "/"
                    } else {
                        &mount.prefix
                    }
                ));
            }
            if self.mounts[..i].iter().any(|m| m.prefix == mount.prefix) {
                return Err(format!(
                    "static: the prefix {} is mounted twice",
                    mount.prefix
                ));
            }
        }
        if let Some(pattern) = &self.immutable_pattern {
            regex_lite::Regex::new(pattern).map_err(|err| {
                format!(
                    "static_immutable_pattern {pattern:?} is not a valid regular expression: {err}"
                )
            })?;
        }
        Ok(())
    }
}

impl StaticMount {
    /// Parses `prefix=directory`; the error names the entry.
    pub fn parse(entry: &str) -> Result<StaticMount, String> {
        let Some((prefix, directory)) = entry.split_once('=') else {
            return Err(format!(
                "static entry {entry:?} must be PREFIX=DIRECTORY, e.g. /static=./public"
            ));
        };
        let prefix = prefix.trim();
        if !prefix.starts_with('/') {
            return Err(format!(
                "static entry {entry:?}: the URL prefix must start with /"
            ));
        }
        let prefix = prefix.trim_end_matches('/');
        if prefix
            .bytes()
            .any(|b| b <= b' ' || b == b'%' || b == b'?' || b == b'#' || b >= 0x7f)
            || prefix
                .split('/')
                .skip(1)
                .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(format!(
                "static entry {entry:?}: the URL prefix must be a plain ASCII path (no spaces, %, ?, #, non-ASCII, empty, . or .. segments)"
            ));
        }
        let directory = directory.trim();
        if directory.is_empty() {
            return Err(format!("static entry {entry:?} names no directory"));
        }
        Ok(StaticMount {
            prefix: prefix.to_owned(),
            directory: PathBuf::from(directory),
        })
    }
}

/// Where the access log goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AccessLogTarget {
    #[default]
    Off,
    File(PathBuf),
    Stderr,
    /// The Python logger `tapster.access`.
    Logger,
}

/// `proxy_protocol`: whether every connection starts with a PROXY protocol header.
#[derive(Clone, Debug, Default)]
pub enum ProxyProtocol {
    /// Connections start with their first request.
    #[default]
    Off,
    /// Each connection starts with a v1 or v2 header, accepted only from these peers
    /// (`trusted_proxy`); others are closed unanswered.
    Required { trusted: TrustedPeers },
}

#[cfg(test)]
impl Config {
    /// Valid values for unit tests (the defaults users get live in the Python option
    /// records, `tapster/options.py`, and nowhere else).
    pub fn example() -> Self {
        let head = HeadLimits::default();
        Config {
            threads: 4,
            io_threads: 1,
            connection_limit: 1000,
            recv_bytes: 8192,
            inbuf_overflow: 524_288,
            outbuf_overflow: 1_048_576,
            outbuf_high_watermark: 16_777_216,
            inbuf_memory_budget: 64 << 20,
            outbuf_memory_budget: 64 << 20,
            outbuf_spill_budget: 1 << 30,
            channel_timeout: Duration::from_secs(120),
            header_timeout: Duration::from_secs(30),
            min_body_rate: 1024,
            max_request_header_size: head.max_head_bytes,
            max_request_line_size: head.max_request_line,
            max_request_headers: head.max_headers,
            max_request_body_size: head.max_body_bytes,
            shutdown_timeout: Duration::from_secs(5),
            ident: Some("tapster".to_owned()),
            log_socket_errors: true,
            proxy_protocol: ProxyProtocol::Off,
            access_log: AccessLogTarget::Off,
            access_log_format: Format::parse(crate::observe::access_format::COMBINED)
                .expect("the default format parses"),
            dump_slow_requests_after: None,
            request_timeout: None,
            statics: StaticConfig::default(),
            tls: None,
            http2: Http2Config::default(),
        }
    }
}

impl Config {
    /// Checks every range; the error names the option and what it must be.
    pub fn validate(&self) -> Result<(), String> {
        let positive: [(&str, u64); 14] = [
            ("threads", self.threads as u64),
            ("io_threads", self.io_threads as u64),
            ("connection_limit", self.connection_limit as u64),
            ("recv_bytes", self.recv_bytes as u64),
            ("inbuf_overflow", self.inbuf_overflow as u64),
            ("outbuf_overflow", self.outbuf_overflow as u64),
            ("outbuf_high_watermark", self.outbuf_high_watermark as u64),
            (
                "max_request_header_size",
                self.max_request_header_size as u64,
            ),
            ("max_request_line_size", self.max_request_line_size as u64),
            ("max_request_headers", self.max_request_headers as u64),
            ("max_request_body_size", self.max_request_body_size),
            ("inbuf_memory_budget", self.inbuf_memory_budget),
            ("outbuf_memory_budget", self.outbuf_memory_budget),
            ("outbuf_spill_budget", self.outbuf_spill_budget),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("{name} must be a positive integer"));
            }
        }
        if self.channel_timeout.is_zero() {
            return Err("channel_timeout must be positive".into());
        }
        if self.header_timeout.is_zero() {
            return Err("header_timeout must be positive".into());
        }
        // Header positions are stored as 32-bit offsets into the head.
        if u32::try_from(self.max_request_header_size).is_err() {
            return Err(format!(
                "max_request_header_size must be at most {}",
                u32::MAX
            ));
        }
        if self.threads > 10_000 {
            return Err("threads must be at most 10000".into());
        }
        if self.io_threads > 256 {
            return Err("io_threads must be at most 256".into());
        }
        if let Some(ident) = &self.ident {
            if ident.bytes().any(|b| b < 0x20 || b == 0x7f) {
                return Err("ident must not contain control characters".into());
            }
        }
        self.http2.validate()?;
        self.statics.validate()
    }

    pub fn head_limits(&self) -> HeadLimits {
        HeadLimits {
            max_head_bytes: self.max_request_header_size,
            max_request_line: self.max_request_line_size,
            max_headers: self.max_request_headers,
            max_body_bytes: self.max_request_body_size,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_is_valid() {
        assert_eq!(Config::example().validate(), Ok(()));
    }

    #[test]
    fn errors_name_the_option() {
        let config = Config {
            threads: 0,
            ..Config::example()
        };
        assert_eq!(
            config.validate().unwrap_err(),
            "threads must be a positive integer"
        );
        let config = Config {
            max_request_body_size: 0,
            ..Config::example()
        };
        assert!(config
            .validate()
            .unwrap_err()
            .starts_with("max_request_body_size"));
    }
}

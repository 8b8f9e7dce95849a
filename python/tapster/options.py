"""The one table of server options: one record per option, with its name, cast,
default, what it shapes and its help text. The keyword arguments, the command line
(`tapster --help`), PasteDeploy, the engine's options and the README's options table
are all derived from `OPTIONS`.

Adding an option means one record here, one field in the Rust engine (when it is an
engine option: `src/wsgi/options.rs`) and its use.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any, Callable, Iterable

# --- casts: every value (a string from the command line or PasteDeploy, or a Python
# value) goes through its option's cast. Validation of single values is the engine's.

TRUTHY = frozenset(("t", "true", "y", "yes", "on", "1"))


def asbool(value: Any) -> bool:
    """True for t, true, y, yes, on and 1 (any case, surrounding space ignored)."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in TRUTHY


def asoctal(value: Any) -> int:
    """'660' -> 0o660. Only strings, as in Waitress: an integer such as 660 would be
    read as decimal and give a wrong mode without a word."""
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not an octal string: quote it, as in '660'")
    return int(value, 8)


def aslist_cronly(value: Any) -> list[str]:
    if isinstance(value, str):
        return [line.strip() for line in value.splitlines() if line.strip()]
    return list(value)


def aslist(value: Any) -> list[str]:
    """Splits a string on lines and whitespace; each item of an iterable is split too."""
    result: list[str] = []
    for item in aslist_cronly(value):
        result.extend(item.split())
    return result


def asset(value: Any) -> set[str]:
    return set(aslist(value))


def slash_fixed_str(value: Any) -> str:
    """'/app/' -> '/app'; '' and '/' -> ''."""
    value = str(value).strip()
    if value:
        value = "/" + value.strip("/")
    return "" if value == "/" else value


def str_iftruthy(value: Any) -> str | None:
    return str(value) if value else None


def as_socket_list(sockets: Iterable[Any]) -> list[socket.socket]:
    """Keeps the socket objects; anything else is dropped, as Waitress does."""
    return [s for s in sockets if isinstance(s, socket.socket)]


def as_trusted_proxies(value: Any) -> str | None:
    """One address, '*', or (Tapster) a list of addresses and CIDR ranges."""
    if not value:
        return None
    text = " ".join(aslist(value)) if not isinstance(value, str) else value.strip()
    return text or None


#: Apache's combined log format in Gunicorn's atoms (the engine's
#: `access_format::COMBINED`; a test checks they agree).
COMBINED_LOG_FORMAT = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'


def asnonnegative(value: Any) -> int:
    """A whole number, 0 or more."""
    number = int(value)
    if number < 0:
        raise ValueError(f"must be 0 or more, not {number}")
    return number


def asseconds_or_off(value: Any) -> float:
    """Seconds as a float; 0, empty or None means off."""
    if value is None or value == "":
        return 0.0
    return float(value)


LOG_LEVELS = ("debug", "info", "warning", "error")


def aslevel(value: Any) -> str:
    """A log level name: debug, info, warning or error (any case)."""
    level = str(value).strip().lower()
    if level not in LOG_LEVELS:
        raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}, not {value!r}")
    return level


def aspathlist(value: Any) -> list[str]:
    """Directories separated by commas (or a list of them)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(item).strip() for item in items if str(item).strip()]


# --- the records ---------------------------------------------------------------------

#: What an option shapes: the sockets Python binds, the engine's I/O, what the
#: application sees, the worker processes and their supervisor (`process`), nothing
#: (accepted for Waitress compatibility), or the `tapster` command's process (`cli`:
#: command-line and configuration-file only, neither a `serve()` keyword argument nor
#: an engine option).
LAYERS = ("listen", "server", "application", "process", "compat", "cli")

#: How `tapster --help` groups the options, in this order: (section, title).
SECTIONS = (
    ("listening", "Listening"),
    ("workers", "Workers and threads"),
    ("limits", "Limits and timeouts"),
    ("buffers", "Buffers and memory"),
    ("proxies", "Proxies"),
    ("application", "What the application sees"),
    ("logging", "Logging"),
    ("observability", "Access log, metrics and stuck requests"),
    ("static", "Static files"),
    ("tls", "TLS"),
    ("http2", "HTTP/2"),
    ("process", "Process (command line only)"),
    ("compat", "Compatibility options with no effect (accepted as Waitress does)"),
)

#: The layers whose options are handed to the Rust engine.
ENGINE_LAYERS = frozenset(("server", "application"))


@dataclass(frozen=True, eq=False)
class Option:
    """One option. `help` may mark code with backticks: the README shows them, and
    `tapster --help` drops them. (Records compare and hash by identity: some defaults
    are lists or sets.)"""

    name: str
    cast: Callable[[Any], Any]
    default: Any
    layer: str
    help: str
    #: False for the one option the command line cannot carry (`sockets`).
    command_line: bool = True
    #: Where `tapster --help` lists it (a key of SECTIONS).
    section: str = "application"
    #: Other command-line names (without `--`), e.g. Gunicorn's for the same option.
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.layer not in LAYERS:
            raise ValueError(f"option {self.name}: unknown layer {self.layer!r}")
        if self.section not in dict(SECTIONS):
            raise ValueError(f"option {self.name}: unknown section {self.section!r}")

    @property
    def keyword(self) -> bool:
        """Whether `serve()`/`create_server()` (and PasteDeploy) take it."""
        return self.layer != "cli"

    @property
    def engine(self) -> bool:
        """Whether the value is handed to the Rust engine (`EngineConfig`)."""
        return self.layer in ENGINE_LAYERS

    @property
    def boolean(self) -> bool:
        """Booleans are flags on the command line: `--name` and `--no-name`."""
        return self.cast is asbool

    @property
    def flags(self) -> tuple[str, ...]:
        """`--name` (with `-` for `_`), and `--no-name` for a boolean."""
        flag = "--" + self.name.replace("_", "-")
        names = (flag, "--no-" + flag[2:]) if self.boolean else (flag,)
        return names + tuple("--" + alias for alias in self.aliases)

    @property
    def shown_default(self) -> str:
        """The default as the README shows it (literal values in backticks) and, without
        the backticks, `tapster --help`."""
        value = self.default
        if self.boolean:
            return "on" if value else "off"
        if self.cast is asoctal:
            return "none" if value is None else f"`{value:o}`"
        if isinstance(value, (list, set)):
            value = " ".join(sorted(value) if isinstance(value, set) else value) or None
        if value is None:
            return "none"
        if value == "":
            return "empty"
        return f"`{value}`"


def plain(text: str) -> str:
    """Markdown text without its code marks, for the terminal."""
    return text.replace("`", "")


#: Every option, in Waitress's order, then Tapster's own.
OPTIONS: tuple[Option, ...] = (
    Option(
        "host", str, "0.0.0.0", "listen",
        "Hostname or IP address to listen on (with `port`; conflicts with `listen`).",
        section="listening",
    ),
    Option(
        "port", int, 8080, "listen",
        "TCP port to listen on (with `host`; conflicts with `listen`, whose entries "
        "without a port use the default port).",
        section="listening",
    ),
    Option("ipv4", asbool, True, "listen", "Bind the IPv4 addresses `listen` entries resolve to.", section="listening"),
    Option(
        "ipv6", asbool, True, "listen",
        "Bind the IPv6 addresses `listen` entries resolve to (IPv6 sockets are V6ONLY).",
        section="listening",
    ),
    Option(
        "listen", aslist, ["0.0.0.0:8080"], "listen",
        "`host:port` entries to listen on, separated by whitespace; `--listen` is "
        "repeatable. `*:8080` is every interface, `[::1]:8080` an IPv6 address.",
        section="listening",
    ),
    Option(
        "threads", int, 4, "server",
        "Python threads that may run the application at once (one drains the queue; "
        "others join when it blocks).",
        section="workers",
    ),
    Option(
        "trusted_proxy", as_trusted_proxies, None, "application",
        "Peer allowed to send forwarding headers: an address, `*` (every peer), or "
        "(Tapster) addresses and CIDR ranges separated by spaces or commas; `localhost` "
        "for Unix sockets.",
        section="proxies",
    ),
    Option(
        "trusted_proxy_count", int, 1, "application",
        "How many proxies in front of this server to believe (only with `trusted_proxy`).",
        section="proxies",
    ),
    Option(
        "trusted_proxy_headers", asset, set(), "application",
        "Which forwarding headers to believe: `x-forwarded-for`, `x-forwarded-host`, "
        "`x-forwarded-proto`, `x-forwarded-port`, `x-forwarded-by`, or `forwarded` (only "
        "with `trusted_proxy`; when `trusted_proxy` is set without it, `x-forwarded-proto` "
        "with a DeprecationWarning).",
        section="proxies",
    ),
    Option(
        "log_untrusted_proxy_headers", asbool, False, "application",
        "Log a WARNING naming the forwarding headers removed from untrusted peers' requests.",
        section="proxies",
    ),
    Option(
        "clear_untrusted_proxy_headers", asbool, True, "application",
        "Remove forwarding headers that are not trusted from the environ.",
        section="proxies",
    ),
    Option("url_scheme", str, "http", "application", "Default `wsgi.url_scheme`.", section="application"),
    Option(
        "url_prefix", slash_fixed_str, "", "application",
        "SCRIPT_NAME of every request; removed from the front of PATH_INFO.",
        section="application",
    ),
    Option("backlog", int, 1024, "listen", "Listen backlog of each socket.", section="listening"),
    Option("recv_bytes", int, 8192, "server", "Largest `recv()` when reading request heads.", section="buffers"),
    Option(
        "send_bytes", int, 1, "compat",
        "Deprecated (a DeprecationWarning, as in Waitress); no effect.",
        section="compat",
    ),
    Option(
        "outbuf_overflow", int, 1048576, "server",
        "Response bytes waiting for a client beyond this go to a temporary file.",
        section="buffers",
    ),
    Option(
        "outbuf_high_watermark", int, 16777216, "server",
        "Above this many pending response bytes the application is paused until the "
        "client catches up.",
        section="buffers",
    ),
    Option(
        "inbuf_overflow", int, 524288, "server",
        "A request body this large goes to a temporary file.",
        section="buffers",
    ),
    Option(
        "connection_limit", int, 1000, "server",
        "Open client connections at most; more wait in the backlog.",
        section="limits",
    ),
    Option(
        "cleanup_interval", int, 30, "compat",
        "Waitress's seconds between idle-connection sweeps; accepted, no effect (each "
        "connection times out on its own timer).",
        section="compat",
    ),
    Option(
        "channel_timeout", int, 120, "server",
        "Seconds of inactivity after which an idle connection is closed.",
        section="limits",
    ),
    Option("log_socket_errors", asbool, True, "server", "Log unexpected socket errors.", section="logging"),
    Option(
        "max_request_header_size", int, 262144, "server",
        "Largest request head in bytes (431 beyond).",
        section="limits",
    ),
    Option(
        "max_request_body_size", int, 1073741824, "server",
        "Largest request body in bytes (413 beyond).",
        section="limits",
    ),
    Option("expose_tracebacks", asbool, False, "application", "Show the traceback in 500 pages.", section="application"),
    Option(
        "ident", str_iftruthy, "tapster", "server",
        "Server header and SERVER_SOFTWARE; empty sends no Server header.",
        section="application",
    ),
    Option(
        "asyncore_loop_timeout", int, 1, "compat",
        "Waitress's `select()` timeout; accepted, no effect.",
        section="compat",
    ),
    Option(
        "asyncore_use_poll", asbool, False, "compat",
        "Waitress's `poll()` switch; accepted, no effect.",
        section="compat",
    ),
    Option(
        "unix_socket", str, None, "listen",
        "Path of a Unix socket to listen on (a stale socket file is replaced).",
        section="listening",
    ),
    Option(
        "unix_socket_perms", asoctal, 0o600, "listen",
        "Octal permissions of the Unix socket (a string, as in Waitress).",
        section="listening",
    ),
    Option(
        "sockets", as_socket_list, [], "listen",
        "Pre-bound sockets to serve (socket activation).",
        command_line=False,
        section="listening",
    ),
    Option(
        "channel_request_lookahead", int, 0, "compat",
        "Waitress's requests read ahead while one runs; accepted, no effect (Tapster "
        "always watches the socket while a request runs, so `client_disconnected()` works "
        "without it).",
        section="compat",
    ),
    Option("server_name", str, "tapster.invalid", "application", "SERVER_NAME of every request.", section="application"),
    # Tapster's own options.
    Option("io_threads", int, 1, "server", "Tapster: threads doing socket I/O and HTTP parsing.", section="workers"),
    Option(
        "proxy_protocol", asbool, False, "server",
        "Tapster: every connection starts with a PROXY protocol header (v1 or v2, as HAProxy "
        "and cloud load balancers send), accepted only from `trusted_proxy` peers: "
        "REMOTE_ADDR and REMOTE_PORT are the client it names, its SSL TLV makes "
        "`wsgi.url_scheme` `https`; a connection without a valid header within "
        "`header_timeout` is closed unanswered.",
        section="proxies",
    ),
    Option(
        "header_timeout", float, 30.0, "server",
        "Tapster: seconds a client has to send a complete request head (408 beyond).",
        section="limits",
    ),
    Option(
        "min_body_rate", int, 1024, "server",
        "Tapster: bytes per second a request body must average once `header_timeout` has "
        "passed (408 when slower; 0: no minimum).",
        section="limits",
    ),
    Option(
        "max_request_line_size", int, 65536, "server",
        "Tapster: longest request line in bytes (414 beyond).",
        section="limits",
    ),
    Option(
        "max_request_headers", int, 100, "server",
        "Tapster: most header fields in a request (431 beyond).",
        section="limits",
    ),
    Option(
        "shutdown_timeout", float, 5.0, "server",
        "Tapster: seconds a graceful shutdown (or a worker's drain) waits for requests in "
        "progress. `--graceful-timeout` is the same option.",
        section="limits", aliases=("graceful-timeout",),
    ),
    Option(
        "inbuf_memory_budget", int, 67108864, "server",
        "Tapster: request-body bytes all connections together may hold in memory; past "
        "it, bodies are received into temporary files.",
        section="buffers",
    ),
    Option(
        "outbuf_memory_budget", int, 67108864, "server",
        "Tapster: queued response bytes all connections together may hold in memory; past "
        "it, queued output goes to temporary files.",
        section="buffers",
    ),
    Option(
        "outbuf_spill_budget", int, 1073741824, "server",
        "Tapster: queued response bytes all connections together may hold in temporary "
        "files; past it, an application whose client lags is paused until that client "
        "catches up.",
        section="buffers",
    ),
    # Worker processes and their supervisor (layer "process").
    Option(
        "workers", int, 1, "process",
        "Tapster: worker processes, each with its own `threads`, limits and "
        "`connection_limit`. 1 is one process and no supervisor (unless `max_requests`, "
        "`max_worker_memory` or `reload` asks for one).",
        section="workers",
    ),
    Option(
        "preload", asbool, False, "process",
        "Tapster: import the application in the supervisor, before forking the workers "
        "(a reload then restarts the workers without re-importing it). `serve(app, "
        "workers=N)` always works this way: the application exists already.",
        section="workers",
    ),
    Option(
        "reuse_port", asbool, False, "process",
        "Tapster: give each worker its own `SO_REUSEPORT` socket per TCP address (the "
        "kernel spreads connections evenly) instead of one socket all workers share.",
        section="workers",
    ),
    Option(
        "max_requests", int, 0, "process",
        "Tapster: replace a worker after it has handled this many requests: its "
        "replacement is up before it drains (0: never).",
        section="workers",
    ),
    Option(
        "max_requests_jitter", int, 0, "process",
        "Tapster: add a random 0 to this many requests to each worker's `max_requests`, "
        "so workers are not all replaced at once.",
        section="workers",
    ),
    Option(
        "max_worker_memory", int, 0, "process",
        "Tapster: replace a worker whose resident memory exceeds this many MiB, checked "
        "every second (0: never).",
        section="workers",
    ),
    Option(
        "reload", asbool, False, "process",
        "Tapster, for development: reload the workers when a Python file the application "
        "imported changes (inotify; files of the standard library and site-packages are "
        "not watched).",
        section="workers",
    ),
    Option(
        "pidfile", str, None, "process",
        "Tapster: write the process id (the supervisor's, with workers) to this file, "
        "and remove it at exit.",
        section="process", aliases=("pid",),
    ),
    Option(
        "access_log", str_iftruthy, None, "server",
        "Tapster: write an access log line per request to this file (`-`: standard error) "
        "once its response's last byte is sent (or its client has gone). Written in Rust by "
        "a background thread, buffered; SIGUSR1 reopens the file (logrotate). Off by "
        "default, as in Waitress.",
        section="observability", aliases=("access-logfile",),
    ),
    Option(
        "access_log_format", str, COMBINED_LOG_FORMAT, "server",
        "Tapster: the access log line, in Gunicorn's atoms (`%(h)s` client, `%(t)s` time, "
        "`%(r)s` request line, `%(s)s` status, `%(b)s` body bytes sent, `%(D)s` microseconds, "
        "`%({name}i)s` request header, `%({name}o)s` response header, `%({name}e)s` environ "
        "value... see the README), or `json` for one JSON object a line. The default is "
        "Apache's combined format.",
        section="observability",
    ),
    Option(
        "access_log_logger", asbool, False, "server",
        "Tapster: send the access log lines to the Python logger `tapster.access` (INFO) "
        "instead of a file, for your own handlers; costs the GIL once per batch of lines.",
        section="observability",
    ),
    Option(
        "metrics_listen", str_iftruthy, None, "listen",
        "Tapster: serve Prometheus metrics at `/metrics` on this `HOST:PORT` (its own "
        "listener, never the application's). With workers, one scrape answers for all of "
        "them.",
        section="observability",
    ),
    Option(
        "dump_slow_requests_after", asseconds_or_off, 0.0, "server",
        "Tapster: log (WARNING, once) a request still running after this many seconds, "
        "with the Python stack of the thread running it (0: off).",
        section="observability",
    ),
    Option(
        "request_timeout", asseconds_or_off, 0.0, "server",
        "Tapster: a request still running after this many seconds is given up on: with "
        "workers it is answered 504 (if nothing was sent yet) and its worker is replaced "
        "gracefully; in a single process it is logged and counted, since a Python thread "
        "cannot be stopped safely (0: off).",
        section="observability",
    ),
    Option(
        "static", aslist_cronly, [], "server",
        "Tapster: serve the files of DIRECTORY under the URL prefix, as `/prefix=DIRECTORY` "
        "(repeatable; one entry a line in a configuration file), from the I/O threads with "
        "`sendfile(2)`: the application never sees a request under a prefix. Only `GET` and "
        "`HEAD` (405 otherwise); dotfiles, directory listings and paths leaving the "
        "directory are never served (404).",
        section="static",
    ),
    Option(
        "static_fallthrough", asbool, False, "server",
        "Tapster: a request under a `static` prefix that the mount does not serve (no such "
        "file, a dotfile, a directory) goes to the application instead of a 404. Paths "
        "that try to leave the directory are still 404.",
        section="static",
    ),
    Option(
        "static_index", asbool, False, "server",
        "Tapster: a directory's `index.html` answers for it (a directory named without its "
        "trailing slash is redirected, 301, to the name with it).",
        section="static",
    ),
    Option(
        "static_follow_symlinks", asbool, False, "server",
        "Tapster: follow symlinks wherever they point. Off: a symlink is followed only while "
        "it stays inside the mount's directory (relative, never through `..` out of it).",
        section="static",
    ),
    Option(
        "static_max_age", asnonnegative, 60, "server",
        "Tapster: `Cache-Control: public, max-age=N` of static files, in seconds (0: "
        "`no-cache`, revalidate every time).",
        section="static",
    ),
    Option(
        "static_immutable_pattern", str_iftruthy, None, "server",
        "Tapster: static paths (below their prefix) matching this regular expression are "
        "sent with `Cache-Control: public, max-age=31536000, immutable`: for names with a "
        "content hash, e.g. `\\.[0-9a-f]{8,}\\.`.",
        section="static",
    ),
    Option(
        "certfile", str_iftruthy, None, "server",
        "Tapster: serve TLS with this certificate (PEM: the certificate, then its chain), "
        "through rustls on the I/O threads. Every TCP listener then speaks TLS unless its "
        "`listen` entry starts with `http://` (`https://HOST:PORT` marks a TLS one); Unix "
        "sockets stay cleartext. Read at start-up and again on SIGHUP.",
        section="tls",
    ),
    Option(
        "keyfile", str_iftruthy, None, "server",
        "Tapster: the private key of `certfile` (PEM: PKCS#8, PKCS#1 or SEC1); without it "
        "the key is read from `certfile`.",
        section="tls",
    ),
    Option(
        "ca_certs", str_iftruthy, None, "server",
        "Tapster: the CA certificates (PEM) that sign the client certificates `cert_reqs` "
        "asks for.",
        section="tls",
    ),
    Option(
        "cert_reqs", str, "none", "server",
        "Tapster: client certificates: `none` (not asked for), `optional` (asked for; a "
        "client without one is served, one whose certificate `ca_certs` did not sign is "
        "refused) or `required`; Gunicorn's 0, 1 and 2 too. The verified subject is "
        "`SSL_CLIENT_S_DN` in the environ.",
        section="tls",
    ),
    Option(
        "tls_min_version", str, "1.2", "server",
        "Tapster: the oldest TLS version a client may use, `1.2` or `1.3`.",
        section="tls",
    ),
    Option(
        "http2", asbool, False, "server",
        "Tapster: HTTP/2 beside HTTP/1.1: offered by ALPN (`h2` before `http/1.1`) on TLS "
        "listeners, and by prior knowledge (h2c: a connection that opens with the HTTP/2 "
        "preface) on cleartext ones.",
        section="http2",
    ),
    Option(
        "h2_max_concurrent_streams", int, 100, "server",
        "Tapster: HTTP/2 streams a client may have open at once on one connection.",
        section="http2",
    ),
    Option(
        "h2_initial_window_size", int, 262144, "server",
        "Tapster: bytes of request body a client may send on one HTTP/2 stream ahead of "
        "the server reading them (the stream's flow-control window).",
        section="http2",
    ),
    Option(
        "h2_connection_window_size", int, 1048576, "server",
        "Tapster: the same for all the streams of one HTTP/2 connection together.",
        section="http2",
    ),
    # The `tapster` command's own (layer "cli": not serve() keyword arguments).
    Option(
        "log_level", aslevel, "info", "cli",
        "Command line only: the least severe messages logged, `debug`, `info`, `warning` "
        "or `error` (to stderr, with time, process id, level and logger).",
        section="logging",
    ),
    Option(
        "config", str, None, "cli",
        "Command line only: a TOML file of options (the names of `serve()`'s keyword "
        "arguments and the command line's own, with TOML values or strings); the command "
        "line overrides it.",
        section="process",
    ),
    Option(
        "chdir", str, None, "cli",
        "Command line only: change to this directory before importing the application.",
        section="process",
    ),
    Option(
        "pythonpath", aspathlist, [], "cli",
        "Command line only: directories, separated by commas, put in front of `sys.path` "
        "before importing the application.",
        section="process",
    ),
    Option(
        "user", str, None, "cli",
        "Command line only: once the sockets are bound, switch to this user (a name, or "
        "a uid with a passwd entry or with `group`; root only). The application is "
        "imported before the switch, as with Gunicorn's `--preload`.",
        section="process",
    ),
    Option(
        "group", str, None, "cli",
        "Command line only: once the sockets are bound, switch to this group (a name or "
        "gid; default with `user`: that user's group).",
        section="process",
    ),
    Option(
        "umask", asoctal, None, "cli",
        "Command line only: octal file-mode mask, set before the application is imported, "
        "for the files it creates (a Unix socket's mode is `unix_socket_perms`).",
        section="process",
    ),
)  # fmt: skip

#: The records by name.
BY_NAME: dict[str, Option] = {option.name: option for option in OPTIONS}

#: The options of the command line (`--name=VALUE`, or `--name`/`--no-name`), in order.
COMMAND_LINE: tuple[Option, ...] = tuple(option for option in OPTIONS if option.command_line)

#: The options `serve()`, `create_server()` and PasteDeploy take.
KEYWORDS: tuple[Option, ...] = tuple(option for option in OPTIONS if option.keyword)

"""Server options: Waitress's adjustments with the same names, casts, defaults and
conflict rules, plus a few of Tapster's own. Values may come from keyword arguments,
the command line or a PasteDeploy file (where everything is a string)."""

from __future__ import annotations

import getopt
import ipaddress
import socket
import warnings
from typing import Any, Callable, Iterable

TRUTHY = frozenset(("t", "true", "y", "yes", "on", "1"))

KNOWN_PROXY_HEADERS = frozenset(
    (
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-for",
        "x-forwarded-port",
        "x-forwarded-by",
    )
)


def asbool(value: Any) -> bool:
    """True for t, true, y, yes, on and 1 (any case, surrounding space ignored)."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in TRUTHY


def asoctal(value: str) -> int:
    """'660' -> 0o660. Like Waitress, only strings are accepted."""
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


def aspositive_float(value: Any) -> float:
    number = float(value)
    if number <= 0:
        raise ValueError(f"{value!r} is not a positive number")
    return number


def as_trusted_proxies(value: Any) -> str | None:
    """One address, '*', or (Tapster) a list of addresses and CIDR ranges."""
    if not value:
        return None
    text = " ".join(aslist(value)) if not isinstance(value, str) else value.strip()
    return text or None


class _Marker:
    """Marks a default, so an explicit host/port can be told apart from it."""


class _StrMarker(str, _Marker):
    pass


class _IntMarker(int, _Marker):
    pass


#: (name, cast) for every option, in Waitress's order, then Tapster's own.
PARAMS: tuple[tuple[str, Callable[[Any], Any]], ...] = (
    ("host", str),
    ("port", int),
    ("ipv4", asbool),
    ("ipv6", asbool),
    ("listen", aslist),
    ("threads", int),
    ("trusted_proxy", as_trusted_proxies),
    ("trusted_proxy_count", int),
    ("trusted_proxy_headers", asset),
    ("log_untrusted_proxy_headers", asbool),
    ("clear_untrusted_proxy_headers", asbool),
    ("url_scheme", str),
    ("url_prefix", slash_fixed_str),
    ("backlog", int),
    ("recv_bytes", int),
    ("send_bytes", int),
    ("outbuf_overflow", int),
    ("outbuf_high_watermark", int),
    ("inbuf_overflow", int),
    ("connection_limit", int),
    ("cleanup_interval", int),
    ("channel_timeout", int),
    ("log_socket_errors", asbool),
    ("max_request_header_size", int),
    ("max_request_body_size", int),
    ("expose_tracebacks", asbool),
    ("ident", str_iftruthy),
    ("asyncore_loop_timeout", int),
    ("asyncore_use_poll", asbool),
    ("unix_socket", str),
    ("unix_socket_perms", asoctal),
    ("sockets", as_socket_list),
    ("channel_request_lookahead", int),
    ("server_name", str),
    # Tapster's own options.
    ("io_threads", int),
    ("header_timeout", aspositive_float),
    ("min_body_rate", int),
    ("max_request_line_size", int),
    ("max_request_headers", int),
    ("shutdown_timeout", aspositive_float),
    ("inbuf_memory_budget", int),
    ("outbuf_memory_budget", int),
    ("outbuf_spill_budget", int),
)

#: Options that only configured Waitress's asyncore loop; accepted and ignored.
NO_EFFECT = frozenset(("asyncore_loop_timeout", "asyncore_use_poll"))

#: Boolean options (the CLI offers --name and --no-name for these).
BOOLEANS = frozenset(name for name, cast in PARAMS if cast is asbool)

#: One-line help for each option, shown by `tapster --help`.
HELP: dict[str, str] = {
    "host": "Hostname or IP address to listen on (conflicts with --listen).",
    "port": "TCP port to listen on (conflicts with --listen).",
    "ipv4": "Bind IPv4 addresses found for listen entries.",
    "ipv6": "Bind IPv6 addresses found for listen entries.",
    "listen": "host:port to listen on; repeatable. '*:8080' means all interfaces, "
    "'[::1]:8080' an IPv6 address.",
    "threads": "Python threads that may run the application at once.",
    "trusted_proxy": "Address (or Tapster: list of addresses and CIDR ranges) of the proxy "
    "whose forwarding headers are trusted; '*' trusts every peer.",
    "trusted_proxy_count": "How many proxies in front of this server to trust.",
    "trusted_proxy_headers": "Which forwarding headers to trust: x-forwarded-for, "
    "x-forwarded-host, x-forwarded-proto, x-forwarded-port, x-forwarded-by, or forwarded.",
    "log_untrusted_proxy_headers": "Log forwarding headers that came from untrusted peers.",
    "clear_untrusted_proxy_headers": "Remove forwarding headers from untrusted peers from "
    "the environ.",
    "url_scheme": "Default wsgi.url_scheme.",
    "url_prefix": "SCRIPT_NAME for every request; stripped from PATH_INFO.",
    "backlog": "Listen backlog of each socket.",
    "recv_bytes": "Bytes asked of each recv().",
    "send_bytes": "Deprecated; has no effect.",
    "outbuf_overflow": "Pending response bytes kept in memory before spilling to a "
    "temporary file.",
    "outbuf_high_watermark": "Pending response bytes above which the application is "
    "paused until the client catches up.",
    "inbuf_overflow": "Request body size at which it moves to a temporary file.",
    "connection_limit": "Most open client connections; more wait in the backlog.",
    "cleanup_interval": "Seconds between idle-connection sweeps (Tapster times out "
    "each connection precisely; kept for compatibility).",
    "channel_timeout": "Seconds of inactivity after which an idle connection is closed.",
    "log_socket_errors": "Log unexpected socket errors.",
    "max_request_header_size": "Largest request head in bytes (431 beyond).",
    "max_request_body_size": "Largest request body in bytes (413 beyond).",
    "expose_tracebacks": "Show tracebacks in 500 responses.",
    "ident": "Server header and SERVER_SOFTWARE value; empty sends no Server header.",
    "asyncore_loop_timeout": "Waitress's select() timeout; no effect in Tapster.",
    "asyncore_use_poll": "Waitress's poll() switch; no effect in Tapster.",
    "unix_socket": "Path of a Unix socket to listen on.",
    "unix_socket_perms": "Octal permissions of the Unix socket.",
    "sockets": "Pre-bound sockets (Python API only).",
    "channel_request_lookahead": "Requests read ahead while one is running (Tapster "
    "always notices disconnects; kept for compatibility).",
    "server_name": "SERVER_NAME for every request.",
    "io_threads": "Tapster: threads doing socket I/O and HTTP parsing.",
    "header_timeout": "Tapster: seconds a client has to send a complete request head.",
    "min_body_rate": "Tapster: bytes per second a request body must average once "
    "header_timeout has passed (0: no minimum; 408 when slower).",
    "max_request_line_size": "Tapster: longest request line in bytes (414 beyond).",
    "max_request_headers": "Tapster: most header fields in a request (431 beyond).",
    "shutdown_timeout": "Tapster: seconds a graceful shutdown waits for requests in "
    "progress.",
    "inbuf_memory_budget": "Tapster: request-body bytes all connections together may "
    "hold in memory; past it, bodies are received into temporary files.",
    "outbuf_memory_budget": "Tapster: queued response bytes all connections together "
    "may hold in memory; past it, queued output goes to temporary files.",
    "outbuf_spill_budget": "Tapster: queued response bytes all connections together may "
    "hold in temporary files; past it, an application whose client lags is paused until "
    "that client catches up.",
}


class Adjustments:
    """All options of one server, cast, checked for conflicts, and resolved."""

    host: str = _StrMarker("0.0.0.0")
    port: int = _IntMarker(8080)
    listen: Any = [f"{host}:{port}"]
    threads = 4
    trusted_proxy: str | None = None
    trusted_proxy_count: int | None = None
    trusted_proxy_headers: set[str] = set()
    log_untrusted_proxy_headers = False
    clear_untrusted_proxy_headers = True
    url_scheme = "http"
    url_prefix = ""
    ident: str | None = "tapster"
    backlog = 1024
    recv_bytes = 8192
    send_bytes = 1
    outbuf_overflow = 1048576
    outbuf_high_watermark = 16777216
    inbuf_overflow = 524288
    connection_limit = 1000
    cleanup_interval = 30
    channel_timeout = 120
    log_socket_errors = True
    max_request_header_size = 262144
    max_request_body_size = 1073741824
    expose_tracebacks = False
    unix_socket: str | None = None
    unix_socket_perms = 0o600
    socket_options = [(socket.SOL_TCP, socket.TCP_NODELAY, 1)]
    asyncore_loop_timeout = 1
    asyncore_use_poll = False
    ipv4 = True
    ipv6 = True
    sockets: list[socket.socket] = []
    channel_request_lookahead = 0
    server_name = "tapster.invalid"
    io_threads = 1
    header_timeout = 30.0
    min_body_rate = 1024
    max_request_line_size = 65536
    max_request_headers = 100
    shutdown_timeout = 5.0
    inbuf_memory_budget = 67108864
    outbuf_memory_budget = 67108864
    outbuf_spill_budget = 1073741824

    def __init__(self, **kw: Any) -> None:
        if "listen" in kw and ("host" in kw or "port" in kw):
            raise ValueError("host or port may not be set if listen is set.")
        if "listen" in kw and "sockets" in kw:
            raise ValueError("socket may not be set if listen is set.")
        if "sockets" in kw and ("host" in kw or "port" in kw):
            raise ValueError("host or port may not be set if sockets is set.")
        if "sockets" in kw and "unix_socket" in kw:
            raise ValueError("unix_socket may not be set if sockets is set")
        if "unix_socket" in kw and ("host" in kw or "port" in kw):
            raise ValueError("unix_socket may not be set if host or port is set")
        if "unix_socket" in kw and "listen" in kw:
            raise ValueError("unix_socket may not be set if listen is set")
        if "send_bytes" in kw:
            warnings.warn(
                "send_bytes will be removed in a future release", DeprecationWarning, stacklevel=3
            )

        casts = dict(PARAMS)
        for key, value in kw.items():
            if key not in casts:
                raise ValueError(f"Unknown adjustment {key!r}")
            setattr(self, key, casts[key](value))

        if not isinstance(self.host, _Marker) or not isinstance(self.port, _Marker):
            self.listen = [f"{self.host}:{self.port}"]

        self._check_proxy_options(kw)
        self.listen = self._resolve_listen()
        if self.threads < 1:
            raise ValueError("threads must be at least 1")

    def _check_proxy_options(self, kw: dict[str, Any]) -> None:
        if self.trusted_proxy_count is not None and self.trusted_proxy is None:
            raise ValueError(
                "trusted_proxy_count has no meaning without setting trusted_proxy"
            )
        if self.trusted_proxy_count is None:
            self.trusted_proxy_count = 1
        elif self.trusted_proxy_count < 1:
            raise ValueError("trusted_proxy_count must be at least 1")
        if self.trusted_proxy_headers:
            self.trusted_proxy_headers = {h.lower() for h in self.trusted_proxy_headers}
            unknown = self.trusted_proxy_headers - KNOWN_PROXY_HEADERS - {"forwarded"}
            if unknown:
                raise ValueError(
                    "Received unknown trusted_proxy_headers value (%s) expected one of %s"
                    % (", ".join(sorted(unknown)), ", ".join(sorted(KNOWN_PROXY_HEADERS | {"forwarded"})))
                )
            if "forwarded" in self.trusted_proxy_headers and self.trusted_proxy_headers - {"forwarded"}:
                raise ValueError(
                    "The Forwarded proxy header and the X-Forwarded-{By,Host,Proto,Port,For} "
                    "headers are mutually exclusive. Can't trust both!"
                )
            if self.trusted_proxy is None:
                raise ValueError(
                    "trusted_proxy_headers has no meaning without setting trusted_proxy"
                )
        elif self.trusted_proxy is not None:
            warnings.warn(
                "No proxy headers were marked as trusted, but trusted_proxy was set. "
                "Implicitly trusting X-Forwarded-Proto for backwards compatibility. "
                "This will be removed in future versions of tapster.",
                DeprecationWarning,
                stacklevel=4,
            )
            self.trusted_proxy_headers = {"x-forwarded-proto"}
        if self.trusted_proxy and self.trusted_proxy != "*":
            for entry in self.trusted_proxy.replace(",", " ").split():
                if entry == "localhost":
                    continue
                try:
                    ipaddress.ip_network(entry, strict=False)
                except ValueError:
                    raise ValueError(
                        f"trusted_proxy entry {entry!r} is not an IP address or CIDR range"
                    ) from None

    def _resolve_listen(self) -> list[tuple[int, int, int, Any]]:
        if not self.ipv4 and not socket.has_ipv6:
            raise ValueError(
                "IPv4 is disabled but IPv6 is not available. Cowardly refusing to start."
            )
        family = socket.AF_UNSPEC
        if self.ipv4 and not self.ipv6:
            family = socket.AF_INET
        elif self.ipv6 and not self.ipv4 and socket.has_ipv6:
            family = socket.AF_INET6

        wanted: list[tuple[int, int, int, Any]] = []
        seen: set[tuple[str, int]] = set()
        for entry in self.listen:
            host, port = split_host_port(entry, self.port)
            try:
                infos = socket.getaddrinfo(
                    host, port, family, socket.SOCK_STREAM, socket.IPPROTO_TCP, socket.AI_PASSIVE
                )
            except (OSError, UnicodeError, ValueError, TypeError):
                raise ValueError("Invalid host/port specified.") from None
            for fam, socktype, proto, _canon, sockaddr in infos:
                # getaddrinfo gives (host, port, ...); the zone index is dropped so that
                # the same link-local address is not bound twice.
                key = (str(sockaddr[0]).split("%", 1)[0], int(sockaddr[1]))
                if sockaddr[1] == 0 or key not in seen:
                    wanted.append((fam, socktype, proto, sockaddr))
                    seen.add(key)
        return wanted

    @classmethod
    def parse_args(cls, argv: list[str]) -> tuple[dict[str, Any], list[str]]:
        """Parses waitress-serve style arguments into (options, positional args).

        Values stay strings; --listen may repeat (joined by spaces); booleans have
        --name and --no-name forms; --help and --call are flags.
        """
        long_opts = ["help", "call"]
        for name, cast in PARAMS:
            if name == "sockets":
                continue
            flag = name.replace("_", "-")
            if cast is asbool:
                long_opts.append(flag)
                long_opts.append("no-" + flag)
            else:
                long_opts.append(flag + "=")

        kw: dict[str, Any] = {"help": False, "call": False}
        opts, args = getopt.getopt(argv, "", long_opts)
        for opt, value in opts:
            param = opt.lstrip("-").replace("-", "_")
            if param == "listen":
                kw["listen"] = "{} {}".format(kw.get("listen", ""), value).strip()
            elif param in ("help", "call"):
                kw[param] = True
            elif param in BOOLEANS:
                kw[param] = "true"
            elif param.startswith("no_") and param[3:] in BOOLEANS:
                kw[param[3:]] = "false"
            else:
                kw[param] = value
        return kw, args


def split_host_port(entry: str, default_port: int) -> tuple[str | None, str]:
    """'host:port', '[v6]:port', 'host' or '*:port' -> (host or None for all, port)."""
    if entry.startswith("[") and "]" in entry:
        close = entry.index("]")
        host = entry[1:close]
        rest = entry[close + 1 :]
        port = rest[1:] if rest.startswith(":") else str(default_port)
    elif ":" in entry:
        # As Waitress does, the last colon separates the port (unbracketed IPv6
        # addresses therefore need a port).
        host, port = entry.rsplit(":", 1)
    else:
        host, port = entry, str(default_port)
    if host == "*":
        return None, port
    return host, port

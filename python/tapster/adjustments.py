"""Server options: Waitress's adjustments with the same names, casts, defaults and
conflict rules, plus a few of Tapster's own. Values may come from keyword arguments,
the command line or a PasteDeploy file (where everything is a string).

The options themselves (names, casts, defaults) are the records of
`tapster.options.OPTIONS`; this module casts the values and applies the rules between
options. Each value is checked once, by the engine (`_tapster.EngineConfig`)."""

from __future__ import annotations

import getopt
import logging
import socket
import warnings
from typing import TYPE_CHECKING, Any

from tapster.options import BY_NAME, COMMAND_LINE, OPTIONS

# Waitress's casts, under the names waitress.adjustments gives them.
from tapster.options import (  # noqa: F401
    TRUTHY,
    as_socket_list,
    asbool,
    aslist,
    aslist_cronly,
    asoctal,
    asset,
    slash_fixed_str,
    str_iftruthy,
)

logger = logging.getLogger("tapster")

#: The largest TCP port.
MAX_PORT = 65535

KNOWN_PROXY_HEADERS = frozenset(
    (
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-for",
        "x-forwarded-port",
        "x-forwarded-by",
    )
)


class _Marker:
    """Marks a default, so an explicit host/port can be told apart from it."""


class _StrMarker(str, _Marker):
    pass


class _IntMarker(int, _Marker):
    pass


#: Defaults that are markers, so that an explicit host or port can be told apart.
_MARKERS: dict[str, type] = {"host": _StrMarker, "port": _IntMarker}


def _defaults_from_options(cls: type) -> type:
    """Sets each option's default (from its record in OPTIONS) as a class attribute."""
    for option in OPTIONS:
        marker = _MARKERS.get(option.name)
        setattr(cls, option.name, option.default if marker is None else marker(option.default))
    return cls


@_defaults_from_options
class Adjustments:
    """All options of one server, cast, checked for conflicts, and resolved. Each
    option is an attribute, defaulting to its record's default."""

    socket_options = [(socket.SOL_TCP, socket.TCP_NODELAY, 1)]

    # What __init__ makes of two options: `listen` becomes the resolved addresses
    # (family, type, proto, sockaddr), `trusted_proxy_headers` a set of lower-case names.
    listen: list[Any]
    trusted_proxy_headers: set[str]
    #: The descriptors of `fd://N` entries of `listen` (inherited listening sockets).
    listen_fds: list[int]
    #: Whether the options say where to listen (else systemd's sockets replace the
    #: default address).
    listen_given: bool
    #: What each address of `listen` speaks, "cleartext" or "tls" (same order).
    listen_security: list[str]

    if TYPE_CHECKING:
        # The options' attributes are set from OPTIONS.
        def __getattr__(self, name: str) -> Any: ...

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

        for key, value in kw.items():
            option = BY_NAME.get(key)
            if option is None or not option.keyword:
                raise ValueError(f"Unknown adjustment {key!r}")
            setattr(self, key, option.cast(value))

        if "port" in kw and not 0 <= self.port <= MAX_PORT:
            raise ValueError(f"port must be 0 to {MAX_PORT}, not {self.port}")

        if not isinstance(self.host, _Marker) or not isinstance(self.port, _Marker):
            self.listen = [f"{self.host}:{self.port}"]

        self._check_proxy_options(kw)
        self._check_process_options()
        self.listen_given = bool(LISTEN_KEYS & kw.keys())
        self.listen_fds = [_fd_of(entry) for entry in self.listen if entry.startswith("fd://")]
        self.listen = [entry for entry in self.listen if not entry.startswith("fd://")]
        self.listen = self._resolve_listen()

    @property
    def supervised(self) -> bool:
        """Whether these options need worker processes under a supervisor."""
        return needs_supervisor(self.workers, self.max_requests, self.max_worker_memory, self.reload)

    def _check_process_options(self) -> None:
        for name in ("workers",):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        for name in ("max_requests", "max_requests_jitter", "max_worker_memory"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more, not {getattr(self, name)}")
        if self.max_requests_jitter and not self.max_requests:
            raise ValueError("max_requests_jitter has no meaning without max_requests")

    def _check_proxy_options(self, kw: dict[str, Any]) -> None:
        """Waitress's rules between the proxy options. The values themselves (the
        count's range, each trusted_proxy entry) are the engine's to check."""
        if "trusted_proxy_count" in kw and self.trusted_proxy is None:
            raise ValueError(
                "trusted_proxy_count has no meaning without setting trusted_proxy"
            )
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
            message = (
                "No proxy headers were marked as trusted, but trusted_proxy was set. "
                "Implicitly trusting X-Forwarded-Proto for backwards compatibility. "
                "This will be removed in future versions of tapster."
            )
            # A WARNING an operator sees, and Waitress's DeprecationWarning (which
            # Python hides by default) for code that filters or tests for it.
            logger.warning("%s Set trusted_proxy_headers to silence this.", message)
            warnings.warn(message, DeprecationWarning, stacklevel=4)
            self.trusted_proxy_headers = {"x-forwarded-proto"}

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
        self.listen_security = []
        seen: set[tuple[str, int]] = set()
        for given in self.listen:
            entry, security = self._listen_security(given)
            host, port = split_host_port(entry, self.port)
            if port.strip().isdigit() and int(port) > MAX_PORT:
                raise ValueError(f"listen entry {entry!r}: port must be 0 to {MAX_PORT}, not {port}")
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
                    self.listen_security.append(security)
                    seen.add(key)
        return wanted

    def _listen_security(self, entry: str) -> tuple[str, str]:
        """A `listen` entry without its scheme, and what it speaks: `https://` TLS,
        `http://` cleartext, no scheme TLS when `certfile` is set (as in Gunicorn)."""
        scheme, sep, rest = entry.partition("://")
        if not sep:
            return entry, self.default_security
        if scheme.lower() == "http":
            return rest, "cleartext"
        if scheme.lower() == "https":
            if not self.certfile:
                raise ValueError(f"listen entry {entry!r}: https needs certfile (and keyfile)")
            return rest, "tls"
        raise ValueError(f"listen entry {entry!r}: the scheme may be http:// or https://")

    @property
    def default_security(self) -> str:
        """What a TCP listener without a scheme speaks (Unix sockets: cleartext)."""
        return "tls" if self.certfile else "cleartext"

    @classmethod
    def parse_args(cls, argv: list[str]) -> tuple[dict[str, Any], list[str]]:
        """Parses waitress-serve style arguments into (options, positional args).

        Values stay strings; --listen and --static may repeat (joined by spaces, and
        by newlines so that a directory may have spaces); booleans have
        --name and --no-name forms; --help (-h) and --call are flags, and so is
        --version (in the result only when given).
        """
        long_opts = ["help", "call", "version"]
        booleans = set()
        aliases: dict[str, str] = {}
        for option in COMMAND_LINE:
            aliases.update((alias.replace("-", "_"), option.name) for alias in option.aliases)
            if option.boolean:
                booleans.add(option.name)
                long_opts += [flag[2:] for flag in option.flags]
            else:
                long_opts += [flag[2:] + "=" for flag in option.flags]

        kw: dict[str, Any] = {"help": False, "call": False}
        opts, args = getopt.getopt(argv, "h", long_opts)
        for opt, value in opts:
            param = "help" if opt == "-h" else opt.lstrip("-").replace("-", "_")
            param = aliases.get(param, param)
            if param in REPEATABLE:
                joined = REPEATABLE[param].join((kw.get(param, ""), value))
                kw[param] = joined.strip(REPEATABLE[param])
            elif param in ("help", "call", "version"):
                kw[param] = True
            elif param in booleans:
                kw[param] = "true"
            elif param.startswith("no_") and param[3:] in booleans:
                kw[param[3:]] = "false"
            else:
                kw[param] = value
        return kw, args


#: The options the command line may repeat, and what joins their values.
REPEATABLE = {"listen": " ", "static": "\n"}


def needs_supervisor(workers: int, max_requests: int, max_worker_memory: int, reload: bool) -> bool:
    """Whether these option values need worker processes under a supervisor."""
    return workers > 1 or bool(max_requests or max_worker_memory or reload)


#: The options that say where to listen.
LISTEN_KEYS = frozenset(("listen", "host", "port", "unix_socket", "sockets"))


def _fd_of(entry: str) -> int:
    """'fd://3' -> 3."""
    text = entry[len("fd://") :]
    if not text.isdigit():
        raise ValueError(f"listen entry {entry!r}: fd:// takes a descriptor number, as in fd://3")
    return int(text)


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

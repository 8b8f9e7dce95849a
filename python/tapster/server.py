"""Server objects with Waitress's Python surface: `create_server()` binds the sockets
and returns a `TcpWSGIServer`, `UnixWSGIServer` or `MultiSocketServer` whose `run()`
serves (in Rust) until `close()`, Ctrl-C or SIGTERM."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import stat
import threading
from types import FrameType
from typing import Any, Callable, Iterator

from tapster import _tapster
from tapster.adjustments import Adjustments
from tapster.options import OPTIONS
from tapster.process import Notifier

logger = logging.getLogger("tapster")

WSGIApp = Callable[..., Any]


def engine_config(adj: Adjustments) -> _tapster.EngineConfig:
    """The options the engine takes (every record with `engine`), validated there once:
    a bad value is a ValueError that names it. Made before any socket is bound."""
    options = {option.name: getattr(adj, option.name) for option in OPTIONS if option.engine}
    options["trusted_proxy_headers"] = sorted(adj.trusted_proxy_headers)
    return _tapster.EngineConfig(options)


def cleanup_unix_socket(path: str) -> None:
    """Removes a stale Unix socket file; any other kind of file is left alone."""
    try:
        st = os.stat(path)
    except OSError:
        return
    if stat.S_ISSOCK(st.st_mode):
        try:
            os.remove(path)
        except OSError:  # pragma: no cover - raced with someone else
            pass


class _Listener:
    """One bound, listening socket, how it presents itself, and who else uses it:
    `owned` (this process's alone: refused at once at shutdown), `inherited` (left
    listening for its owner: systemd, `fd://`) or `workers` (shared by worker
    processes, each woken in turn)."""

    def __init__(
        self, sock: socket.socket, kind: str, sharing: str = "owned", security: str = "cleartext"
    ) -> None:
        self.socket = sock
        self.kind = kind
        self.sharing = sharing
        #: "cleartext" or "tls" (`certfile`).
        self.security = security
        if kind == "unix":
            self.effective_host: str = "unix"
            self.effective_port: Any = sock.getsockname()
        else:
            host, port = socket.getnameinfo(
                sock.getsockname(), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV
            )
            self.effective_host = host
            self.effective_port = int(port)

    @property
    def server_port(self) -> str:
        return str(self.effective_port)

    def scheme_of(self, text: str) -> str:
        """`text` with `http://` made `https://` on a TLS listener."""
        return text.replace("http://", "https://") if self.security == "tls" else text

    def engine_spec(self) -> tuple[int, str, str, str, str]:
        return (self.socket.fileno(), self.kind, self.server_port, self.sharing, self.security)


def _bind_tcp(adj: Adjustments, family: int, socktype: int, proto: int, sockaddr: Any) -> socket.socket:
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if adj.reuse_port:
            # Each worker gets a socket of its own on this address (supervisor.py).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(adj.backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_unix(adj: Adjustments) -> socket.socket:
    assert adj.unix_socket is not None
    cleanup_unix_socket(adj.unix_socket)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(adj.unix_socket)
        os.chmod(adj.unix_socket, adj.unix_socket_perms)
        sock.listen(adj.backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _adopt(adj: Adjustments, sock: socket.socket, sharing: str = "owned") -> _Listener:
    if sock.type != socket.SOCK_STREAM:
        raise ValueError("Only SOCK_STREAM sockets are supported")
    if sharing == "owned":
        sock.listen(adj.backlog)
    elif not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        # An inherited socket must at least be bound: listen() on an unbound one
        # would pick a random port on every interface.
        name = sock.getsockname()
        if not name or (isinstance(name, tuple) and name[1] == 0):
            raise ValueError("it is not bound to an address")
        try:
            sock.listen(adj.backlog)
        except OSError as exc:
            raise ValueError(f"it cannot listen ({exc.strerror or exc}; a connected socket?)") from None
    kind = "unix" if sock.family == getattr(socket, "AF_UNIX", None) else "tcp"
    return _Listener(sock, kind, sharing, adj.default_security if kind == "tcp" else "cleartext")


def _inherit(adj: Adjustments, fd: int, where: str) -> _Listener:
    """The listening socket on descriptor `fd` (from `fd://` or systemd)."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ValueError(f"{where}: descriptor {fd} is not a socket ({exc.strerror or exc})") from None
    try:
        if sock.type != socket.SOCK_STREAM:
            raise ValueError("it is not a stream socket")
        listener = _adopt(adj, sock, "inherited")
    except (ValueError, OSError) as exc:
        sock.detach()
        raise ValueError(f"{where}: descriptor {fd}: {exc}") from None
    # Not passed on to what the application runs (os.system, subprocess): a leaked
    # copy would keep the port open after the service stops.
    os.set_inheritable(fd, False)
    return listener


#: The first descriptor systemd passes (SD_LISTEN_FDS_START).
SYSTEMD_FIRST_FD = 3


def systemd_sockets() -> list[tuple[int, str]]:
    """The sockets systemd passed this process (socket activation), as (descriptor,
    name), when LISTEN_PID names this process. The variables are then removed, so that
    the application's own children do not take the sockets for theirs."""
    pid, count = os.environ.get("LISTEN_PID", ""), os.environ.get("LISTEN_FDS", "")
    if not (pid.isdigit() and int(pid) == os.getpid() and count.isdigit()):
        return []
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(key, None)
    fds = range(SYSTEMD_FIRST_FD, SYSTEMD_FIRST_FD + int(count))
    return [(fd, names[i] if i < len(names) and names[i] else f"fd {fd}") for i, fd in enumerate(fds)]


def bind_listeners(adj: Adjustments, sock: socket.socket | None = None) -> list[_Listener]:
    """Binds (or adopts) every listening socket the options describe: `sock`, else a
    Unix socket, `sockets`, or the `listen` addresses; then `fd://` descriptors and
    the sockets systemd passed (which replace the default address when the options
    name none)."""
    listeners: list[_Listener] = []
    try:
        activated = systemd_sockets()
        for fd, name in activated:
            listeners.append(_inherit(adj, fd, f"systemd socket {name!r}"))
        seen = {fd for fd, _ in activated}
        for fd in adj.listen_fds:
            if fd in seen:
                raise ValueError(f"listen entry fd://{fd}: descriptor {fd} is given twice")
            seen.add(fd)
            listeners.append(_inherit(adj, fd, f"listen entry fd://{fd}"))
        if sock is not None:
            listeners.append(_adopt(adj, sock))
        elif adj.unix_socket and hasattr(socket, "AF_UNIX"):
            listeners.append(_Listener(_bind_unix(adj), "unix"))
        elif adj.sockets:
            kinds = {s.family == getattr(socket, "AF_UNIX", None) for s in adj.sockets}
            if len(kinds) > 1:
                raise ValueError("Inet and unix sockets may not be mixed")
            listeners.extend(_adopt(adj, s) for s in adj.sockets)
        elif adj.listen_given or not (activated or adj.listen_fds):
            for (family, socktype, proto, sockaddr), security in zip(adj.listen, adj.listen_security):
                bound = _bind_tcp(adj, family, socktype, proto, sockaddr)
                listeners.append(_Listener(bound, "tcp", security=security))
        if not listeners:
            raise ValueError("No listening sockets: check the listen option")
        return listeners
    except BaseException:
        for lst in listeners:
            if lst.socket is not sock and lst.socket not in adj.sockets:
                if lst.sharing == "inherited":
                    lst.socket.detach()
                else:
                    lst.socket.close()
        raise


def bind_metrics(adj: Adjustments) -> socket.socket | None:
    """The metrics listener's socket (`metrics_listen`, `HOST:PORT` or `[V6]:PORT`),
    bound and listening; None when metrics are off."""
    spec = adj.metrics_listen
    if not spec:
        return None
    host, sep, port = spec.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"metrics_listen must be HOST:PORT (or [IPv6]:PORT), not {spec!r}")
    try:
        infos = socket.getaddrinfo(host, int(port), socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
        family, socktype, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, socktype, proto)
    except OSError as exc:
        raise ValueError(f"metrics_listen {spec}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise ValueError(f"metrics_listen {spec}: {exc.strerror or exc}") from None
    host, port = socket.getnameinfo(sock.getsockname(), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)
    logger.info("Metrics on http://%s:%s/metrics", f"[{host}]" if ":" in host else host, port)
    return sock


class BaseWSGIServer:
    """What every Tapster server offers: `run()`, `close()`, `print_listen()`."""

    def __init__(
        self,
        application: WSGIApp,
        adj: Adjustments,
        listeners: list[_Listener],
        config: _tapster.EngineConfig,
        metrics: socket.socket | None = None,
    ) -> None:
        if application is None:
            raise ValueError(
                'The "app" passed to ``create_server`` was ``None``.  You forgot '
                "to return a WSGI app within your application."
            )
        self.application = application
        self.adj = adj
        self.listeners = listeners
        #: The metrics listener (`metrics_listen`), if any.
        self.metrics_socket = metrics
        self._engine = _tapster.Server(
            application,
            config,
            [lst.engine_spec() for lst in listeners],
            metrics.fileno() if metrics is not None else None,
        )
        self._closed = False
        self._lock = threading.Lock()
        #: Told when serving starts and when SIGTERM starts the graceful shutdown.
        self.notifier = Notifier(None)

    @property
    def effective_listen(self) -> list[tuple[str, Any]]:
        return [(lst.effective_host, lst.effective_port) for lst in self.listeners]

    def run(self, tick: Callable[[], None] | None = None, max_requests: int = 0, report_fd: int = -1) -> None:
        """Serves until `close()`, Ctrl-C or SIGTERM, then shuts down gracefully.
        `tick` is called once serving starts, then about every 100 ms and when
        `max_requests` is reached (what it raises stops the server); from
        `max_requests` on, responses close their connection (for a worker).
        `report_fd`: a supervised worker's pipe to its supervisor (a request past
        `request_timeout` is then answered 504 and the worker replaced)."""
        previous = _install_sigterm(lambda: self.notifier.send("STOPPING=1", "STATUS=Stopping"))
        reopen = _install_sigusr1(self._engine.reopen_logs)
        reload = _install_sighup(self.reload_certificates) if self.adj.certfile else None
        try:
            with _signal_wakeup() as wakeup_fd:
                self._engine.run(tick or ReadyOnce(self.notifier), max_requests, wakeup_fd, report_fd)
        except (KeyboardInterrupt, SystemExit):
            pass
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            if reopen is not None:
                signal.signal(signal.SIGUSR1, reopen)
            if reload is not None:
                signal.signal(signal.SIGHUP, reload)
            self.close()

    def reload_certificates(self) -> None:
        """Reads certfile, keyfile and ca_certs again (SIGHUP with TLS): connections
        accepted from now on use them, open ones keep their session. A file that does
        not read is logged and the previous ones stay in use."""
        try:
            self._engine.reload_certificates()
        except ValueError as exc:
            logger.error("TLS certificates not reloaded, the previous ones stay in use: %s", exc)
        else:
            logger.info("TLS certificates reloaded from %s", self.adj.certfile)

    def request_stop(self) -> None:
        """Asks `run()` to shut down gracefully; safe from any thread and from a signal
        handler (it takes no lock)."""
        self._engine.close()

    def close(self) -> None:
        """Stops `run()` (from any thread) and closes the listening sockets."""
        self._engine.close()
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for lst in self.listeners:
            try:
                lst.socket.close()
            except OSError:  # pragma: no cover
                pass
        if self.metrics_socket is not None:
            self.metrics_socket.close()

    def print_listen(self, format_str: str) -> None:
        """Logs each listener's address through `format_str` (Waitress's call); a TLS
        listener's `http://` says `https://`."""
        for lst in self.listeners:
            host = f"[{lst.effective_host}]" if ":" in lst.effective_host else lst.effective_host
            logger.info(lst.scheme_of(format_str).format(host, lst.effective_port))


class TcpWSGIServer(BaseWSGIServer):
    """A server with one TCP listening socket."""

    @property
    def socket(self) -> socket.socket:
        return self.listeners[0].socket

    @property
    def effective_host(self) -> str:
        return self.listeners[0].effective_host

    @property
    def effective_port(self) -> Any:
        return self.listeners[0].effective_port

    def print_listen(self, format_str: str) -> None:
        # Like Waitress, a single server does not bracket IPv6 hosts.
        format_str = self.listeners[0].scheme_of(format_str)
        logger.info(format_str.format(self.effective_host, self.effective_port))


class UnixWSGIServer(TcpWSGIServer):
    """A server on one Unix socket; `effective_port` is its path."""


class MultiSocketServer(BaseWSGIServer):
    """Several listening sockets served by one engine and one worker pool."""


WSGIServer = TcpWSGIServer


def raise_fd_limit(wanted: int, connection_limit: int) -> None:
    """Raises the soft limit on open files toward `wanted` (within the hard limit), so
    `connection_limit` connections plus files and listeners fit; logs a WARNING with
    both numbers when the limit stays below `wanted`."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Unix
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # pragma: no cover - not permitted
            logger.warning("could not raise the open-file limit from %d to %d", soft, target)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        logger.warning(
            "connection_limit=%d needs up to %d open files, but the open-file limit is %d "
            "(hard limit %s): connections beyond it will fail; raise it (ulimit -n) or "
            "lower connection_limit",
            connection_limit,
            wanted,
            soft,
            "unlimited" if hard == resource.RLIM_INFINITY else hard,
        )


def create_server(
    application: WSGIApp,
    map: Any = None,  # noqa: A002 - Waitress's parameter name
    _start: bool = True,
    _sock: socket.socket | None = None,
    _dispatcher: Any = None,
    **kw: Any,
) -> BaseWSGIServer:
    """Binds the sockets described by the options and returns the server (not yet
    running). One socket gives a `TcpWSGIServer` or `UnixWSGIServer`, several a
    `MultiSocketServer`."""
    if application is None:
        raise ValueError(
            'The "app" passed to ``create_server`` was ``None``.  You forgot '
            "to return a WSGI app within your application."
        )
    adj = Adjustments(**kw)
    config = engine_config(adj)
    raise_fd_limit(2 * adj.connection_limit + 256, adj.connection_limit)
    for option in OPTIONS:
        if option.layer == "compat" and option.name in kw:
            logger.debug("option %s has no effect in Tapster", option.name)

    if adj.supervised:
        raise ValueError(
            "workers, max_requests, max_worker_memory and reload need serve() or the "
            "tapster command (create_server() makes one server in this process)"
        )
    listeners = bind_listeners(adj, _sock)
    try:
        metrics = bind_metrics(adj)
    except BaseException:
        close_listeners(listeners, adj)
        raise
    return server_for(application, adj, config, listeners, metrics)


def close_listeners(listeners: list[_Listener], adj: Adjustments) -> None:
    """Closes the listeners this process bound (a caller's `sockets` are the caller's)."""
    for lst in listeners:
        if lst.socket not in adj.sockets:
            lst.socket.close()


def server_for(
    application: WSGIApp,
    adj: Adjustments,
    config: _tapster.EngineConfig,
    listeners: list[_Listener],
    metrics: socket.socket | None = None,
) -> BaseWSGIServer:
    """The server object for listeners already bound (closed if it cannot be made)."""
    try:
        if len(listeners) > 1:
            return MultiSocketServer(application, adj, listeners, config, metrics)
        if listeners[0].kind == "unix":
            return UnixWSGIServer(application, adj, listeners, config, metrics)
        return TcpWSGIServer(application, adj, listeners, config, metrics)
    except BaseException:
        close_listeners(listeners, adj)
        if metrics is not None:
            metrics.close()
        raise


class ReadyOnce:
    """The single process's tick: tells systemd it is ready, once."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self.done = False

    def __call__(self) -> None:
        if not self.done:
            self.done = True
            self.notifier.send("READY=1", "STATUS=Serving (one process)")


@contextlib.contextmanager
def _signal_wakeup() -> Iterator[int]:
    """On the main thread, a pipe Python's signal handler writes to (so the engine
    wakes at once for a signal); the descriptor to watch, or -1."""
    if threading.current_thread() is not threading.main_thread():
        yield -1
        return
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    except ValueError:  # pragma: no cover - not the main interpreter
        os.close(read_end)
        os.close(write_end)
        yield -1
        return
    try:
        yield read_end
    finally:
        signal.set_wakeup_fd(previous)
        os.close(read_end)
        os.close(write_end)


def _install_sigusr1(reopen: Callable[[], None]) -> Any:
    """On the main thread, makes SIGUSR1 reopen the access log (logrotate). Returns
    the handler to restore, or None."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: FrameType | None) -> None:
        reopen()

    return signal.signal(signal.SIGUSR1, handler)


def _install_sighup(reload: Callable[[], None]) -> Any:
    """On the main thread, makes SIGHUP reload the TLS certificates. Returns the
    handler to restore, or None."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: FrameType | None) -> None:
        reload()

    return signal.signal(signal.SIGHUP, handler)


def _install_sigterm(on_stop: Callable[[], None]) -> Any:
    """On the main thread, makes SIGTERM stop the server gracefully (unless the program
    installed its own handler). Returns the handler to restore, or None."""
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        current = signal.getsignal(signal.SIGTERM)
    except (ValueError, AttributeError):  # pragma: no cover - no SIGTERM here
        return None
    if current not in (signal.SIG_DFL, None):
        return None

    def stop(signum: int, frame: FrameType | None) -> None:
        on_stop()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    return current

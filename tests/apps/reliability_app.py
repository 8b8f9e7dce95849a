"""The application behind tests/test_reliability.py: the behaviours app plus the routes
those tests need. Routes (parameters in the query string):

- ``/bigfile?size=``: a regular file of ``size`` bytes (sparse, created once per size in
  a temporary directory removed at exit) returned through ``wsgi.file_wrapper`` with
  its Content-Length, so the server sends it with ``sendfile(2)``.
- ``/enter?tag=&s=``: logs ``EVENT entered <tag>``, then sleeps ``s`` seconds.
- ``/hold?tag=&after=``: logs ``EVENT entered <tag>``, then waits until the server logs
  that its shutdown timeout expired (the "still open after the shutdown timeout" warning,
  seen by a handler on the ``tapster`` logger; at most 10 s), sleeps ``after`` seconds
  (default 0.03: the server is then dropping the connections), and logs
  ``EVENT left <tag> shutdown_timeout_expired=<bool>``. The request thus ends just after the shutdown timeout, while the
  server is stopping.
- ``/busy?tag=&s=``: logs ``EVENT entered <tag>``, then spins in pure Python (holding
  the GIL as much as the interpreter lets it) for ``s`` seconds.
- ``/ran?tag=``: logs ``EVENT ran <tag>``, reads the body and answers ``ran <tag>``.
- ``/write-race?then=write|list|generator``: starts a thread that calls ``write()`` with
  1 MiB pieces until it blocks on the client, then, while that thread is blocked inside
  ``write()``, either calls ``write()`` itself (``write``, and returns ``[]``) or
  returns an iterable (``[b"tail"]`` or a generator yielding it). Every outcome is
  logged as an ``EVENT`` line.

Everything else (``/list``, ``/echo``, ``/stream``, ``/sleep``, ``/__calls__``...) is
``apps.behaviors``; only its routes are counted by ``/__calls__``.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import threading
import time
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import parse_qs

from apps import behaviors
from apps.common import event

StartResponse = Callable[..., Any]
Handler = Callable[[dict[str, Any], StartResponse, dict[str, str]], Iterable[bytes]]
MiB = 1 << 20

_files_lock = threading.Lock()
_files_dir: str | None = None


def _params(environ: dict[str, Any]) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _text(start_response: StartResponse, text: str) -> list[bytes]:
    body = text.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _sparse_file(size: int) -> str:
    """The path of a file of `size` zero bytes (a hole: no disk space, no I/O)."""
    global _files_dir
    with _files_lock:
        if _files_dir is None:
            _files_dir = tempfile.mkdtemp(prefix="tapster-reliability-")
            atexit.register(shutil.rmtree, _files_dir, True)
        path = os.path.join(_files_dir, f"{size}.bin")
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.truncate(size)
        return path


def bigfile(environ: dict[str, Any], start_response: StartResponse, p: dict[str, str]) -> Iterable[bytes]:
    size = int(p.get("size", str(64 * MiB)))
    f = open(_sparse_file(size), "rb")
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))])
    wrapped: Iterable[bytes] = environ["wsgi.file_wrapper"](f)
    return wrapped


def enter(environ: dict[str, Any], start_response: StartResponse, p: dict[str, str]) -> Iterable[bytes]:
    event(f"entered {p.get('tag', 'enter')}")
    time.sleep(float(p.get("s", "1")))
    return _text(start_response, "slept")


class _ShutdownTimeoutSeen(logging.Handler):
    """Sets `expired` when the server logs that its shutdown timeout has passed."""

    def __init__(self) -> None:
        super().__init__()
        self.expired = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "after the shutdown timeout" in record.getMessage():
            self.expired.set()


_shutdown_timeout = _ShutdownTimeoutSeen()
logging.getLogger("tapster").addHandler(_shutdown_timeout)


def hold(environ: dict[str, Any], start_response: StartResponse, p: dict[str, str]) -> Iterable[bytes]:
    tag = p.get("tag", "hold")
    event(f"entered {tag}")
    expired = _shutdown_timeout.expired.wait(10)
    time.sleep(float(p.get("after", "0.03")))
    event(f"left {tag} shutdown_timeout_expired={expired}")
    return _text(start_response, "held")


def busy(environ: dict[str, Any], start_response: StartResponse, p: dict[str, str]) -> Iterable[bytes]:
    event(f"entered {p.get('tag', 'busy')}")
    deadline = time.monotonic() + float(p.get("s", "1"))
    spins = 0
    while time.monotonic() < deadline:
        spins += 1
    return _text(start_response, f"spun {spins}")


def ran(environ: dict[str, Any], start_response: StartResponse, p: dict[str, str]) -> Iterable[bytes]:
    tag = p.get("tag", "ran")
    event(f"ran {tag}")
    environ["wsgi.input"].read()
    return _text(start_response, f"ran {tag}")


class BlockedWriter:
    """A thread that calls `write()` with 1 MiB pieces (up to 50) and reports how it
    ended; `wait_blocked()` returns once it has been inside one call for a while."""

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self.write = write
        self.lock = threading.Lock()
        self.inside = False
        self.completed = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        piece = b"x" * MiB
        try:
            for _ in range(50):
                with self.lock:
                    self.inside = True
                self.write(piece)
                with self.lock:
                    self.inside = False
                    self.completed += 1
        except Exception as exc:  # noqa: BLE001 - reported to the test
            event(f"writer thread raised {type(exc).__name__}: {exc}")
        else:
            event("writer thread wrote everything")

    def wait_blocked(self, hold: float = 0.3, timeout: float = 10.0) -> bool:
        """True once the thread has stayed inside one write() call for `hold` seconds."""
        deadline = time.monotonic() + timeout
        seen = (-1, False)
        since = time.monotonic()
        while time.monotonic() < deadline and self.thread.is_alive():
            with self.lock:
                now = (self.completed, self.inside)
            if now != seen:
                seen, since = now, time.monotonic()
            elif now[1] and time.monotonic() - since >= hold:
                return True
            time.sleep(0.02)
        return False


def write_race(environ: dict[str, Any], start_response: StartResponse, p: dict[str, str]) -> Iterable[bytes]:
    then = p.get("then", "write")
    write = start_response("200 OK", [("Content-Type", "application/octet-stream")])
    writer = BlockedWriter(write)
    blocked = writer.wait_blocked()
    event(f"writer thread blocked={blocked}")
    if then == "write":
        try:
            write(b"y")
        except Exception as exc:  # noqa: BLE001 - reported to the test
            event(f"main write raised {type(exc).__name__}: {exc}")
        else:
            event("main write returned")
        return []
    event(f"main returning a {then}")
    if then == "generator":

        def tail() -> Iterator[bytes]:
            yield b"tail"

        return tail()
    return [b"tail"]


_kept_environs: list[dict[str, Any]] = []


def keep_environ(environ: dict[str, Any], start_response: StartResponse, p: dict[str, str]) -> Iterable[bytes]:
    """Reads the body, then keeps the environ (and so wsgi.input) for good, as a
    framework's reference cycle or a careless cache would."""
    size = len(environ["wsgi.input"].read())
    _kept_environs.append(environ)
    return _text(start_response, f"{size} {len(_kept_environs)}")


class _ReadsBodyInClose:
    """An app_iter whose close() reads the request body, as middleware that logs or
    drains it does."""

    def __init__(self, environ: dict[str, Any]) -> None:
        self.environ = environ

    def __iter__(self) -> Iterator[bytes]:
        yield b"ok"

    def close(self) -> None:
        event(f"close read {self.environ['wsgi.input'].read()!r}")


def close_reads_body(environ: dict[str, Any], start_response: StartResponse, p: dict[str, str]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return _ReadsBodyInClose(environ)


ROUTES: dict[str, Handler] = {
    "keep-environ": keep_environ,
    "close-reads-body": close_reads_body,
    "bigfile": bigfile,
    "enter": enter,
    "hold": hold,
    "busy": busy,
    "ran": ran,
    "write-race": write_race,
}


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    handler = ROUTES.get(environ["PATH_INFO"].strip("/"))
    if handler is None:
        return behaviors.app(environ, start_response)
    return handler(environ, start_response, _params(environ))

"""The application of the observability tests (access log, metrics, slow and stuck
requests): every route's response is known in advance, so a test can check the
exact values the server logs and counts.

- `/hello`: 200, `hello` (text/plain, Content-Length 5) and `X-Trace: t-1`;
- `/big?n=BYTES`: 200, BYTES bytes with a Content-Length, in 256 KiB pieces;
- `/status/NNN`: status NNN, a body `status NNN` (none for 204 and 304);
- `/sleep?s=SECONDS`: sleeps in `sleeping_in_observed_app`, then 200 `slept`;
- `/user`: sets `REMOTE_USER` to `alice` in the environ, then 200 `alice`;
- `/stream?n=K`: 200, K chunks of 64 KiB from a generator (no Content-Length);
- `/drip?n=K&s=SECONDS`: 200, K chunks of 1 KiB, sleeping SECONDS after each;
- `/file?n=BYTES`: 200, a temporary file of BYTES bytes through `wsgi.file_wrapper`
  (which Tapster sends with sendfile(2));
- `/pid`: 200, the serving process's pid;
- anything else: 404 `observed app: no route PATH` (so a test can tell the app
  answered, `/metrics` on the application's port included).
"""

from __future__ import annotations

import os
import tempfile
import time
from http import HTTPStatus
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import parse_qs

StartResponse = Callable[..., Any]
Headers = list[tuple[str, str]]

PIECE = 256 * 1024
STREAM_CHUNK = 64 * 1024


def sleeping_in_observed_app(seconds: float) -> None:
    """Where a slow request spends its time: the name a stack dump must show."""
    time.sleep(seconds)


def _params(environ: dict[str, Any]) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _status_line(code: int) -> str:
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return f"{code} Unknown"


def _fixed(start_response: StartResponse, body: bytes, status: str = "200 OK", extra: Headers | None = None) -> list[bytes]:
    headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body))), ("X-Pid", str(os.getpid()))] + (extra or [])
    start_response(status, headers)
    return [body]


def _pieces(total: int, size: int) -> Iterator[bytes]:
    piece = b"x" * size
    while total > 0:
        yield piece[: min(size, total)]
        total -= size


def _drip(count: int, pause: float) -> Iterator[bytes]:
    for _ in range(count):
        yield b"d" * 1024
        time.sleep(pause)


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path: str = environ["PATH_INFO"]
    params = _params(environ)
    if path == "/hello":
        return _fixed(start_response, b"hello", extra=[("X-Trace", "t-1")])
    if path == "/big":
        n = int(params.get("n", "1000"))
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(n))])
        return _pieces(n, PIECE)
    if path.startswith("/status/"):
        code = int(path.split("/")[2])
        if code in (204, 304):
            start_response(_status_line(code), [])
            return []
        return _fixed(start_response, f"status {code}".encode(), _status_line(code))
    if path == "/sleep":
        sleeping_in_observed_app(float(params.get("s", "1")))
        return _fixed(start_response, b"slept")
    if path == "/user":
        environ["REMOTE_USER"] = "alice"
        return _fixed(start_response, b"alice")
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return _pieces(int(params.get("n", "4")) * STREAM_CHUNK, STREAM_CHUNK)
    if path == "/drip":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return _drip(int(params.get("n", "5")), float(params.get("s", "0.5")))
    if path == "/file":
        n = int(params.get("n", "1000"))
        f = tempfile.TemporaryFile()
        f.write(b"f" * n)
        f.seek(0)
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(n))])
        wrapper: Callable[[Any], Iterable[bytes]] = environ["wsgi.file_wrapper"]
        return wrapper(f)
    if path == "/pid":
        return _fixed(start_response, str(os.getpid()).encode())
    return _fixed(start_response, f"observed app: no route {path}".encode(), "404 Not Found")


application = app

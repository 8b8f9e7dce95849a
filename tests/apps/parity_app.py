"""The application for the side-by-side parity tests (tests/test_parity.py): the same
module is served by real Waitress and by Tapster, and the tests compare what each
server made of the same raw bytes.

The route is chosen by PATH_INFO (so, with a url_prefix, by what is left after it).
Any path that is not a route below answers 200 with a JSON description of the environ
(``describe``): every key with its value (str, int, bool and None as they are, tuples
as lists, any other object as ``"<object TypeName>"``), plus the body the app read
from wsgi.input and a few facts about the objects (is wsgi.errors sys.stderr, is
wsgi.input seekable, what does waitress.client_disconnected() return, is
tapster.client_disconnected the same callable where it is offered...).

Routes (query parameters in brackets):

- ``/status/<code>`` [reason, h=Name:Value (repeatable), body]: that status, those
  headers and a Content-Length body.
- ``/gen`` [n, size, cl]: a generator body of n chunks.
- ``/write`` [n, cl, tail]: the write() callable, n times.
- ``/list1``: a one-item list. ``/list2``: a two-item list. ``/tuple2``: a tuple.
- ``/empty``: an empty list. ``/empty-cl0``: an empty list with Content-Length: 0.
- ``/nobody/<code>``: a body-less status (204, 304) with a body and a Content-Length
  the server must drop.
- ``/cl`` [declared, actual, gen]: a Content-Length that does not match the body.
- ``/fw-bytesio`` [offset, cl, block]: wsgi.file_wrapper on a BytesIO.
- ``/fw-file`` [cl]: wsgi.file_wrapper on a real file (this module's data file).
- ``/fw-unseekable``: wsgi.file_wrapper on a file-like object without seek/tell.
- ``/raise``: an exception before start_response. ``/raise-after``: after the first
  chunk of a generator.
- ``/app-server``: the app sets its own Server header.
- ``/big`` [size, cl]: a large body (for outbuf_overflow).
- ``/badstatus`` [status]: start_response with an unusual status string.
- ``/badheader`` [name, value]: start_response with an unusual header.
- ``/sleep`` [s]: sleeps, then answers like the environ dump.
- ``/wait-disconnect`` [wait, tag]: polls waitress.client_disconnected() and prints
  ``EVENT wait-disconnect <tag> saw=<bool>``.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import parse_qs, unquote

StartResponse = Callable[..., Any]
Environ = dict[str, Any]

TEXT = ("Content-Type", "text/plain")

#: A real file for the file_wrapper route, written once per process.
_FILE_DATA = b"".join(b"line %04d of the real file\n" % i for i in range(2000))
_file_lock = threading.Lock()
_file_path: str | None = None


def _real_file() -> str:
    global _file_path
    with _file_lock:
        if _file_path is None:
            fd, path = tempfile.mkstemp(prefix="parity-file-")
            with os.fdopen(fd, "wb") as f:
                f.write(_FILE_DATA)
            _file_path = path
        return _file_path


def _json_safe(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, tuple):
        return [_json_safe(v) for v in value]
    return f"<object {type(value).__name__}>"


def _params(environ: Environ) -> dict[str, list[str]]:
    return parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)


def _one(p: dict[str, list[str]], name: str, default: str | None = None) -> str | None:
    values = p.get(name)
    return values[-1] if values else default


def describe(environ: Environ) -> dict[str, Any]:
    stream = environ.get("wsgi.input")
    check = environ.get("waitress.client_disconnected")
    facts: dict[str, Any] = {
        "errors_is_stderr": environ.get("wsgi.errors") is sys.stderr,
        "file_wrapper_callable": callable(environ.get("wsgi.file_wrapper")),
        "client_disconnected()": check() if callable(check) else repr(check),
        "input_tell_before": stream.tell() if hasattr(stream, "tell") else None,
    }
    if "tapster.client_disconnected" in environ:
        # Tapster's name for the same callable (README); reported only where offered.
        facts["tapster.client_disconnected is waitress.client_disconnected"] = (
            environ["tapster.client_disconnected"] is check
        )
    body = stream.read() if stream is not None else b""
    facts["input_seek0_reread"] = None
    if hasattr(stream, "seek"):
        stream.seek(0)
        facts["input_seek0_reread"] = stream.read() == body
    return {
        "environ": {k: _json_safe(v) for k, v in environ.items()},
        "facts": facts,
        "body": body.decode("latin-1"),
        "body_len": len(body),
    }


def echo(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    out = json.dumps(describe(environ), sort_keys=True).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
    return [out]


def status(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    p = _params(environ)
    code = environ["PATH_INFO"].split("/")[2]
    reason = _one(p, "reason", "Custom Reason")
    headers = [TEXT]
    for item in p.get("h", []):
        name, _, value = item.partition(":")
        headers.append((name, value))
    body = (_one(p, "body", "status body") or "").encode()
    headers.append(("Content-Length", str(len(body))))
    start_response(f"{code} {reason}", headers)
    return [body]


def gen(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    p = _params(environ)
    n, size = int(_one(p, "n", "3")), int(_one(p, "size", "5"))
    headers = [TEXT]
    if _one(p, "cl") is not None:
        headers.append(("Content-Length", _one(p, "cl")))
    start_response("200 OK", headers)

    def chunks() -> Iterator[bytes]:
        for i in range(n):
            yield bytes([ord("a") + i % 26]) * size

    return chunks()


def write(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    p = _params(environ)
    headers = [TEXT]
    if _one(p, "cl") is not None:
        headers.append(("Content-Length", _one(p, "cl")))
    w = start_response("200 OK", headers)
    for i in range(int(_one(p, "n", "2"))):
        w(b"write%d;" % i)
    return [b"tail"] if _one(p, "tail") else []


def list1(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [TEXT])
    return [b"one single item"]


def list2(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [TEXT])
    return [b"first item;", b"second item"]


def tuple2(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [TEXT])
    return (b"tuple-a;", b"tuple-b")


def empty(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [TEXT])
    return []


def empty_cl0(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [TEXT, ("Content-Length", "0")])
    return []


def nobody(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    code = environ["PATH_INFO"].split("/")[2]
    reasons = {"204": "No Content", "304": "Not Modified"}
    start_response(f"{code} {reasons.get(code, 'Whatever')}", [TEXT, ("Content-Length", "9"), ("ETag", '"v1"')])
    return [b"not sent!"]


def cl_mismatch(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    p = _params(environ)
    declared, actual = int(_one(p, "declared", "10")), int(_one(p, "actual", "5"))
    start_response("200 OK", [TEXT, ("Content-Length", str(declared))])
    if _one(p, "gen"):
        return iter([b"x" * actual])
    return [b"x" * actual] if actual else []


def fw_bytesio(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    p = _params(environ)
    data = b"0123456789" * 100
    f = io.BytesIO(data)
    f.seek(int(_one(p, "offset", "0")))
    headers = [("Content-Type", "application/octet-stream")]
    if _one(p, "cl") is not None:
        headers.append(("Content-Length", _one(p, "cl")))
    start_response("200 OK", headers)
    return environ["wsgi.file_wrapper"](f, int(_one(p, "block", "64")))


def fw_file(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    p = _params(environ)
    f = open(_real_file(), "rb")
    headers = [("Content-Type", "text/plain")]
    if _one(p, "cl") is not None:
        headers.append(("Content-Length", _one(p, "cl")))
    start_response("200 OK", headers)
    return environ["wsgi.file_wrapper"](f, 8192)


class _Unseekable:
    """A file-like object with read() and close() only."""

    def __init__(self, data: bytes) -> None:
        self._inner = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._inner.read(size)

    def close(self) -> None:
        self._inner.close()


def fw_unseekable(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [TEXT])
    return environ["wsgi.file_wrapper"](_Unseekable(b"unseekable " * 20), 16)


def raise_before(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    raise ValueError("parity: boom before start_response")


def raise_after(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [TEXT])

    def body() -> Iterator[bytes]:
        yield b"first chunk"
        raise ValueError("parity: boom in iteration")

    return body()


def app_server(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [TEXT, ("Server", "my-app/1.0"), ("Content-Length", "6")])
    return [b"server"]


def big(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    p = _params(environ)
    size = int(_one(p, "size", "2000000"))
    headers = [("Content-Type", "application/octet-stream")]
    if _one(p, "cl", "1") == "1":
        headers.append(("Content-Length", str(size)))
    start_response("200 OK", headers)
    piece = bytes(range(256)) * 256
    return [(piece * (size // len(piece) + 1))[:size]]


def badstatus(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    p = _params(environ)
    start_response(_one(p, "status", "200"), [TEXT, ("Content-Length", "2")])
    return [b"ok"]


def badheader(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    p = _params(environ)
    name = unquote(_one(p, "name", "X-Test") or "")
    value = unquote(_one(p, "value", "v") or "")
    start_response("200 OK", [TEXT, (name, value), ("Content-Length", "2")])
    return [b"ok"]


def wait_disconnect(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Polls waitress.client_disconnected() for up to `wait` s and prints what it saw."""
    p = _params(environ)
    tag = _one(p, "tag", "x")
    check = environ["waitress.client_disconnected"]
    deadline = time.monotonic() + float(_one(p, "wait", "2"))
    seen = check()
    while not seen and time.monotonic() < deadline:
        time.sleep(0.02)
        seen = check()
    print(f"EVENT wait-disconnect {tag} saw={seen}", flush=True)
    start_response("200 OK", [TEXT, ("Content-Length", "4")])
    return [b"done"]


def sleep(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    p = _params(environ)
    time.sleep(float(_one(p, "s", "0.5")))
    return echo(environ, start_response)


ROUTES: dict[str, Callable[[Environ, StartResponse], Iterable[bytes]]] = {
    "/gen": gen,
    "/write": write,
    "/list1": list1,
    "/list2": list2,
    "/tuple2": tuple2,
    "/empty": empty,
    "/empty-cl0": empty_cl0,
    "/cl": cl_mismatch,
    "/fw-bytesio": fw_bytesio,
    "/fw-file": fw_file,
    "/fw-unseekable": fw_unseekable,
    "/raise": raise_before,
    "/raise-after": raise_after,
    "/app-server": app_server,
    "/big": big,
    "/badstatus": badstatus,
    "/badheader": badheader,
    "/sleep": sleep,
    "/wait-disconnect": wait_disconnect,
}


def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path.startswith("/status/"):
        return status(environ, start_response)
    if path.startswith("/nobody/"):
        return nobody(environ, start_response)
    handler = ROUTES.get(path, echo)
    return handler(environ, start_response)


def file_data() -> bytes:
    """What /fw-file serves."""
    return _FILE_DATA

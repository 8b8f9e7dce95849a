"""A test application whose behaviour is chosen by the request path.

Every call is counted (GET /__calls__ returns the count, not counting itself), so tests
can assert that a malformed request never reached the application. Events worth
asserting (close() called, write() failing) are printed to stdout, which the test
harness captures with the server's log.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import parse_qs

from apps.common import event, json_safe

StartResponse = Callable[..., Any]

_calls = 0
_lock = threading.Lock()


def _params(environ: dict[str, Any]) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


class Closing:
    """An app_iter that reports close()."""

    def __init__(self, chunks: list[bytes], name: str, fail_close: bool = False) -> None:
        self.chunks = chunks
        self.name = name
        self.fail_close = fail_close

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)

    def close(self) -> None:
        event(f"closed {self.name}")
        if self.fail_close:
            raise RuntimeError("close failed")


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    global _calls
    path = environ["PATH_INFO"]
    if path == "/__calls__":
        with _lock:
            body = str(_calls).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    with _lock:
        _calls += 1
    p = _params(environ)
    handler = ROUTES.get(path.split("/")[1] if path.count("/") >= 1 else "", echo)
    return handler(environ, start_response, p)


def echo(environ: dict[str, Any], start_response: StartResponse, p: dict[str, str]) -> Iterable[bytes]:
    body = environ["wsgi.input"].read()
    data = {
        "environ": {k: json_safe(v) for k, v in environ.items()},
        "body": body.decode("latin-1"),
    }
    out = json.dumps(data).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
    return [out]


def status(environ, start_response, p):
    code = environ["PATH_INFO"].split("/")[2]
    headers = [("Content-Type", "text/plain")]
    if "cl" in p:
        headers.append(("Content-Length", p["cl"]))
    start_response(f"{code} Whatever", headers)
    return [p.get("body", "body").encode()]


def gen(environ, start_response, p):
    n, size = int(p.get("n", "3")), int(p.get("size", "5"))
    headers = [("Content-Type", "text/plain")]
    if "cl" in p:
        headers.append(("Content-Length", p["cl"]))
    start_response("200 OK", headers)

    def chunks() -> Iterator[bytes]:
        for i in range(n):
            yield bytes([ord("a") + i % 26]) * size
            delay = float(p.get("delay", "0"))
            if delay:
                time.sleep(delay)

    return chunks()


def listing(environ, start_response, p):
    n, size = int(p.get("n", "2")), int(p.get("size", "4"))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [bytes([ord("a") + i]) * size for i in range(n)]


def empty(environ, start_response, p):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return []


def write(environ, start_response, p):
    headers = [("Content-Type", "text/plain")]
    if "cl" in p:
        headers.append(("Content-Length", p["cl"]))
    w = start_response("200 OK", headers)
    for i in range(int(p.get("n", "2"))):
        w(b"write%d;" % i)
    return [b"tail"] if p.get("tail") else []


def lazy(environ, start_response, p):
    def body() -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b""
        yield b"lazy body"

    return body()


def error(environ, start_response, p):
    where = environ["PATH_INFO"].split("/")[2]
    if where == "before":
        raise ValueError("boom before start_response")
    if where == "after-start":
        start_response("200 OK", [("Content-Type", "text/plain")])
        raise ValueError("boom after start_response")
    if where == "in-iter":
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body() -> Iterator[bytes]:
            yield b"first chunk"
            raise ValueError("boom in iteration")

        return body()
    if where == "close":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return Closing([b"ok"], "error-close", fail_close=True)
    if where == "non-bytes":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return ["text, not bytes"]
    if where == "no-start":
        return [b"never started"]
    if where == "unicode":
        raise ValueError("\u00fcnicode \u2603 error")
    raise LookupError(where)


def closing(environ, start_response, p):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return Closing([b"one", b"two"], p.get("name", "closing"))


def cl(environ, start_response, p):
    declared, actual = int(p["declared"]), int(p["actual"])
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(declared))])
    if p.get("gen"):
        return iter([b"x" * actual])
    return [b"x" * actual] if actual else []


def big(environ, start_response, p):
    size = int(p.get("size", "1048576"))
    headers = [("Content-Type", "application/octet-stream")]
    if p.get("cl", "1") == "1":
        headers.append(("Content-Length", str(size)))
    start_response("200 OK", headers)
    return [b"z" * size]


def stream(environ, start_response, p):
    """Many chunks, optionally slowly; reports close() and how far it got."""
    n, size = int(p.get("n", "100")), int(p.get("size", "1024"))
    delay = float(p.get("delay", "0"))
    start_response("200 OK", [("Content-Type", "application/octet-stream")])

    class Body:
        def __init__(self) -> None:
            self.sent = 0

        def __iter__(self) -> Iterator[bytes]:
            for _ in range(n):
                self.sent += 1
                yield b"s" * size
                if delay:
                    time.sleep(delay)

        def close(self) -> None:
            event(f"stream closed after {self.sent} chunks")

    return Body()


def sleep(environ, start_response, p):
    time.sleep(float(p.get("s", "1")))
    body = b"slept"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def headers(environ, start_response, p):
    """Responds with the headers given as ?h=Name:value (repeatable via h1, h2...)."""
    out = []
    for key in sorted(p):
        if key.startswith("h"):
            name, _, value = p[key].partition(":")
            out.append((name, value))
    body = b"headers"
    out.append(("Content-Length", str(len(body))))
    start_response(p.get("status", "200 OK"), out)
    return [body]


def disconnect(environ, start_response, p):
    """Waits until the client goes away (or 5 s) and reports what it saw."""
    check = environ["waitress.client_disconnected"]
    deadline = time.monotonic() + float(p.get("wait", "5"))
    while time.monotonic() < deadline and not check():
        time.sleep(0.01)
    event(f"client_disconnected={check()}")
    start_response("200 OK", [("Content-Length", "4")])
    return [b"done"]


def input_api(environ, start_response, p):
    """Exercises wsgi.input's methods and reports what they returned."""
    stream = environ["wsgi.input"]
    result: dict[str, Any] = {"type": type(stream).__name__}
    result["readline"] = stream.readline().decode("latin-1")
    result["read3"] = stream.read(3).decode("latin-1")
    result["tell"] = stream.tell()
    result["rest_lines"] = [l.decode("latin-1") for l in stream.readlines()]
    stream.seek(0)
    result["after_seek"] = stream.read().decode("latin-1")
    result["eof"] = stream.read().decode("latin-1")
    out = json.dumps(result).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
    return [out]


ROUTES: dict[str, Callable[..., Iterable[bytes]]] = {
    "echo": echo,
    "status": status,
    "gen": gen,
    "list": listing,
    "empty": empty,
    "write": write,
    "lazy": lazy,
    "error": error,
    "closing": closing,
    "cl": cl,
    "big": big,
    "stream": stream,
    "sleep": sleep,
    "headers": headers,
    "disconnect": disconnect,
    "input": input_api,
}

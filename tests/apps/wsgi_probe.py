"""An application for the WSGI-contract tests (tests/test_wsgi.py).

Any path that is not one of the routes below answers with a JSON description of the
environ it received, so PATH_INFO and SCRIPT_NAME can be anything. The routes:

- `/sr/<case>`: a start_response or write() rule broken in a specific way (see `BAD`).
- `/sr-ok/<case>`: start_response used correctly in an unusual way (exc_info
  replacement, lazy start, empty chunks).
- `/close/<kind>/<name>`: an app_iter whose close() prints `EVENT closed <name>`.
- `/input?ops=...`: runs a list of wsgi.input operations and reports their results.
- `/mark/<name>`: prints `EVENT mark <name>`, so a test can wait for everything logged
  before it.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import parse_qs

from apps.common import event, json_safe

StartResponse = Callable[..., Any]
Environ = dict[str, Any]

TEXT = [("Content-Type", "text/plain")]


def _call(func: Any) -> Any:
    if func is None:
        return "missing"
    if not callable(func):
        return "not callable"
    return func()


def describe(environ: Environ) -> dict[str, Any]:
    stream = environ.get("wsgi.input")
    return {
        "environ": {k: json_safe(v) for k, v in environ.items()},
        "types": {k: type(v).__name__ for k, v in environ.items()},
        "errors_is_stderr": environ.get("wsgi.errors") is sys.stderr,
        "file_wrapper_callable": callable(environ.get("wsgi.file_wrapper")),
        "input_methods": sorted(m for m in ("read", "readline", "readlines", "__iter__") if hasattr(stream, m)),
        "waitress_disconnected": _call(environ.get("waitress.client_disconnected")),
        "tapster_disconnected": _call(environ.get("tapster.client_disconnected")),
        "body": stream.read().decode("latin-1") if stream is not None else None,
    }


def respond_json(start_response: StartResponse, data: Any) -> list[bytes]:
    out = json.dumps(data).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
    return [out]


# --- start_response rules broken -------------------------------------------------------

# case -> (status, headers) handed to start_response; each must make it raise.
BAD: dict[str, tuple[Any, list[tuple[Any, Any]]]] = {
    "status-int": (200, TEXT),
    "status-bytes": (b"200 OK", TEXT),
    "status-crlf": ("200 OK\r\nX-Injected: 1", TEXT),
    "status-lf": ("200 OK\nX-Injected: 1", TEXT),
    "status-no-code": ("OK", TEXT),
    "status-non-latin1": ("200 \u2603", TEXT),
    "name-bytes": ("200 OK", [(b"X-Name", "v")]),
    "value-int": ("200 OK", [("X-Value", 1)]),
    "value-bytes": ("200 OK", [("X-Value", b"v")]),
    "value-crlf": ("200 OK", [("X-Value", "a\r\nX-Injected: 1")]),
    "value-lf": ("200 OK", [("X-Value", "a\nX-Injected: 1")]),
    "value-nul": ("200 OK", [("X-Value", "a\x00b")]),
    "value-non-latin1": ("200 OK", [("X-Value", "snow \u2603")]),
    "name-crlf": ("200 OK", [("X-Name\r\nX-Injected", "v")]),
    "name-space": ("200 OK", [("X Name", "v")]),
    "bad-content-length": ("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "abc")]),
}


def start_response_rules(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    case = environ["PATH_INFO"][len("/sr/") :]
    if case in BAD:
        status, headers = BAD[case]
        start_response(status, headers)
        return [b"unreachable"]
    if case.startswith("hop-"):
        start_response("200 OK", [("Content-Type", "text/plain"), (case[len("hop-") :], "x")])
        return [b"unreachable"]
    if case == "twice":
        start_response("200 OK", TEXT)
        start_response("200 OK", TEXT)
        return [b"unreachable"]
    if case == "write-before-start":
        # start_response's write() reached without calling start_response first.
        write = getattr(start_response, "write", None) or start_response.__self__.write
        write(b"too early")
        return []
    if case == "no-start":
        return [b"never started"]
    if case == "non-bytes-list":
        start_response("200 OK", TEXT)
        return ["text, not bytes"]
    if case == "non-bytes-gen":
        start_response("200 OK", TEXT)
        return iter(["text, not bytes"])
    if case == "write-str":
        write = start_response("200 OK", TEXT)
        write("text, not bytes")
        return []
    if case == "exc-after-chunk":
        return _exc_info_after_chunk(start_response)
    if case == "exc-after-write":
        write = start_response("200 OK", TEXT)
        write(b"first")
        try:
            raise ValueError("late failure after write")
        except ValueError:
            start_response("500 Oops", TEXT, sys.exc_info())
        return [b"never"]
    raise LookupError(case)


def _exc_info_after_chunk(start_response: StartResponse) -> Iterator[bytes]:
    start_response("200 OK", TEXT)
    yield b"first"
    try:
        raise ValueError("late failure after chunk")
    except ValueError:
        start_response("500 Oops", TEXT, sys.exc_info())
    yield b"never"


# --- start_response used correctly in unusual ways ------------------------------------


def start_response_ok(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    case = environ["PATH_INFO"][len("/sr-ok/") :]
    if case == "exc-replace":
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Old", "1")])
        try:
            raise ValueError("replaced")
        except ValueError:
            start_response("500 Oops", [("Content-Type", "text/plain"), ("X-New", "1")], sys.exc_info())
        return [b"replaced body"]
    if case == "lazy-after-empty":

        def lazy() -> Iterator[bytes]:
            yield b""
            start_response("200 OK", [("Content-Type", "text/plain"), ("X-Lazy", "1")])
            yield b""
            yield b"lazy"

        return lazy()
    if case == "empty-chunks":
        start_response("200 OK", TEXT)
        return iter([b"", b"a", b"", b"", b"b", b""])
    if case == "only-empty-chunks":
        start_response("200 OK", TEXT)
        return iter([b"", b""])
    raise LookupError(case)


# --- close() -------------------------------------------------------------------------


class Closing:
    """An app_iter that reports close(); `fail_at` makes iteration raise at that chunk."""

    def __init__(self, chunks: list[bytes], name: str, fail_at: int | None = None) -> None:
        self.chunks = chunks
        self.name = name
        self.fail_at = fail_at

    def __iter__(self) -> Iterator[bytes]:
        for i, chunk in enumerate(self.chunks):
            if i == self.fail_at:
                raise ValueError(f"iteration failed at chunk {i}")
            yield chunk

    def close(self) -> None:
        event(f"closed {self.name}")


class ClosingFile(io.BytesIO):
    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.name = name

    def close(self) -> None:
        event(f"closed {self.name}")
        super().close()


def closing(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    _, _, kind, name = environ["PATH_INFO"].split("/", 3)
    if kind == "no-start":
        return Closing([b"never started"], name)
    if kind == "file":
        start_response("200 OK", TEXT)
        return environ["wsgi.file_wrapper"](ClosingFile(b"file body", name), 4)
    start_response("200 OK", TEXT)
    fail_at = {"normal": None, "fail-first": 0, "fail-second": 1}[kind]
    return Closing([b"one", b"two"], name, fail_at)


# --- wsgi.input ------------------------------------------------------------------------


def _input_op(stream: Any, op: str) -> Any:
    name, _, arg = op.partition(":")
    if name == "read":
        return (stream.read(int(arg)) if arg else stream.read()).decode("latin-1")
    if name == "readline":
        return (stream.readline(int(arg)) if arg else stream.readline()).decode("latin-1")
    if name == "readlines":
        return [line.decode("latin-1") for line in stream.readlines()]
    if name == "iter":
        return [line.decode("latin-1") for line in stream]
    if name == "tell":
        return stream.tell()
    if name == "seek":
        stream.seek(int(arg))
        return "ok"
    if name == "sha256":
        data = stream.read()
        return [len(data), hashlib.sha256(data).hexdigest()]
    raise LookupError(op)


def input_ops(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    ops = parse_qs(environ["QUERY_STRING"]).get("ops", [""])[0].split(",")
    stream = environ["wsgi.input"]
    return respond_json(start_response, [_input_op(stream, op) for op in ops if op])


def mark(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    event(f"mark {environ['PATH_INFO'][len('/mark/'):]}")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
    return [b"mark"]


PREFIXES: list[tuple[str, Callable[[Environ, StartResponse], Iterable[bytes]]]] = [
    ("/sr/", start_response_rules),
    ("/sr-ok/", start_response_ok),
    ("/close/", closing),
    ("/mark/", mark),
]


def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/input":
        return input_ops(environ, start_response)
    for prefix, handler in PREFIXES:
        if path.startswith(prefix):
            return handler(environ, start_response)
    return respond_json(start_response, describe(environ))

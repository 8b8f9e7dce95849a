"""The applications every server runs in the benchmark, identical for all of them."""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Iterable, Iterator

StartResponse = Callable[..., Any]

HELLO = b"Hello, world!"
CHUNK = b"x" * 1024
FILES_DIR = os.environ.get("BENCH_FILES", "/tmp/tapster-bench-files")


def hello(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
    return [HELLO]


def echo(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    body = environ["wsgi.input"].read()
    start_response(
        "200 OK",
        [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(body)))],
    )
    return [body]


def stream(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "application/octet-stream")])

    def body() -> Iterator[bytes]:
        for _ in range(100):
            yield CHUNK

    return body()


def _file_app(name: str) -> Callable[..., Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        f = open(os.path.join(FILES_DIR, name), "rb")
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        wrapper = environ.get("wsgi.file_wrapper")
        if wrapper is None:  # servers without file_wrapper get the same iteration
            return iter(lambda: f.read(65536), b"")
        return wrapper(f, 65536)

    return app


file_1m = _file_app("1m.bin")
file_64m = _file_app("64m.bin")


def sleep(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    time.sleep(0.05)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
    return [HELLO]

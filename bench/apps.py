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


def spin(loops: int) -> int:
    """Pure-Python work that holds the GIL: `loops` multiply-adds."""
    total = 0
    for i in range(loops):
        total += i * i
    return total


def calibrate(seconds: float = 0.001) -> int:
    """How many spin() loops take `seconds` of CPU here (best of several tries)."""
    loops = 20_000
    best = min(_timed_spin(loops) for _ in range(20))
    return max(1, round(loops * seconds / best))


def _timed_spin(loops: int) -> float:
    started = time.process_time_ns()
    spin(loops)
    return max(1, time.process_time_ns() - started) / 1e9


# The harness calibrates once and passes the count to every server, so that all of them
# do the same work per request; run alone, the module calibrates itself.
CPU_LOOPS = int(os.environ.get("BENCH_CPU_LOOPS", "0")) or calibrate()


def cpu_1ms(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """About 1 ms of CPU-bound Python per request (a calibrated loop, not a sleep)."""
    spin(CPU_LOOPS)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
    return [HELLO]


def sleep(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    time.sleep(0.05)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
    return [HELLO]

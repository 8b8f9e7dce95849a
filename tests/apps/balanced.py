"""The application behind the load balancers in test_balancers.py. Every response
says which instance (BALANCED_INSTANCE) and process served it, so that the client can
check each one against what it asked for.

- `GET /health`: 200 `ok` (the balancers' health check);
- `GET /blob?size=N&seed=S[&stream=1[&pace_ms=M]]`: N bytes of
  `random.Random(S).randbytes(N)`, which the client can work out itself, with
  `X-Body-Size` and `X-Body-Sha256`; with `stream=1` the body comes from a generator
  in 16 KiB pieces, with no Content-Length (the server chunks it); with `pace_ms` it
  prints `EVENT streaming INSTANCE PID SEED` and waits M ms before each piece after
  the first (a response known to be in progress in a given process);
- `GET /hold?ms=N`: prints `EVENT holding PID`, then waits N ms before it answers
  (a request known to be in a given process, for the test that kills it);
- `POST /ingest` with `X-Request-Id`: reads the whole body, then appends
  `ID SHA256 PID` to the file BALANCED_LEDGER (one write per line, O_APPEND, so the
  workers of an instance share the file) and answers with the body's SHA-256;
- `GET /whoami`: REMOTE_ADDR and REMOTE_PORT, as JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import parse_qs

from apps.common import event

StartResponse = Callable[..., Any]
INSTANCE = os.environ.get("BALANCED_INSTANCE", "?")
LEDGER = os.environ.get("BALANCED_LEDGER")
PIECE = 16 * 1024


def blob(size: int, seed: int) -> bytes:
    """The body of `/blob?size=SIZE&seed=SEED` (the client computes it the same way)."""
    return random.Random(seed).randbytes(size)


def _headers(extra: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [("X-Instance", INSTANCE), ("X-Worker-Pid", str(os.getpid())), *extra]


def _params(environ: dict[str, Any]) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _pieces(body: bytes, pace: float) -> Iterator[bytes]:
    for start in range(0, len(body), PIECE):
        if start and pace:
            time.sleep(pace)
        yield body[start : start + PIECE]


def _record(request_id: str, digest: str) -> None:
    if LEDGER is None:
        raise RuntimeError("BALANCED_LEDGER is not set")
    fd = os.open(LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{request_id} {digest} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path, method = environ["PATH_INFO"], environ["REQUEST_METHOD"]
    params = _params(environ)
    if path == "/blob" and method == "GET":
        body = blob(int(params["size"]), int(params["seed"]))
        meta = [("X-Body-Size", str(len(body))), ("X-Body-Sha256", hashlib.sha256(body).hexdigest())]
        if params.get("stream") == "1":
            start_response("200 OK", _headers([("Content-Type", "application/octet-stream"), *meta]))
            pace = int(params.get("pace_ms", "0")) / 1000
            if pace:
                event(f"streaming {INSTANCE} {os.getpid()} {params['seed']}")
            return _pieces(body, pace)
        start_response("200 OK", _headers([("Content-Type", "application/octet-stream"), ("Content-Length", str(len(body))), *meta]))
        return [body]
    if path == "/ingest" and method == "POST":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        data = environ["wsgi.input"].read(length)
        if len(data) != length:  # never record a body that was not taken whole
            start_response("400 Bad Request", _headers([("Content-Length", "0")]))
            return [b""]
        digest = hashlib.sha256(data).hexdigest()
        _record(environ.get("HTTP_X_REQUEST_ID", "-"), digest)
        out = digest.encode()
        start_response("200 OK", _headers([("Content-Type", "text/plain"), ("Content-Length", str(len(out))), ("X-Body-Sha256", digest)]))
        return [out]
    if path == "/hold":
        event(f"holding {os.getpid()}")
        time.sleep(int(params.get("ms", "500")) / 1000)
        start_response("200 OK", _headers([("Content-Type", "text/plain"), ("Content-Length", "4")]))
        return [b"held"]
    if path == "/whoami":
        out = json.dumps({"REMOTE_ADDR": environ.get("REMOTE_ADDR"), "REMOTE_PORT": environ.get("REMOTE_PORT")}).encode()
        start_response("200 OK", _headers([("Content-Type", "application/json"), ("Content-Length", str(len(out)))]))
        return [out]
    if path == "/health":
        start_response("200 OK", _headers([("Content-Type", "text/plain"), ("Content-Length", "2")]))
        return [b"ok"]
    start_response("404 Not Found", _headers([("Content-Length", "0")]))
    return [b""]

"""The application behind the static-file tests (tests/test_static.py): it records
every request it sees, so a test can prove a request under a static mount never
reached it (or, with `static_fallthrough`, that it did).

- `/__seen__`: 200, a JSON list of `[method, PATH_INFO, QUERY_STRING]`, one per
  request seen so far (not counting `/__seen__` itself);
- `/sleep?s=SECONDS`: sleeps, then 200 `slept` (recorded);
- anything else: 200 `app saw METHOD PATH` (text/plain), recorded first.
"""

from __future__ import annotations

import json
import threading
import time
from urllib.parse import parse_qs
from typing import Any, Callable, Iterable

_seen: list[list[str]] = []
_lock = threading.Lock()


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path: str = environ["PATH_INFO"]
    method: str = environ["REQUEST_METHOD"]
    if path == "/__seen__":
        with _lock:
            body = json.dumps(_seen).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    with _lock:
        _seen.append([method, path, environ.get("QUERY_STRING", "")])
    # Read (and drop) any body, so a POST's bytes never linger.
    length = environ.get("CONTENT_LENGTH") or "0"
    if length.isdigit() and int(length):
        environ["wsgi.input"].read(int(length))
    if path == "/sleep":
        seconds = float(parse_qs(environ.get("QUERY_STRING", "")).get("s", ["1"])[-1])
        time.sleep(seconds)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
        return [b"slept"]
    body = f"app saw {method} {path}".encode("latin-1", "replace")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


application = app

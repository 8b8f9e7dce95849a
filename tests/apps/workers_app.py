"""An application for the worker-process tests: it reports the process that served
the request (its pid, how many requests that process has served, its resident
memory) and a module-level version string, and on request it sleeps, grows its
memory or ends its process.

- `/`: the report, as JSON;
- `/sleep?s=SECONDS`: writes `EVENT sleeping PID` to stdout, sleeps, then the report;
- `/grow?mib=N`: keeps N MiB more (touched, so resident), then the report;
- `/crash?status=N`: ends the process at once with os._exit(N), no response.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs

VERSION = "1"

_served = 0
_lock = threading.Lock()
_hoard: list[bytes] = []


def _params(environ: dict[str, Any]) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    global _served
    with _lock:
        _served += 1
        served = _served
    path = environ["PATH_INFO"]
    params = _params(environ)
    if path == "/sleep":
        os.write(1, f"EVENT sleeping {os.getpid()}\n".encode())  # one write: whole among the workers' lines
        time.sleep(float(params.get("s", "1")))
    elif path == "/grow":
        _hoard.append(b"\x01" * (int(params.get("mib", "100")) << 20))
    elif path == "/crash":
        os._exit(int(params.get("status", "3")))
    body = json.dumps({"pid": os.getpid(), "version": VERSION, "served": served, "rss_kib": _rss_kib()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


application = app

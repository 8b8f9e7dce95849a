"""The soak's application: an upload that is read whole, a file sent through
wsgi.file_wrapper, and everything else from the behaviours app (/list, /stream)."""

from __future__ import annotations

import os
import tempfile
from typing import Any, Callable, Iterable

from apps import behaviors

StartResponse = Callable[..., Any]

FILE_SIZE = 2 << 20
_path = os.path.join(tempfile.mkdtemp(prefix="tapster-soak-"), "file.bin")
with open(_path, "wb") as f:
    f.write(os.urandom(64 << 10) * (FILE_SIZE // (64 << 10)))


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/upload":
        stream = environ["wsgi.input"]
        size = 0
        while True:
            block = stream.read(65536)
            if not block:
                break
            size += len(block)
        body = str(size).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    if path == "/file":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](open(_path, "rb"))
    return behaviors.app(environ, start_response)

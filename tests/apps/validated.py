"""Applications wrapped in `wsgiref.validate.validator`, which checks every WSGI rule on
both sides (environ, start_response, write, wsgi.input, the app_iter and its close()).
A violation raises AssertionError inside the application, so it shows as a 500 and a
traceback in the server's log; an iterator that is never closed prints a complaint
to stderr (also in the log)."""

from __future__ import annotations

import io
from typing import Any, Callable, Iterable, Iterator
from wsgiref.validate import validator

StartResponse = Callable[..., Any]
Environ = dict[str, Any]
TEXT = ("Content-Type", "text/plain")
FILE_DATA = bytes(range(256)) * 64


def _body(environ: Environ) -> bytes:
    length = int(environ.get("CONTENT_LENGTH") or "0")
    return environ["wsgi.input"].read(length)


def inner(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/get":
        start_response("200 OK", [TEXT, ("Content-Length", "5")])
        return [b"hello"]
    if path == "/post":
        body = _body(environ)
        start_response("201 Created", [TEXT, ("Content-Length", str(len(body) + 5))])
        return [b"got: ", body]
    if path == "/lines":
        stream = environ["wsgi.input"]
        first = stream.readline()
        rest = list(stream)
        start_response("200 OK", [TEXT])
        return [b"%d|" % len(rest), first, *rest]
    if path == "/gen":

        def gen() -> Iterator[bytes]:
            for i in range(4):
                yield b"gen%d;" % i

        start_response("200 OK", [TEXT])
        return gen()
    if path == "/write":
        write = start_response("200 OK", [TEXT])
        write(b"written;")
        write(b"again;")
        return [b"returned"]
    if path == "/file":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](io.BytesIO(FILE_DATA), 4096)
    if path == "/no-content":
        start_response("204 No Content", [])
        return []
    if path == "/environ":
        keys = sorted(k for k in environ if not k.startswith("HTTP_"))
        body = "\n".join(keys).encode()
        start_response("200 OK", [TEXT, ("Content-Length", str(len(body)))])
        return [body]
    start_response("404 Not Found", [TEXT, ("Content-Length", "9")])
    return [b"not found"]


app = validator(inner)


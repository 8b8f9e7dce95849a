"""The demo application of `make serve`: a hello page, a file sent through
`wsgi.file_wrapper` (zero-copy where the platform allows), and a small echo."""

from __future__ import annotations

import html
import os
from typing import Any, Callable, Iterable

StartResponse = Callable[..., Any]

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Tapster</title></head>
<body>
<h1>Hello from Tapster</h1>
<p>Served by {software} over {protocol}.</p>
<ul>
<li><a href="/file">/file</a>: this demo's source, through <code>wsgi.file_wrapper</code></li>
<li><code>curl -d 'some text' http://{host}/echo</code>: echoes the request body</li>
</ul>
</body></html>
"""


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "/")
    if path == "/file":
        f = open(os.path.abspath(__file__), "rb")
        start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
        return environ["wsgi.file_wrapper"](f, 32768)
    if path == "/echo":
        body = environ["wsgi.input"].read()
        start_response(
            "200 OK",
            [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(body)))],
        )
        return [body]
    if path != "/":
        body = b"Not Found\n"
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    page = PAGE.format(
        software=html.escape(str(environ.get("SERVER_SOFTWARE"))),
        protocol=html.escape(environ["SERVER_PROTOCOL"]),
        host=html.escape(environ.get("HTTP_HOST", "127.0.0.1:8080")),
    ).encode()
    start_response(
        "200 OK",
        [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(page)))],
    )
    return [page]

"""A small real Flask application served by Tapster in tests/test_wsgi.py."""

from __future__ import annotations

import hashlib
from typing import Iterator

from flask import Flask, Response, abort, jsonify, request, stream_with_context

app = Flask(__name__)


@app.get("/json")
def json_route() -> Response:
    return jsonify(
        hello=request.args.get("name", "world"),
        method=request.method,
        remote_port=request.environ["REMOTE_PORT"],
    )


@app.post("/form")
def form() -> Response:
    return jsonify(form=request.form.to_dict(), content_type=request.content_type)


@app.post("/upload")
def upload() -> Response:
    f = request.files["file"]
    data = f.read()
    return jsonify(
        filename=f.filename,
        mimetype=f.mimetype,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        note=request.form.get("note"),
    )


@app.get("/stream")
def stream() -> Response:
    def lines() -> Iterator[str]:
        # request is only usable here thanks to stream_with_context.
        for i in range(int(request.args.get("n", "3"))):
            yield f"line {i} {request.args.get('tag', '')}\n"

    return Response(stream_with_context(lines()), mimetype="text/plain")


@app.get("/abort")
def aborted() -> Response:
    abort(500)

"""Flask's send_file served by Tapster (tests/test_file_wrapper.py). The data file is
``$FW_DATA/small.bin``; ``/stats`` returns this process's sendfile counters."""

from __future__ import annotations

import os

from flask import Flask, Response, jsonify, send_file

from tapster import _tapster

app = Flask(__name__)
DATA = os.environ.get("FW_DATA", "")


@app.get("/file")
def file_route() -> Response:
    return send_file(os.path.join(DATA, "small.bin"), mimetype="application/octet-stream")


@app.get("/stats")
def stats() -> Response:
    return jsonify(dict(_tapster.stats()))

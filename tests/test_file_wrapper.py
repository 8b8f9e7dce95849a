"""``wsgi.file_wrapper`` end to end, over real sockets.

The contract is Waitress's docs/filewrapper.rst (shared/spec) and
shared/reference/waitress-behaviour.md §3.5; README's "Differences from Waitress" wins
where they disagree (HEAD never carries a body; chunked responses keep the connection).
Tapster also sends regular files with ``sendfile(2)``: ``tapster._tapster.stats()``,
returned by the app's ``/stats`` route from inside the server process, proves which
responses took that path.

The application is tests/apps/file_wrapper_app.py (Flask: apps/flask_files.py, Django:
apps/django_files.py); the data files are written by the ``data`` fixture into a
temporary directory (``FW_DATA``) and removed afterwards.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import re
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from typing import Iterator

import pytest
import requests

from support import ERROR_PAGE_CLOSES, OVER_TLS, ZERO_COPY, RawConn, ServerProcess, exchange
from wsgi_helpers import ERROR_BODY, assert_error_page, count_lines, logged_exception, request

MiB = 1 << 20
XOR = bytes(b ^ 0x5A for b in range(256))  # what apps.file_wrapper_app's Transform does
SMALL = random.Random(1).randbytes(100_000)  # not a multiple of any buffer size
_BASE = random.Random(2).randbytes(MiB)
BIG = b"".join(i.to_bytes(8, "big") + _BASE[8:] for i in range(32))  # 32 MiB
SPARSE_SIZE = 4608 * MiB  # 4.5 GiB
SPARSE_MARKS = {
    4 * 1024 * MiB - 5: b"<across-4GiB>",  # straddles offset 2**32
    SPARSE_SIZE - MiB: b"<last-MiB-start>",
    SPARSE_SIZE - MiB + 777_777: b"<middle>",
    SPARSE_SIZE - 16: b"<end-marker-16>\n",
}


@dataclass
class Data:
    dir: str

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)


@pytest.fixture(scope="module")
def data() -> Iterator[Data]:
    d = tempfile.mkdtemp(prefix="tapster-fw-")
    try:
        for name, content in (("small.bin", SMALL), ("big.bin", BIG), ("empty.bin", b"")):
            with open(os.path.join(d, name), "wb") as f:
                f.write(content)
        with open(os.path.join(d, "small.bin.gz"), "wb") as f:
            f.write(gzip.compress(SMALL))
        sparse = os.path.join(d, "sparse.bin")
        with open(sparse, "wb") as f:
            os.truncate(f.fileno(), SPARSE_SIZE)
            for offset, mark in SPARSE_MARKS.items():
                f.seek(offset)
                f.write(mark)
        yield Data(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _start(data: Data, *args: str, app: str = "apps.file_wrapper_app:app") -> ServerProcess:
    return ServerProcess(app, *args, env={"FW_DATA": data.dir})


@pytest.fixture(scope="module")
def server(data: Data) -> Iterator[ServerProcess]:
    """Shared by the tests that do not look at the sendfile counters."""
    srv = _start(data)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def zc_server(data: Data) -> Iterator[ServerProcess]:
    """Only ever sees complete, well-behaved responses, so its sendfile counters move
    exactly by what each test does."""
    srv = _start(data)
    yield srv
    srv.stop()


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


def get_json(srv: ServerProcess, target: str) -> dict:
    with srv.connect() as conn:
        conn.send(request(target))
        resp = conn.read_response()
        assert resp.status == 200, (resp.status, resp.body)
        return json.loads(resp.body)


def stats(srv: ServerProcess) -> tuple[int, int]:
    s = get_json(srv, "/stats")
    return s["sendfile_responses"], s["sendfile_bytes"]


def via_sendfile(responses: int, nbytes: int, client: str = "raw") -> tuple[int, int]:
    """The change in the sendfile counters for `responses` file responses of `nbytes`
    in all: none under TLS or HTTP/2, where files are read, not sent with sendfile(2).
    `client="requests"`: it speaks HTTP/1.1 even when the suite runs over HTTP/2."""
    zero_copy = not OVER_TLS if client == "requests" else ZERO_COPY
    return (responses, nbytes) if zero_copy else (0, 0)


def sendfile_delta(srv: ServerProcess, before: tuple[int, int], expected: tuple[int, int]) -> tuple[int, int]:
    """The counters' change since `before`, polled for a moment until it equals
    `expected` (the byte counter is bumped right after each sendfile() returns, which
    can be a hair after the client has the bytes). No change expected: it is read
    again after that moment, so a late count is not missed."""
    if expected == (0, 0):
        # The counters only grow: once moved, they cannot come back to no change.
        time.sleep(0.3)
        now = stats(srv)
        return (now[0] - before[0], now[1] - before[1])
    deadline = time.monotonic() + 2.0
    while True:
        now = stats(srv)
        delta = (now[0] - before[0], now[1] - before[1])
        if delta == expected or time.monotonic() > deadline:
            return delta
        time.sleep(0.05)


def record(srv: ServerProcess, tag: str) -> dict:
    return get_json(srv, f"/record?tag={tag}")


def assert_closed_once(srv: ServerProcess, tag: str) -> None:
    """The file-like object's close() was called, exactly once (polled: for sendfile
    it runs after the last byte is out, a little after the client has it)."""
    srv.wait_for_log(rf"EVENT closed {re.escape(tag)}$")
    with srv.connect() as conn:  # a barrier: a second close would be logged by now
        conn.send(request(f"/mark/{tag}"))
        assert conn.read_response().status == 200
    srv.wait_for_log(rf"EVENT mark {re.escape(tag)}$")
    time.sleep(0.1)
    assert count_lines(srv, rf"EVENT closed {re.escape(tag)}$") == 1
    assert record(srv, tag)["closes"] == 1


def small_range(srv: ServerProcess, tag: str) -> float:
    """A quick request on a new connection; returns how long it took."""
    t0 = time.monotonic()
    with srv.connect() as conn:
        conn.send(request(f"/serve/{tag}?kind=bytesio&name=small.bin&range=0-9&tag={tag}"))
        resp = conn.read_response()
    assert resp.status == 206 and resp.body == SMALL[:10]
    return time.monotonic() - t0


def assert_still_serving(srv: ServerProcess) -> None:
    small_range(srv, "alive")


def open_stream(srv: ServerProcess, raw: bytes, rcvbuf: int | None = None) -> tuple[RawConn, int, dict[str, str]]:
    """Sends `raw` and reads only the response head (for large bodies, read with
    `read_body`, which does not copy quadratically)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(srv.address)
    conn = RawConn(srv.wrap(sock))
    conn.send(raw)
    head = conn._read_until(b"\r\n\r\n").decode("latin-1").split("\r\n")
    status = int(head[0].split(" ")[1])
    headers = {}
    for line in head[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return conn, status, headers


def read_body(conn: RawConn, limit: int | None = None, timeout: float = 10.0) -> tuple[bytes, bool]:
    """Reads up to `limit` bytes (or everything); returns (data, eof seen)."""
    out = bytearray(conn.buf)
    conn.buf = b""
    conn.sock.settimeout(timeout)
    chunk = bytearray(1 << 20)
    while limit is None or len(out) < limit:
        want = len(chunk) if limit is None else min(len(chunk), limit - len(out))
        try:
            n = conn.sock.recv_into(chunk, want)
        except ConnectionResetError:
            n = 0
        if n == 0:
            return bytes(out), True
        out += chunk[:n]
    return bytes(out), False


def serve_target(tag: str, kind: str, name: str = "small.bin", **params: object) -> str:
    query = "&".join([f"kind={kind}", f"name={name}", f"tag={tag}"] + [f"{k}={v}" for k, v in params.items()])
    return f"/serve/{tag}?{query}"


SEEKABLE = ["open", "bytesio", "counting"]  # sendfile / built-in read path / custom class


# ---------------------------------------------------------------------------------------
# 1. The constructor
# ---------------------------------------------------------------------------------------


def test_constructor_is_positional_only(server: ServerProcess) -> None:
    result = get_json(server, "/signature")
    assert result == {
        "callable": True,
        "positional_one": "ok",
        "positional_two": "ok",
        "keyword_block_size": "TypeError",
        "keyword_filelike": "TypeError",
    }


@pytest.mark.parametrize("block", [None, 4096])
def test_unseekable_file_is_iterated_in_block_size_reads(server: ServerProcess, block: int | None) -> None:
    tag = f"pipe-block-{block}"
    params = {} if block is None else {"block": block}
    with server.connect() as conn:
        conn.send(request(serve_target(tag, "pipe", **params)))
        resp = conn.read_response()
        assert resp.status == 200
        assert resp.chunked and resp.header("Content-Length") is None
        assert resp.body == SMALL
        size = block or 32768
        assert all(0 < len(c) <= size for c in resp.chunks)
        # HTTP/1.1 chunked responses keep the connection (README).
        conn.send(request("/stats"))
        assert conn.read_response().status == 200
    reads = record(server, tag)["reads"]
    assert reads == [size] * (-(-len(SMALL) // size) + 1), reads  # every block, then EOF
    assert_closed_once(server, tag)


@pytest.mark.http1_only("HTTP/1.0 framing")
def test_unseekable_file_on_http10_is_close_delimited(server: ServerProcess) -> None:
    tag = "pipe-http10"
    with server.connect() as conn:
        conn.send(request(serve_target(tag, "pipe", block=10000), version="1.0"))
        data = conn.read_all()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK\r\n")
    assert b"\r\nConnection: close" in head
    assert b"Content-Length" not in head and b"Transfer-Encoding" not in head
    assert body == SMALL
    assert record(server, tag)["reads"] == [10000] * 11
    assert_closed_once(server, tag)


def test_real_pipe_is_iterated(server: ServerProcess) -> None:
    """A FileIO on a pipe has seek() and tell() but seekable() is False."""
    tag = "ospipe"
    resp, closed = exchange(server, request(serve_target(tag, "ospipe", block=8192)))
    assert resp.status == 200 and resp.chunked
    assert resp.body == SMALL
    assert all(0 < len(c) <= 8192 for c in resp.chunks)
    assert not closed
    assert_closed_once(server, tag)


# ---------------------------------------------------------------------------------------
# 2. read() must return bytes
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["text", "strseek", "strpipe"])
def test_read_returning_str_is_a_500(server: ServerProcess, kind: str) -> None:
    tag = f"str-{kind}"
    resp, closed = exchange(server, request(serve_target(tag, kind)))
    assert_error_page(resp)
    assert closed == ERROR_PAGE_CLOSES
    assert logged_exception(server, f"/serve/{tag}").startswith("TypeError")
    assert_closed_once(server, tag)
    assert_still_serving(server)


# ---------------------------------------------------------------------------------------
# 3. Seekable files: Content-Length, offsets, ranges, HEAD
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", SEEKABLE)
def test_content_length_is_the_file_size(server: ServerProcess, kind: str) -> None:
    tag = f"cl-{kind}"
    with server.connect() as conn:
        conn.send(request(serve_target(tag, kind)))
        resp = conn.read_response()
        assert resp.status == 200
        assert resp.header("Content-Length") == str(len(SMALL))
        assert resp.header("Transfer-Encoding") is None
        assert resp.body == SMALL
        conn.send(request(serve_target(tag + "-again", kind, range="0-2")))
        assert conn.read_response().body == SMALL[:3]
    assert_closed_once(server, tag)


@pytest.mark.parametrize("kind", SEEKABLE)
@pytest.mark.parametrize("how", ["offset", "readahead"])
def test_file_is_sent_from_its_current_position(server: ServerProcess, kind: str, how: str) -> None:
    """seek(12345), or read(12345) (a buffered file has read further ahead)."""
    tag = f"pos-{how}-{kind}"
    resp, closed = exchange(server, request(serve_target(tag, kind, **{how: 12345})))
    assert resp.status == 200
    assert resp.header("Content-Length") == str(len(SMALL) - 12345)
    assert resp.body == SMALL[12345:]
    assert not closed
    assert_closed_once(server, tag)


@pytest.mark.parametrize("kind", SEEKABLE)
def test_smaller_content_length_sends_exactly_that_range(server: ServerProcess, kind: str) -> None:
    tag = f"range-{kind}"
    with server.connect() as conn:
        conn.send(request(serve_target(tag, kind, range="1000-1999")))
        resp = conn.read_response()
        assert (resp.status, resp.reason) == (206, "Partial Content")
        assert resp.header("Content-Range") == f"bytes 1000-1999/{len(SMALL)}"
        assert resp.header("Content-Length") == "1000"
        assert resp.body == SMALL[1000:2000]
        # Nothing more than the range was sent: the next response parses cleanly.
        conn.send(request(serve_target(tag + "-next", kind, range="99990-99999")))
        resp = conn.read_response()
        assert resp.status == 206 and resp.body == SMALL[99990:]
        assert not conn.is_closed(0.3)
    assert_closed_once(server, tag)
    if kind == "counting":
        # Only the range was read, never more.
        assert record(server, tag)["reads"] == [1000]


@pytest.mark.parametrize("kind", SEEKABLE)
def test_larger_content_length_is_corrected(server: ServerProcess, kind: str) -> None:
    tag = f"bigcl-{kind}"
    with server.connect() as conn:
        conn.send(request(serve_target(tag, kind, cl=len(SMALL) + 5000)))
        resp = conn.read_response()
        assert resp.status == 200
        assert resp.header("Content-Length") == str(len(SMALL))
        assert resp.body == SMALL
        conn.send(request("/stats"))
        assert conn.read_response().status == 200
    assert "too few bytes" not in server.log()
    assert_closed_once(server, tag)


@pytest.mark.parametrize("kind", SEEKABLE)
def test_head_gets_content_length_and_no_body_and_nothing_is_read(server: ServerProcess, kind: str) -> None:
    tag = f"head-{kind}"
    with server.connect() as conn:
        conn.send(request(serve_target(tag, kind), method="HEAD"))
        resp = conn.read_response(head_request=True)
        assert resp.status == 200
        assert resp.header("Content-Length") == str(len(SMALL))
        # No body followed: the next response on the connection starts right away.
        conn.send(request(serve_target(tag + "-next", "bytesio", range="0-4")))
        nxt = conn.read_response()
        assert nxt.status == 206 and nxt.body == SMALL[:5]
    assert_closed_once(server, tag)
    if kind == "counting":
        assert record(server, tag)["reads"] == []


@pytest.mark.parametrize("kind", SEEKABLE)
def test_empty_file(server: ServerProcess, kind: str) -> None:
    tag = f"empty-{kind}"
    with server.connect() as conn:
        conn.send(request(serve_target(tag, kind, name="empty.bin")))
        resp = conn.read_response()
        assert resp.status == 200
        assert resp.header("Content-Length") == "0"
        assert resp.body == b""
        assert not conn.is_closed(0.3)
    assert_closed_once(server, tag)


@pytest.mark.http1_only("HTTP/1.0")
@pytest.mark.parametrize("kind", ["open", "bytesio"])
def test_seekable_file_on_http10(server: ServerProcess, kind: str) -> None:
    tag = f"http10-{kind}"
    resp, closed = exchange(server, request(serve_target(tag, kind), version="1.0"))
    assert resp.version == "HTTP/1.0" and resp.status == 200
    assert resp.header("Content-Length") == str(len(SMALL))
    assert resp.header("Connection") == "close"
    assert resp.body == SMALL
    assert closed
    ka = [("Connection", "keep-alive")]
    resp, closed = exchange(server, request(serve_target(tag + "-ka", kind), version="1.0", headers=ka))
    assert resp.header("Connection") == "Keep-Alive"
    assert resp.header("Content-Length") == str(len(SMALL))
    assert resp.body == SMALL
    assert not closed
    assert_closed_once(server, tag)
    assert_closed_once(server, tag + "-ka")


@pytest.mark.parametrize("kind", ["open", "bytesio", "pipe"])
def test_not_modified_sends_no_body_and_closes_the_file(server: ServerProcess, kind: str) -> None:
    tag = f"304-{kind}"
    with server.connect() as conn:
        conn.send(request(serve_target(tag, kind, status="304%20Not%20Modified")))
        resp = conn.read_response()
        assert resp.status == 304
        assert resp.header("Content-Length") is None
        assert resp.header("Transfer-Encoding") is None
        # No body followed: the next response parses cleanly (README: 304 keeps alive).
        conn.send(request(serve_target(tag + "-next", "bytesio", range="0-4")))
        nxt = conn.read_response()
        assert nxt.status == 206 and nxt.body == SMALL[:5]
    assert_closed_once(server, tag)


@pytest.mark.parametrize("kind", ["writeonly", "writeonly-buffered"])
def test_unreadable_file_is_an_application_error(server: ServerProcess, kind: str) -> None:
    """A file opened for appending (seekable, read() raises UnsupportedOperation): the
    zero-copy path must not send what read() would refuse; the error is the
    application's, reported before the head like any read() failure."""
    tag = f"unreadable-{kind}"
    with server.connect() as conn:
        conn.send(request(serve_target(tag, kind, offset=0)))
        resp = conn.read_response()
        assert conn.is_closed() == ERROR_PAGE_CLOSES
    assert (resp.version, resp.status, resp.reason) == ("HTTP/1.1", 500, "Internal Server Error"), resp
    assert resp.body == ERROR_BODY
    assert "UnsupportedOperation" in logged_exception(server, f"/serve/{tag}")
    assert f"Client disconnected while serving /serve/{tag}" not in server.log()
    assert_closed_once(server, tag)


# ---------------------------------------------------------------------------------------
# 4. seek/tell/seekable on the wrapper
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["open", "bytesio", "counting", "tempfile"])
def test_wrapper_exposes_seek_tell_for_seekable_files(server: ServerProcess, kind: str) -> None:
    result = get_json(server, f"/attrs?kind={kind}&tag=attrs-{kind}")
    assert result["seek"] and result["tell"] and result["seekable"]
    assert result["tell_value"] == 0


@pytest.mark.parametrize("kind", ["pipe", "ospipe"])
def test_wrapper_hides_seek_tell_for_unseekable_files(server: ServerProcess, kind: str) -> None:
    result = get_json(server, f"/attrs?kind={kind}&tag=attrs-{kind}")
    assert result["seek"] is False
    assert result["tell"] is False


@pytest.mark.parametrize("kind", ["open", "bytesio"])
def test_range_middleware_uses_the_wrappers_seek_and_tell(server: ServerProcess, kind: str) -> None:
    tag = f"mw-{kind}"
    with server.connect() as conn:
        conn.send(request(f"/range-mw?kind={kind}&name=small.bin&range=5000-5999&tag={tag}"))
        resp = conn.read_response()
        assert resp.status == 206
        assert resp.header("Content-Range") == f"bytes 5000-5999/{len(SMALL)}"
        assert resp.header("Content-Length") == "1000"
        assert resp.header("X-Seekable") == "True"
        assert resp.body == SMALL[5000:6000]
        assert not conn.is_closed(0.3)
    assert_closed_once(server, tag)


# ---------------------------------------------------------------------------------------
# 5. close() exactly once: after the last byte, on disconnect, on error
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["open", "transform"])
def test_close_waits_for_the_last_byte(server: ServerProcess, kind: str) -> None:
    tag = f"lastbyte-{kind}"
    conn, status, headers = open_stream(server, request(serve_target(tag, kind, name="big.bin")), rcvbuf=65536)
    with conn:
        assert status == 200 and headers["content-length"] == str(len(BIG))
        first, _ = read_body(conn, MiB)
        time.sleep(0.3)
        assert count_lines(server, rf"EVENT closed {tag}$") == 0, "closed before the body was sent"
        rest, _ = read_body(conn, len(BIG) - len(first))
    body = first + rest
    expected = BIG if kind == "open" else BIG.translate(XOR)
    assert len(body) == len(BIG) and hashlib.sha256(body).digest() == hashlib.sha256(expected).digest()
    assert_closed_once(server, tag)


@pytest.mark.parametrize("kind", ["open", "transform"])
def test_client_disconnect_midway_closes_the_file_once(server: ServerProcess, kind: str) -> None:
    tag = f"disc-{kind}"
    conn, status, headers = open_stream(server, request(serve_target(tag, kind, name="big.bin")), rcvbuf=65536)
    with conn:
        assert status == 200 and headers["content-length"] == str(len(BIG))
        part, eof = read_body(conn, 256 * 1024)
        assert not eof and len(part) == 256 * 1024
    server.wait_for_log(rf"Client disconnected while serving /serve/{tag}$", timeout=10)
    assert_closed_once(server, tag)
    assert_still_serving(server)


@pytest.mark.parametrize("kind", ["open", "transform"])
def test_pipelined_requests_after_a_large_file(server: ServerProcess, kind: str) -> None:
    """The worker lets go of a sendfile (or parked) response at once; the responses to
    requests pipelined behind it must still come after its last byte, in order."""
    tag = f"pipelined-{kind}"
    expected = BIG if kind == "open" else BIG.translate(XOR)
    raw = (
        request(serve_target(tag, kind, name="big.bin"))
        + request(serve_target(tag + "-2", "bytesio", range="0-9"))
        + request(serve_target(tag + "-3", kind))
    )
    conn, status, headers = open_stream(server, raw)
    with conn:
        assert status == 200 and headers["content-length"] == str(len(BIG))
        body, _ = read_body(conn, len(BIG))
        assert hashlib.sha256(body).digest() == hashlib.sha256(expected).digest()
        second = conn.read_response()
        assert second.status == 206 and second.body == SMALL[:10]
        third = conn.read_response()
        assert third.status == 200
        assert third.body == (SMALL if kind == "open" else SMALL.translate(XOR))
    assert_closed_once(server, tag)
    assert_closed_once(server, tag + "-3")


@pytest.mark.parametrize("kind", ["counting", "pipe"])
def test_read_error_before_any_byte_is_a_500_and_closes_once(server: ServerProcess, kind: str) -> None:
    tag = f"err0-{kind}"
    resp, closed = exchange(server, request(serve_target(tag, kind, fail_at=0)))
    assert_error_page(resp)
    assert closed == ERROR_PAGE_CLOSES
    assert logged_exception(server, f"/serve/{tag}") == "OSError: read 0 failed"
    assert_closed_once(server, tag)
    assert_still_serving(server)


@pytest.mark.parametrize("kind", ["counting", "pipe"])
def test_read_error_midway_cuts_the_connection_and_closes_once(server: ServerProcess, kind: str) -> None:
    tag = f"err1-{kind}"
    conn, status, headers = open_stream(server, request(serve_target(tag, kind, name="big.bin", fail_at=1)))
    with conn:
        assert status == 200
        body, eof = read_body(conn)
    assert eof
    if kind == "counting":
        assert headers["content-length"] == str(len(BIG))
        assert 0 < len(body) < len(BIG)
        assert BIG.startswith(body)
    else:
        assert headers["transfer-encoding"] == "chunked"
        assert body.startswith(b"8000\r\n" + BIG[:32768] + b"\r\n")
        assert not body.endswith(b"0\r\n\r\n")  # no terminating chunk
    assert logged_exception(server, f"/serve/{tag}") == "OSError: read 1 failed"
    assert_closed_once(server, tag)
    assert_still_serving(server)


# ---------------------------------------------------------------------------------------
# 6. A wrapper inside middleware is an ordinary iterable
# ---------------------------------------------------------------------------------------


def test_wrapper_iterated_by_middleware(zc_server: ServerProcess) -> None:
    tag = "wrapped-open"
    before = stats(zc_server)
    resp, closed = exchange(zc_server, request(f"/wrapped?kind=open&name=small.bin&block=8192&tag={tag}"))
    assert resp.status == 200
    assert resp.chunked and resp.body == SMALL
    assert record(zc_server, tag)["chunks"] == [8192] * 12 + [len(SMALL) - 12 * 8192]
    assert not closed
    assert_closed_once(zc_server, tag)
    assert sendfile_delta(zc_server, before, (0, 0)) == (0, 0)


# ---------------------------------------------------------------------------------------
# 7. Zero-copy: which objects go out with sendfile(2)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["open", "unbuffered", "tempfile", "named"])
def test_regular_and_temporary_files_use_sendfile(zc_server: ServerProcess, kind: str) -> None:
    tag = f"zc-{kind}"
    before = stats(zc_server)
    resp, closed = exchange(zc_server, request(serve_target(tag, kind)))
    assert resp.status == 200
    assert resp.header("Content-Length") == str(len(SMALL))
    assert resp.body == SMALL
    assert not closed
    expected = via_sendfile(1, len(SMALL))
    assert sendfile_delta(zc_server, before, expected) == expected
    assert_closed_once(zc_server, tag)


@pytest.mark.parametrize("kind", ["bytesio", "gzip", "transform"])
def test_other_file_likes_are_read_through_python(zc_server: ServerProcess, kind: str) -> None:
    tag = f"nozc-{kind}"
    expected = SMALL.translate(XOR) if kind == "transform" else SMALL
    before = stats(zc_server)
    resp, closed = exchange(zc_server, request(serve_target(tag, kind)))
    assert resp.status == 200
    assert resp.header("Content-Length") == str(len(expected))
    assert resp.body == expected
    assert not closed
    assert sendfile_delta(zc_server, before, (0, 0)) == (0, 0)
    assert_closed_once(zc_server, tag)


# ---------------------------------------------------------------------------------------
# 8. Large and changing files
# ---------------------------------------------------------------------------------------


@pytest.mark.http1_only("sendfile(2) offsets past 4 GiB")
def test_sparse_file_beyond_4gib(zc_server: ServerProcess) -> None:
    head = request(serve_target("sparse-head", "open", name="sparse.bin"), method="HEAD")
    resp, _ = exchange(zc_server, head, head_request=True)
    assert resp.status == 200 and resp.header("Content-Length") == str(SPARSE_SIZE)
    before = stats(zc_server)
    ranges = [(SPARSE_SIZE - MiB, SPARSE_SIZE - 1), (4 * 1024 * MiB - MiB // 2, 4 * 1024 * MiB + MiB // 2 - 1)]
    with zc_server.connect(timeout=10) as conn:
        for start, end in ranges:
            conn.send(request(serve_target(f"sparse-{start}", "open", name="sparse.bin", range=f"{start}-{end}")))
            resp = conn.read_response()
            assert resp.status == 206
            assert resp.header("Content-Range") == f"bytes {start}-{end}/{SPARSE_SIZE}"
            assert resp.header("Content-Length") == str(MiB)
            expected = bytearray(MiB)
            for offset, mark in SPARSE_MARKS.items():
                if start <= offset < end:
                    expected[offset - start : offset - start + len(mark)] = mark
            assert len(resp.body) == MiB
            assert resp.body == bytes(expected)
        # Seeked near the end without a Content-Length: the remaining size is computed.
        conn.send(request(serve_target("sparse-tail", "open", name="sparse.bin", offset=SPARSE_SIZE - 4096)))
        resp = conn.read_response()
        assert resp.header("Content-Length") == "4096"
        assert resp.body == bytes(4080) + b"<end-marker-16>\n"
    expected = via_sendfile(3, 2 * MiB + 4096)
    assert sendfile_delta(zc_server, before, expected) == expected
    for start, _ in ranges:
        assert_closed_once(zc_server, f"sparse-{start}")


@pytest.mark.parametrize("kind", ["open", "transform"])
def test_file_shrinking_during_the_download_ends_the_connection(server: ServerProcess, data: Data, kind: str) -> None:
    name = f"shrink-{kind}.bin"
    path = data.path(name)
    with open(path, "wb") as f:
        f.write(BIG)
    tag = f"shrink-{kind}"
    try:
        conn, status, headers = open_stream(server, request(serve_target(tag, kind, name=name)), rcvbuf=65536)
        with conn:
            assert status == 200 and headers["content-length"] == str(len(BIG))
            first, _ = read_body(conn, MiB)
            os.truncate(path, 2 * MiB)
            started = time.monotonic()
            rest, eof = read_body(conn, timeout=10)
            assert eof, "the server neither finished nor closed"
            assert time.monotonic() - started < 10
        body = first + rest
        assert MiB <= len(body) < len(BIG)
        expected = BIG if kind == "open" else BIG.translate(XOR)
        assert body == expected[: len(body)]
        assert_closed_once(server, tag)
        assert_still_serving(server)
    finally:
        os.unlink(path)


# ---------------------------------------------------------------------------------------
# 9. Frameworks: Flask's send_file, Django's FileResponse
# ---------------------------------------------------------------------------------------


def test_flask_send_file(data: Data) -> None:
    srv = _start(data, app="apps.flask_files:app")
    try:
        with requests.Session() as s:
            before = stats(srv)
            resp = s.get(srv.url("/file"), timeout=5)
            assert resp.status_code == 200
            assert resp.headers["Content-Length"] == str(len(SMALL))
            assert resp.content == SMALL
            full = sendfile_delta(srv, before, via_sendfile(1, len(SMALL), client="requests"))
            before = stats(srv)
            resp = s.get(srv.url("/file"), headers={"Range": "bytes=1000-1999"}, timeout=5)
            assert resp.status_code == 206
            assert resp.headers["Content-Range"] == f"bytes 1000-1999/{len(SMALL)}"
            assert resp.headers["Content-Length"] == "1000"
            assert resp.content == SMALL[1000:2000]
            ranged = sendfile_delta(srv, before, (0, 0))
            resp = s.get(srv.url("/file"), headers={"Range": "bytes=-500"}, timeout=5)
            assert resp.status_code == 206 and resp.content == SMALL[-500:]
        print(f"flask send_file sendfile delta: full={full} range={ranged}")
        # Werkzeug returns the wrapper itself for a full response: zero-copy.
        assert full == via_sendfile(1, len(SMALL), client="requests")
        # For a range Werkzeug iterates the wrapper in its own _RangeWrapper (observed:
        # through Python); zero-copy of just the range would be fine too, nothing else.
        assert ranged in ((0, 0), (1, 1000))
        assert "Exception" not in srv.log()
    finally:
        srv.stop()


def test_django_file_response(data: Data) -> None:
    srv = _start(data, app="apps.django_files:application")
    try:
        before = stats(srv)
        resp = requests.get(srv.url("/file"), timeout=5)
        assert resp.status_code == 200
        assert resp.headers["Content-Length"] == str(len(SMALL))
        assert resp.content == SMALL
        delta = sendfile_delta(srv, before, via_sendfile(1, len(SMALL), client="requests"))
        print(f"django FileResponse sendfile delta: {delta}")
        # Django hands FileResponse.file_to_stream (a BufferedReader) to wsgi.file_wrapper.
        assert delta == via_sendfile(1, len(SMALL), client="requests")
        assert "Exception" not in srv.log()
    finally:
        srv.stop()


# ---------------------------------------------------------------------------------------
# 10. A slow reader does not hold the only worker
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["open", "transform"])
def test_slow_client_does_not_block_the_single_worker(data: Data, kind: str) -> None:
    srv = _start(data, "--threads=1")
    try:
        tag = f"slow-{kind}"
        conn, status, headers = open_stream(srv, request(serve_target(tag, kind, name="big.bin")), rcvbuf=32768)
        with conn:
            assert status == 200 and headers["content-length"] == str(len(BIG))
            received = bytearray()
            latencies = []
            for i in range(8):
                part, _ = read_body(conn, 16384)
                received += part
                latencies.append(small_range(srv, f"other-{kind}-{i}"))
                time.sleep(0.05)
            assert max(latencies) < 1.0, latencies
            # ... while the big response was still in progress (its file is not closed).
            assert len(received) < len(BIG) // 2
            assert count_lines(srv, rf"EVENT closed {tag}$") == 0
            rest, _ = read_body(conn, len(BIG) - len(received))
        body = bytes(received) + rest
        expected = BIG if kind == "open" else BIG.translate(XOR)
        assert len(body) == len(BIG)
        assert hashlib.sha256(body).digest() == hashlib.sha256(expected).digest()
        assert_closed_once(srv, tag)
    finally:
        srv.stop()

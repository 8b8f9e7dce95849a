"""Response framing and connection management, checked byte by byte on raw sockets."""

from __future__ import annotations

import json
import re
import time

import pytest

from support import ServerProcess, exchange

DATE = re.compile(r"^[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT$")


def get(path: str, version: str = "1.1", extra: str = "") -> bytes:
    return f"GET {path} HTTP/{version}\r\nHost: test\r\n{extra}\r\n".encode()


def test_content_length_response_keeps_alive(server: ServerProcess) -> None:
    resp, closed = exchange(server, get("/headers?h1=X-Thing:1"))
    assert resp.status == 200
    assert resp.version == "HTTP/1.1"
    assert resp.body == b"headers"
    assert resp.header("Content-Length") == "7"
    assert resp.header("Connection") is None
    assert DATE.match(resp.header("Date") or "")
    assert resp.header("Server") == "tapster"
    assert not closed


def test_list_body_gets_computed_content_length(server: ServerProcess) -> None:
    resp, closed = exchange(server, get("/list?n=3&size=2"))
    assert resp.header("Content-Length") == "6"
    assert resp.header("Transfer-Encoding") is None
    assert resp.body == b"aabbcc"
    assert not closed


def test_generator_is_chunked_on_http11_and_stays_open(server: ServerProcess) -> None:
    resp, closed = exchange(server, get("/gen?n=3&size=4"))
    assert resp.chunked
    assert resp.chunks == [b"aaaa", b"bbbb", b"cccc"]
    assert resp.header("Content-Length") is None
    assert resp.header("Connection") is None
    assert not closed


def test_generator_on_http10_is_close_delimited(server: ServerProcess) -> None:
    with server.connect() as conn:
        conn.send(get("/gen?n=2&size=3", "1.0"))
        data = conn.read_all()
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.0 200 OK\r\n")
    assert b"Connection: close" in head
    assert b"Transfer-Encoding" not in head
    assert body == b"aaabbb"


def test_http10_keep_alive_needs_request_header_and_length(server: ServerProcess) -> None:
    resp, closed = exchange(server, get("/list", "1.0", "Connection: keep-alive\r\n"))
    assert resp.header("Connection") == "Keep-Alive"
    assert not closed
    resp, closed = exchange(server, get("/list", "1.0"))
    assert resp.header("Connection") == "close"
    assert closed


def test_http11_connection_close(server: ServerProcess) -> None:
    resp, closed = exchange(server, get("/list", "1.1", "Connection: close\r\n"))
    assert resp.header("Connection") == "close"
    assert closed


@pytest.mark.parametrize("code", [204, 304])
def test_bodyless_statuses_have_no_framing_and_keep_alive(server: ServerProcess, code: int) -> None:
    with server.connect() as conn:
        conn.send(get(f"/status/{code}?cl=4"))
        resp = conn.read_response()
        assert resp.status == code
        assert resp.header("Content-Length") is None
        assert resp.header("Transfer-Encoding") is None
        # The app's body was dropped: the next response follows immediately.
        conn.send(get("/list"))
        assert conn.read_response().body == b"aaaabbbb"


def test_head_has_headers_but_no_body(server: ServerProcess) -> None:
    with server.connect() as conn:
        conn.send(b"HEAD /list?n=2&size=3 HTTP/1.1\r\nHost: t\r\n\r\n")
        resp = conn.read_response(head_request=True)
        assert resp.header("Content-Length") == "6"
        conn.send(b"HEAD /gen HTTP/1.1\r\nHost: t\r\n\r\n")
        resp = conn.read_response(head_request=True)
        assert resp.status == 200
        conn.send(get("/list?n=1&size=1"))
        follow = conn.read_response()
        assert follow.body == b"a"
        assert not conn.is_closed(0.3)


def test_pipelined_requests_answered_in_order(server: ServerProcess) -> None:
    with server.connect() as conn:
        conn.send(b"".join(get(f"/headers?h1=X-N:{i}") for i in range(25)))
        for i in range(25):
            resp = conn.read_response()
            assert resp.header("X-N") == str(i)
        assert not conn.is_closed(0.3)


def test_pipelined_with_bodies(server: ServerProcess) -> None:
    reqs = b"".join(
        f"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {len(str(i))}\r\n\r\n{i}".encode() for i in range(10)
    )
    with server.connect() as conn:
        conn.send(reqs)
        for i in range(10):
            assert json.loads(conn.read_response().body)["body"] == str(i)


def test_chunked_request_body(server: ServerProcess) -> None:
    req = (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n"
    )
    resp, closed = exchange(server, req)
    data = json.loads(resp.body)
    assert data["body"] == "hello world"
    assert data["environ"]["CONTENT_LENGTH"] == "11"
    assert "HTTP_TRANSFER_ENCODING" not in data["environ"]
    assert not closed


def test_expect_continue_sends_100_before_body(server: ServerProcess) -> None:
    with server.connect() as conn:
        conn.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        interim = conn.read_response()
        assert interim.status == 100
        assert interim.raw_head == b"HTTP/1.1 100 Continue\r\n\r\n"
        conn.send(b"hello")
        assert json.loads(conn.read_response().body)["body"] == "hello"


def test_expect_continue_without_body_does_not_hang(server: ServerProcess) -> None:
    with server.connect() as conn:
        conn.send(b"GET /list HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n\r\n")
        resp = conn.read_response()
        assert resp.status == 200
        conn.send(get("/list?n=1&size=1"))
        assert conn.read_response().body == b"a"


def test_expect_continue_skipped_when_body_already_sent(server: ServerProcess) -> None:
    with server.connect() as conn:
        conn.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nhi")
        resp = conn.read_response()
        assert resp.status == 200
        assert json.loads(resp.body)["body"] == "hi"


@pytest.mark.parametrize(
    "request_bytes,status",
    [
        (b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
        (b"GET /\r\n\r\n", 400),
        (b"get / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nFoo : bar\r\n\r\n", 400),
        (b"GET / HTTP/1.1\nHost: t\n\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    ],
)
def test_malformed_requests_get_status_close_and_never_reach_app(
    make_server, request_bytes: bytes, status: int
) -> None:
    srv = make_server()
    with srv.connect() as conn:
        conn.send(request_bytes)
        resp = conn.read_response()
        assert resp.status == status
        assert resp.header("Connection") == "close"
        assert resp.header("Content-Type") == "text/plain; charset=utf-8"
        assert resp.body.endswith(b"(generated by tapster)")
        assert conn.is_closed()
    assert srv.calls() == 0


def test_nothing_is_read_after_an_error(make_server) -> None:
    srv = make_server()
    with srv.connect() as conn:
        conn.send(b"GET / HTTP/1.1\r\nBad Header\r\n\r\nGET /list HTTP/1.1\r\nHost: t\r\n\r\n")
        assert conn.read_response().status == 400
        assert conn.is_closed()
    assert srv.calls() == 0


def test_header_size_limit_gives_431(make_server) -> None:
    srv = make_server("--max-request-header-size=1000")
    resp, closed = exchange(srv, get("/", extra="X-Big: " + "a" * 2000 + "\r\n"))
    assert resp.status == 431
    assert closed


def test_body_size_limit_gives_413(make_server) -> None:
    srv = make_server("--max-request-body-size=1000")
    resp, closed = exchange(srv, b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n")
    assert resp.status == 413
    assert closed
    chunked = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + b"100\r\n" + b"x" * 256 + b"\r\n"
    resp, closed = exchange(srv, chunked * 1 + (b"100\r\n" + b"x" * 256 + b"\r\n") * 5)
    assert resp.status == 413
    assert closed
    assert srv.calls() == 0


def test_large_body_spills_and_arrives_intact(make_server) -> None:
    srv = make_server("--inbuf-overflow=1000")
    body = bytes(range(256)) * 200
    with srv.connect() as conn:
        conn.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        data = json.loads(conn.read_response().body)
    assert data["body"].encode("latin-1") == body


def test_idle_connection_closed_after_channel_timeout(make_server) -> None:
    srv = make_server("--channel-timeout=1")
    with srv.connect() as conn:
        conn.send(get("/list"))
        conn.read_response()
        started = time.monotonic()
        assert conn.is_closed(timeout=5)
        assert 0.5 < time.monotonic() - started < 4


def test_large_response_to_slow_reader(make_server) -> None:
    srv = make_server("--outbuf-overflow=65536")
    size = 8 * 1024 * 1024
    with srv.connect(timeout=20) as conn:
        conn.send(get(f"/big?size={size}"))
        # Not reading yet: the server must queue (and spill) what the socket won't take.
        time.sleep(0.5)
        resp = conn.read_response()
        assert len(resp.body) == size
        assert set(resp.body) == {ord("z")}

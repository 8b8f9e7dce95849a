"""The WSGI contract end to end, through real sockets: the environ, start_response and
write(), close(), Content-Length mismatches and error pages, then real clients (http.client,
requests, curl) and real frameworks (Flask, Django) and wsgiref's validator.

Waitress's behaviour (shared/reference/waitress-behaviour.md §2-3) is the baseline; the
README's "Differences from Waitress" table wins where they disagree."""

from __future__ import annotations

import hashlib
import http.client
import json
import subprocess
from typing import Any, Iterator

import pytest
import requests

from support import ERROR_PAGE_CLOSES, OVER_H2, PROTOCOL, ServerProcess, exchange
from wsgi_helpers import (
    DATE,
    assert_error_page,
    barrier,
    count_lines,
    environ_of,
    logged_exception,
    probe,
    raw_until_close,
    request,
)


@pytest.fixture(scope="module")
def probe_server() -> Iterator[ServerProcess]:
    """apps.wsgi_probe with default options (no --expose-tracebacks)."""
    srv = ServerProcess("apps.wsgi_probe:app")
    yield srv
    srv.stop()


# ---------------------------------------------------------------------------------------
# 1. The environ
# ---------------------------------------------------------------------------------------


def test_environ_base_keys(probe_server: ServerProcess) -> None:
    data = probe(probe_server, request("/some/path?a=1&b=%20"))
    env, types = data["environ"], data["types"]
    assert env["REQUEST_METHOD"] == "GET"
    assert env["SCRIPT_NAME"] == ""
    assert env["PATH_INFO"] == "/some/path"
    assert env["QUERY_STRING"] == "a=1&b=%20"
    assert env["REQUEST_URI"] == "/some/path?a=1&b=%20"
    assert env["SERVER_NAME"] == "tapster.invalid"
    assert env["SERVER_PORT"] == str(probe_server.port)
    assert env["SERVER_PROTOCOL"] == PROTOCOL
    assert env["SERVER_SOFTWARE"] == "tapster"
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["REMOTE_HOST"] == "127.0.0.1"
    assert env["REMOTE_PORT"] == str(data["client_port"])
    assert env["HTTP_HOST"] == "t"
    assert "CONTENT_LENGTH" not in env and "CONTENT_TYPE" not in env
    assert env["wsgi.version"] == [1, 0] and types["wsgi.version"] == "tuple"
    assert env["wsgi.url_scheme"] == probe_server.scheme
    assert env["wsgi.multithread"] is True
    assert env["wsgi.multiprocess"] is False
    assert env["wsgi.run_once"] is False
    assert env["wsgi.input_terminated"] is True
    assert data["errors_is_stderr"] is True
    assert data["file_wrapper_callable"] is True
    assert data["input_methods"] == ["__iter__", "read", "readline", "readlines"]
    assert data["waitress_disconnected"] is False
    assert data["tapster_disconnected"] is False
    # PEP 3333: every key without a dot is a native string.
    assert {t for k, t in types.items() if "." not in k} == {"str"}


def test_environ_reflects_server_options(make_server) -> None:
    srv = make_server("--server-name=example.org", "--ident=myserver", "--url-scheme=https", app="apps.wsgi_probe:app")
    env = environ_of(srv, "/")
    assert env["SERVER_NAME"] == "example.org"
    assert env["SERVER_SOFTWARE"] == "myserver"
    assert env["wsgi.url_scheme"] == "https"
    assert env["SERVER_PORT"] == str(srv.port)
    resp, _ = exchange(srv, request("/"))
    assert resp.header("Server") == "myserver"


@pytest.mark.http1_only("the request line's version")
@pytest.mark.parametrize("version,protocol", [("1.0", "HTTP/1.0"), ("1.1", "HTTP/1.1"), ("1.2", "HTTP/1.1")])
def test_server_protocol(probe_server: ServerProcess, version: str, protocol: str) -> None:
    assert environ_of(probe_server, "/", version=version)["SERVER_PROTOCOL"] == protocol


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PROPFIND"])
def test_request_method(probe_server: ServerProcess, method: str) -> None:
    assert environ_of(probe_server, "/m", method=method)["REQUEST_METHOD"] == method


@pytest.mark.parametrize(
    "target,path_info",
    [
        ("/%E9", "/\xe9"),
        ("/caf%C3%A9", "/caf\xc3\xa9"),
        ("/a%2Fb", "/a/b"),
        ("/a/%2e%2e/b", "/a/../b"),
        ("/a+b", "/a+b"),
        ("/%zz", "/%zz"),
        ("///abc", "/abc"),
        ("//x//y", "/x//y"),
        ("/x//y/", "/x//y/"),
    ],
)
def test_path_info_decoding(probe_server: ServerProcess, target: str, path_info: str) -> None:
    env = environ_of(probe_server, target)
    assert env["PATH_INFO"] == path_info
    assert env["REQUEST_URI"] == target
    assert env["QUERY_STRING"] == ""


@pytest.mark.parametrize(
    "target,query",
    [
        ("/p?a=%20&b=+&c", "a=%20&b=+&c"),
        ("/p?x=%E9", "x=%E9"),
        ("/p?a=1?b=2", "a=1?b=2"),
        ("/p?", ""),
        ("/p", ""),
    ],
)
def test_query_string_is_raw(probe_server: ServerProcess, target: str, query: str) -> None:
    env = environ_of(probe_server, target)
    assert env["QUERY_STRING"] == query
    assert env["PATH_INFO"] == "/p"
    assert env["REQUEST_URI"] == target


@pytest.mark.http1_only("HTTP/1.1 request-target forms; HTTP/2 has :path and :authority")
@pytest.mark.parametrize("target,host", [("http://h:99/p?q", "h:99"), ("https://h/p?q", "h")])
def test_absolute_form_target(probe_server: ServerProcess, target: str, host: str) -> None:
    env = environ_of(probe_server, target, headers=[("Host", "other")])
    assert env["PATH_INFO"] == "/p"
    assert env["QUERY_STRING"] == "q"
    assert env["REQUEST_URI"] == target
    # RFC 9112 section 3.2.2: the target's authority replaces Host (README differences);
    # the scheme, SERVER_NAME and SERVER_PORT are not taken from the target.
    assert env["HTTP_HOST"] == host
    assert env["SERVER_NAME"] == "tapster.invalid"
    assert env["SERVER_PORT"] == str(probe_server.port)
    assert env["wsgi.url_scheme"] == probe_server.scheme


def test_url_prefix(make_server) -> None:
    srv = make_server("--url-prefix=/app", app="apps.wsgi_probe:app")
    cases = {
        "/app": "",
        "/app?q=1": "",
        "/app/": "/",
        "/app/x": "/x",
        "/app/x/y": "/x/y",
        "/ap%70/x": "/x",
        "/apple": "/apple",
        "/other": "/other",
    }
    for target, path_info in cases.items():
        env = environ_of(srv, target)
        assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/app", path_info), target


def test_headers_become_environ_keys(probe_server: ServerProcess) -> None:
    raw = (
        b"POST /h HTTP/1.1\r\n"
        b"Host: t\r\n"
        b"Accept: text/html\r\n"
        b"Cookie: a=1\r\n"
        b"X-Custom-Thing: v\r\n"
        b"x-lower: low\r\n"
        b"Accept: application/json\r\n"
        b"Cookie: b=2\r\n"
        b"X-Multi: 1\r\nX-MULTI: 2\r\nx-multi: 3\r\n"
        b"Under_Score: dropped\r\n"
        b"X_Forwarded_For: 6.6.6.6\r\n"
        b"X-Obs: caf\xe9 \xff\x85\r\n"
        b"X-Pad: \t spaced out \t\r\n"
        b"X-Empty:\r\n"
        b"Content-Type: text/plain; charset=latin-1\r\n"
        b"Content-Length: 3\r\n"
        b"\r\nabc"
    )
    data = probe(probe_server, raw)
    env = data["environ"]
    assert env["HTTP_ACCEPT"] == "text/html, application/json"
    # HTTP/2 joins cookie fields with "; " (RFC 9113 section 8.2.3).
    assert env["HTTP_COOKIE"] == ("a=1; b=2" if OVER_H2 else "a=1, b=2")
    assert env["HTTP_X_MULTI"] == "1, 2, 3"
    assert env["HTTP_X_CUSTOM_THING"] == "v"
    assert env["HTTP_X_LOWER"] == "low"
    assert env["HTTP_X_OBS"] == "caf\xe9 \xff\x85"
    assert env["HTTP_X_PAD"] == "spaced out"
    assert env["HTTP_X_EMPTY"] == ""
    assert env["CONTENT_TYPE"] == "text/plain; charset=latin-1"
    assert env["CONTENT_LENGTH"] == "3"
    assert "HTTP_CONTENT_TYPE" not in env and "HTTP_CONTENT_LENGTH" not in env
    assert not [k for k in env if "UNDER" in k]
    assert "HTTP_X_FORWARDED_FOR" not in env
    assert data["body"] == "abc"


def test_proxy_headers_removed_by_default(probe_server: ServerProcess) -> None:
    env = environ_of(
        probe_server,
        "/proxied",
        headers=[
            ("Host", "real"),
            ("X-Forwarded-For", "1.2.3.4"),
            ("X-Forwarded-Host", "evil.example"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Port", "443"),
            ("X-Forwarded-By", "5.6.7.8"),
            ("Forwarded", "for=1.2.3.4;proto=https"),
            ("X-Kept", "yes"),
        ],
    )
    assert not [k for k in env if "FORWARDED" in k]
    assert env["HTTP_X_KEPT"] == "yes"
    assert env["HTTP_HOST"] == "real"
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["wsgi.url_scheme"] == probe_server.scheme
    assert env["SERVER_PORT"] == str(probe_server.port)


def input_results(server: ServerProcess, ops: str, body: bytes = b"", **kw: Any) -> list[Any]:
    kw.setdefault("method", "POST" if body else "GET")
    resp, _ = exchange(server, request(f"/input?ops={ops}", body=body, **kw))
    assert resp.status == 200, resp.body
    return json.loads(resp.body)


def test_input_read_readline_readlines_iter_seek_tell(probe_server: ServerProcess) -> None:
    body = b"line1\nline2\r\nline3"
    ops = "read:2,readline,readline:3,readline,tell,seek:0,iter,seek:6,readlines,seek:0,read:100,read,read:5,tell"
    assert input_results(probe_server, ops, body) == [
        "li",
        "ne1\n",
        "lin",
        "e2\r\n",
        13,
        "ok",
        ["line1\n", "line2\r\n", "line3"],
        "ok",
        ["line2\r\n", "line3"],
        "ok",
        "line1\nline2\r\nline3",
        "",
        "",
        18,
    ]


def test_input_seeked_past_the_end_reads_nothing(probe_server: ServerProcess, make_server) -> None:
    ops = "seek:1000,read,read:5,readline,readlines,iter,tell"
    expected = ["ok", "", "", "", [], [], 1000]
    assert input_results(probe_server, ops, b"short body") == expected
    spilled = make_server("--inbuf-overflow=1000", app="apps.wsgi_probe:app")
    big = b"x" * 5000
    assert input_results(spilled, ops.replace("1000", "9000"), big) == expected[:-1] + [9000]


def test_input_without_body_is_empty(probe_server: ServerProcess) -> None:
    assert input_results(probe_server, "read,readline,readlines,read:10,iter,tell") == ["", "", [], "", [], 0]
    zero = input_results(probe_server, "read,tell", method="POST", headers=[("Content-Length", "0")])
    assert zero == ["", 0]


def test_input_body_over_inbuf_overflow_is_complete(make_server) -> None:
    srv = make_server("--inbuf-overflow=1000", app="apps.wsgi_probe:app")
    body = b"".join(b"line %06d %s\n" % (i, bytes([65 + i % 26]) * 40) for i in range(5000))
    digest = [len(body), hashlib.sha256(body).hexdigest()]
    first = body[: body.index(b"\n") + 1].decode()
    ops = "readline,tell,seek:0,sha256,tell,seek:0,read:4"
    expected = [first, len(first), "ok", digest, len(body), "ok", "line"]
    assert input_results(srv, ops, body) == expected
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:70000], body[70000:])) + b"0\r\n\r\n"
    got = input_results(srv, "sha256", chunked, headers=[("Transfer-Encoding", "chunked")])
    assert got == [digest]
    assert environ_of(srv, "/e", method="POST", body=body)["CONTENT_LENGTH"] == str(len(body))


# ---------------------------------------------------------------------------------------
# 2. start_response and write()
# ---------------------------------------------------------------------------------------

HOP_BY_HOP = [
    "Connection",
    "Transfer-Encoding",
    "Upgrade",
    "Keep-Alive",
    "TE",
    "Trailer",
    "Proxy-Authorization",
    "Proxy-Authenticate",
    "connection",
    "transfer-encoding",
]

VIOLATIONS = [
    ("twice", "AssertionError"),
    ("status-int", "AssertionError"),
    ("status-bytes", "AssertionError"),
    ("status-crlf", "ValueError"),
    ("status-lf", "ValueError"),
    ("status-no-code", "ValueError"),
    ("status-non-latin1", "UnicodeEncodeError"),
    ("name-bytes", "AssertionError"),
    ("value-int", "AssertionError"),
    ("value-bytes", "AssertionError"),
    ("value-crlf", "ValueError"),
    ("value-lf", "ValueError"),
    ("value-nul", "ValueError"),
    ("value-non-latin1", "UnicodeEncodeError"),
    ("name-crlf", "ValueError"),
    ("name-space", "ValueError"),
    ("bad-content-length", "ValueError"),
    ("write-before-start", "RuntimeError"),
    ("no-start", "RuntimeError"),
    ("non-bytes-list", "TypeError"),
    ("non-bytes-gen", "TypeError"),
    ("write-str", "TypeError"),
    *[(f"hop-{name}", "AssertionError") for name in HOP_BY_HOP],
]


@pytest.mark.parametrize("case,exc_type", VIOLATIONS)
def test_start_response_violation_gives_500(probe_server: ServerProcess, case: str, exc_type: str) -> None:
    path = f"/sr/{case}"
    resp, closed = exchange(probe_server, request(path))
    assert_error_page(resp)
    assert closed == ERROR_PAGE_CLOSES
    assert logged_exception(probe_server, path).split(":")[0] == exc_type


@pytest.mark.http1_only("HTTP/1.0")
def test_error_page_on_http10_keeps_version_and_closes(probe_server: ServerProcess) -> None:
    resp, closed = exchange(probe_server, request("/sr/twice", version="1.0", headers=[("Connection", "keep-alive")]))
    assert_error_page(resp, version="HTTP/1.0")
    assert closed


def test_exc_info_replaces_headers_not_yet_sent(probe_server: ServerProcess) -> None:
    with probe_server.connect() as conn:
        conn.send(request("/sr-ok/exc-replace"))
        resp = conn.read_response()
        # HTTP/2 carries no reason phrase (the bridge shows the standard one).
        assert (resp.status, resp.reason) == (500, "Internal Server Error" if OVER_H2 else "Oops")
        assert resp.header("X-New") == "1"
        assert resp.header("X-Old") is None
        assert resp.header("Content-Length") == "13"
        assert resp.body == b"replaced body"
        barrier(probe_server, conn, "/mark/exc-replace", "EVENT mark exc-replace")
    assert count_lines(probe_server, "Exception while serving /sr-ok/exc-replace") == 0


@pytest.mark.parametrize("case", ["exc-after-chunk", "exc-after-write"])
def test_exc_info_after_headers_sent_reraises_and_cuts(probe_server: ServerProcess, case: str) -> None:
    with probe_server.connect() as conn:
        conn.send(request(f"/sr/{case}"))
        head, body = raw_until_close(conn)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nTransfer-Encoding: chunked" in head
    assert body == b"5\r\nfirst\r\n"  # no terminating 0-chunk: the client sees a cut
    message = "after chunk" if case == "exc-after-chunk" else "after write"
    assert logged_exception(probe_server, f"/sr/{case}") == f"ValueError: late failure {message}"


def test_write_then_iterable_are_sent_in_order_chunked(server: ServerProcess) -> None:
    with server.connect() as conn:
        conn.send(request("/write?n=2&tail=1"))
        resp = conn.read_response()
        assert resp.status == 200
        assert resp.header("Transfer-Encoding") == "chunked"
        assert resp.chunks == [b"write0;", b"write1;", b"tail"]
        assert not conn.is_closed(0.3)


def test_write_with_content_length(server: ServerProcess) -> None:
    with server.connect() as conn:
        conn.send(request("/write?n=2&cl=14"))
        resp = conn.read_response()
        assert resp.header("Content-Length") == "14"
        assert resp.header("Transfer-Encoding") is None
        assert resp.body == b"write0;write1;"
        assert not conn.is_closed(0.3)


@pytest.mark.http1_only("HTTP/1.0 framing")
def test_write_on_http10_is_close_delimited(server: ServerProcess) -> None:
    with server.connect() as conn:
        conn.send(request("/write?n=2&tail=1", version="1.0"))
        head, body = raw_until_close(conn)
    assert head.startswith(b"HTTP/1.0 200 OK\r\n")
    assert b"\r\nConnection: close" in head
    assert b"Transfer-Encoding" not in head
    assert body == b"write0;write1;tail"


def test_lazy_start_response(server: ServerProcess, probe_server: ServerProcess) -> None:
    resp, closed = exchange(server, request("/lazy"))
    assert (resp.status, resp.body) == (200, b"lazy body")
    assert not closed
    # start_response called only after an empty chunk has already been yielded.
    resp, closed = exchange(probe_server, request("/sr-ok/lazy-after-empty"))
    assert resp.status == 200
    assert resp.header("X-Lazy") == "1"
    assert resp.chunks == [b"lazy"]
    assert not closed


def test_empty_chunks_are_skipped(probe_server: ServerProcess) -> None:
    with probe_server.connect() as conn:
        conn.send(request("/sr-ok/empty-chunks"))
        resp = conn.read_response()
        assert resp.chunks == [b"a", b"b"]
        conn.send(request("/sr-ok/only-empty-chunks"))
        resp = conn.read_response()
        assert (resp.status, resp.body) == (200, b"")
        conn.send(request("/mark/after-empty"))
        assert conn.read_response().body == b"mark"


# ---------------------------------------------------------------------------------------
# 3. close()
# ---------------------------------------------------------------------------------------


def test_close_called_once_after_normal_response(probe_server: ServerProcess) -> None:
    with probe_server.connect() as conn:
        conn.send(request("/close/normal/c-normal"))
        resp = conn.read_response()
        assert resp.body == b"onetwo"
        barrier(probe_server, conn, "/mark/c-normal", "EVENT mark c-normal")
    assert count_lines(probe_server, r"EVENT closed c-normal$") == 1


def test_close_called_once_after_exception_in_iteration(probe_server: ServerProcess) -> None:
    with probe_server.connect() as conn:
        conn.send(request("/close/fail-second/c-iter"))
        head, body = raw_until_close(conn)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert body == b"3\r\none\r\n"
    assert logged_exception(probe_server, "/close/fail-second/c-iter") == "ValueError: iteration failed at chunk 1"
    probe_server.wait_for_log(r"EVENT closed c-iter$")
    with probe_server.connect() as conn:
        barrier(probe_server, conn, "/mark/c-iter", "EVENT mark c-iter")
    assert count_lines(probe_server, r"EVENT closed c-iter$") == 1


@pytest.mark.parametrize("kind", ["fail-first", "no-start"])
def test_close_called_once_when_the_response_becomes_a_500(probe_server: ServerProcess, kind: str) -> None:
    name = f"c-{kind}"
    resp, closed = exchange(probe_server, request(f"/close/{kind}/{name}"))
    assert_error_page(resp)
    assert closed == ERROR_PAGE_CLOSES
    logged_exception(probe_server, f"/close/{kind}/{name}")
    probe_server.wait_for_log(rf"EVENT closed {name}$")
    with probe_server.connect() as conn:
        barrier(probe_server, conn, f"/mark/{name}", f"EVENT mark {name}")
    assert count_lines(probe_server, rf"EVENT closed {name}$") == 1


def test_file_wrapper_file_is_closed_once(probe_server: ServerProcess) -> None:
    with probe_server.connect() as conn:
        conn.send(request("/close/file/c-file"))
        resp = conn.read_response()
        assert resp.body == b"file body"
        assert resp.header("Content-Length") == "9"
        barrier(probe_server, conn, "/mark/c-file", "EVENT mark c-file")
    assert count_lines(probe_server, r"EVENT closed c-file$") == 1


def test_close_called_when_client_disconnects_mid_stream(server: ServerProcess) -> None:
    with server.connect() as conn:
        conn.send(request("/stream?n=100000&size=65536"))
        received = conn.sock.recv(65536)
        assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    line = server.wait_for_log(r"EVENT stream closed after \d+ chunks")
    assert int(line.split()[-2]) < 100000
    server.wait_for_log(r"Client disconnected while serving /stream$")
    resp, _ = exchange(server, request("/list?n=1&size=2"))
    assert resp.body == b"aa"
    assert count_lines(server, r"EVENT stream closed") == 1


def test_close_raising_is_logged_and_server_keeps_serving(server: ServerProcess) -> None:
    resp, _ = exchange(server, request("/error/close"))
    assert (resp.status, resp.body) == (200, b"ok")
    server.wait_for_log(r"EVENT closed error-close$")
    server.wait_for_log(r"^RuntimeError: close failed$")
    resp, closed = exchange(server, request("/list?n=2&size=1"))
    assert (resp.status, resp.body) == (200, b"ab")
    assert not closed


# ---------------------------------------------------------------------------------------
# 4. Content-Length mismatches and error pages
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path,declared,sent", [
    ("/cl?declared=10&actual=4", 10, b"xxxx"),
    ("/cl?declared=11&actual=3&gen=1", 11, b"xxx"),
    ("/write?n=1&cl=20", 20, b"write0;"),
])
def test_too_few_bytes_cuts_the_body_and_closes(server: ServerProcess, path: str, declared: int, sent: bytes) -> None:
    with server.connect() as conn:
        conn.send(request(path))
        head, body = raw_until_close(conn)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert f"\r\nContent-Length: {declared}".encode() in head
    assert body == sent
    server.wait_for_log(
        rf"WARNING.*application returned too few bytes \({len(sent)}\) for specified Content-Length \({declared}\)"
    )


@pytest.mark.parametrize("path,declared,sent", [
    ("/cl?declared=4&actual=10", 4, b"xxxx"),
    ("/cl?declared=5&actual=12&gen=1", 5, b"xxxxx"),
    ("/write?n=2&cl=9", 9, b"write0;wr"),
])
def test_too_many_bytes_are_truncated_and_connection_kept(
    server: ServerProcess, path: str, declared: int, sent: bytes
) -> None:
    with server.connect() as conn:
        conn.send(request(path))
        resp = conn.read_response()
        assert resp.header("Content-Length") == str(declared)
        assert resp.body == sent
        # Nothing beyond the declared length went out: the next response is intact.
        conn.send(request("/list?n=1&size=3"))
        assert conn.read_response().body == b"aaa"
    server.wait_for_log(
        rf"WARNING.*application-written content exceeded the number of bytes specified by "
        rf"Content-Length header \({declared}\)"
    )


@pytest.mark.parametrize("path", ["/cl?declared=13&actual=0", "/cl?declared=13&actual=4&gen=1"])
def test_head_with_too_few_bytes_is_not_closed(server: ServerProcess, path: str) -> None:
    with server.connect() as conn:
        conn.send(request(path, method="HEAD"))
        resp = conn.read_response(head_request=True)
        assert resp.status == 200
        assert resp.header("Content-Length") == "13"
        assert resp.header("Connection") is None
        barrier(server, conn, "/closing?name=head-barrier", "EVENT closed head-barrier")
    assert count_lines(server, r"too few bytes \(\d+\) for specified Content-Length \(13\)") == 0


def test_error_page_with_expose_tracebacks(server: ServerProcess) -> None:
    resp, closed = exchange(server, request("/error/unicode"))
    assert (resp.status, resp.reason) == (500, "Internal Server Error")
    assert resp.body.startswith(b"Internal Server Error\r\n\r\nTraceback (most recent call last):\n")
    assert "ValueError: \u00fcnicode \u2603 error".encode() in resp.body
    assert b'in error\n    raise ValueError("\\u00fcnicode' in resp.body
    assert resp.body.endswith(b"\r\n\r\n(generated by tapster)")
    assert resp.header("Content-Type") == "text/plain; charset=utf-8"
    assert resp.header("Content-Length") == str(len(resp.body))
    if not OVER_H2:
        assert resp.header("Connection") == "close"
    assert DATE.match(resp.header("Date") or "")
    assert resp.header("Server") == "tapster"
    assert closed == ERROR_PAGE_CLOSES
    assert logged_exception(server, "/error/unicode") == "ValueError: \u00fcnicode \u2603 error"


def test_exception_after_first_chunk_cuts_connection(server: ServerProcess) -> None:
    with server.connect() as conn:
        conn.send(request("/error/in-iter"))
        head, body = raw_until_close(conn)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nTransfer-Encoding: chunked" in head
    assert body == b"B\r\nfirst chunk\r\n"
    assert logged_exception(server, "/error/in-iter") == "ValueError: boom in iteration"
    resp, closed = exchange(server, request("/gen?n=2&size=2"))
    assert resp.chunks == [b"aa", b"bb"]
    assert not closed


# ---------------------------------------------------------------------------------------
# 5. Real clients and frameworks
# ---------------------------------------------------------------------------------------


def test_http_client_keep_alive(probe_server: ServerProcess) -> None:
    conn = probe_server.http_connection(timeout=5)
    try:
        conn.request("GET", "/hc?x=1", headers={"X-Test": "yes"})
        resp = conn.getresponse()
        first = json.loads(resp.read())
        assert resp.status == 200
        assert resp.getheader("Content-Type") == "application/json"
        assert first["environ"]["HTTP_X_TEST"] == "yes"
        assert first["environ"]["QUERY_STRING"] == "x=1"
        conn.request("POST", "/hc", body=b"payload", headers={"Content-Type": "application/octet-stream"})
        resp = conn.getresponse()
        second = json.loads(resp.read())
        assert second["body"] == "payload"
        assert second["environ"]["CONTENT_LENGTH"] == "7"
        assert second["environ"]["REMOTE_PORT"] == first["environ"]["REMOTE_PORT"]
    finally:
        conn.close()


def test_requests_session_100_requests_on_one_connection(probe_server: ServerProcess) -> None:
    ports = set()
    with requests.Session() as session:
        for i in range(100):
            resp = session.get(probe_server.url(f"/seq/{i}"), params={"i": str(i)}, timeout=5)
            assert resp.status_code == 200
            env = resp.json()["environ"]
            assert (env["PATH_INFO"], env["QUERY_STRING"]) == (f"/seq/{i}", f"i={i}")
            ports.add(env["REMOTE_PORT"])
    assert len(ports) == 1


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sv", "--max-time", "10", *args], capture_output=True, timeout=20, check=True)


def test_curl(probe_server: ServerProcess, server: ServerProcess) -> None:
    out = curl(probe_server.url("/curl?x=1"), "-H", "X-From: curl")
    err = out.stderr.decode()
    assert "< HTTP/1.1 200 OK" in err
    assert "< Content-Type: application/json" in err
    assert "< Server: tapster" in err
    env = json.loads(out.stdout)["environ"]
    assert (env["PATH_INFO"], env["QUERY_STRING"], env["HTTP_X_FROM"]) == ("/curl", "x=1", "curl")
    posted = json.loads(curl("--data-binary", "hello curl", probe_server.url("/curl-post")).stdout)
    assert posted["body"] == "hello curl"
    assert posted["environ"]["CONTENT_TYPE"] == "application/x-www-form-urlencoded"
    chunked = curl(server.url("/gen?n=3&size=4"))
    assert chunked.stdout == b"aaaabbbbcccc"
    assert "< Transfer-Encoding: chunked" in chunked.stderr.decode()
    two = curl(server.url("/list?n=1&size=2"), server.url("/gen?n=1&size=3"))
    assert two.stdout == b"aaaaa"
    assert "Re-using existing connection" in two.stderr.decode()
    old = curl("--http1.0", server.url("/gen?n=2&size=1"))
    assert old.stdout == b"ab"
    assert "< HTTP/1.0 200 OK" in old.stderr.decode()


@pytest.fixture(scope="module")
def flask_server() -> Iterator[ServerProcess]:
    srv = ServerProcess("apps.flask_app:app")
    yield srv
    srv.stop()


def test_flask_app(flask_server: ServerProcess) -> None:
    upload = bytes(range(256)) * 1000
    with requests.Session() as s:
        resp = s.get(flask_server.url("/json"), params={"name": "tapster"}, timeout=5)
        assert resp.status_code == 200
        assert resp.headers["Content-Type"] == "application/json"
        data = resp.json()
        assert (data["hello"], data["method"]) == ("tapster", "GET")
        port = data["remote_port"]

        resp = s.post(flask_server.url("/form"), data={"a": "1", "b": "\u00fc b&c"}, timeout=5)
        assert resp.json() == {"form": {"a": "1", "b": "\u00fc b&c"}, "content_type": "application/x-www-form-urlencoded"}

        resp = s.post(
            flask_server.url("/upload"),
            files={"file": ("data.bin", upload, "application/octet-stream")},
            data={"note": "n1"},
            timeout=5,
        )
        assert resp.json() == {
            "filename": "data.bin",
            "mimetype": "application/octet-stream",
            "size": len(upload),
            "sha256": hashlib.sha256(upload).hexdigest(),
            "note": "n1",
        }

        resp = s.get(flask_server.url("/stream"), params={"n": "4", "tag": "t"}, stream=True, timeout=5)
        assert resp.headers["Transfer-Encoding"] == "chunked"
        assert resp.content == b"line 0 t\nline 1 t\nline 2 t\nline 3 t\n"

        resp = s.get(flask_server.url("/missing"), timeout=5)
        assert resp.status_code == 404
        assert b"Not Found" in resp.content

        resp = s.get(flask_server.url("/abort"), timeout=5)
        assert resp.status_code == 500
        assert b"Internal Server Error" in resp.content
        assert b"generated by tapster" not in resp.content  # Flask's own page

        assert s.get(flask_server.url("/json"), timeout=5).json()["remote_port"] == port
    assert "Traceback" not in flask_server.log()
    assert "Exception while serving" not in flask_server.log()


@pytest.fixture(scope="module")
def django_server() -> Iterator[ServerProcess]:
    srv = ServerProcess("apps.django_app:application")
    yield srv
    srv.stop()


def test_django_app(django_server: ServerProcess) -> None:
    with requests.Session() as s:
        resp = s.get(django_server.url("/hello"), timeout=5)
        assert resp.status_code == 200
        assert resp.content == b"Hello from Django"
        assert resp.headers["Content-Type"] == "text/plain"
        # An HttpResponse is an iterable of unknown length (no CommonMiddleware): chunked.
        assert resp.headers["Transfer-Encoding"] == "chunked"

        resp = s.get(django_server.url("/info"), params={"q": "\u00e9t\u00e9"}, timeout=5)
        assert resp.json() == {
            "path": "/info",
            "path_info": "/info",
            "method": "GET",
            "q": "\u00e9t\u00e9",
            "host": f"127.0.0.1:{django_server.port}",
            "secure": django_server.tls,
        }

        resp = s.get(django_server.url("/stream"), params={"n": "3"}, timeout=5)
        assert resp.headers["Transfer-Encoding"] == "chunked"
        assert resp.content == b"part 0;part 1;part 2;"

        resp = s.post(django_server.url("/post"), json={"k": [1, 2]}, timeout=5)
        assert resp.json() == {"json": {"k": [1, 2]}}
        resp = s.post(django_server.url("/post"), data={"a": "b"}, timeout=5)
        assert resp.json() == {"length": 3, "form": {"a": "b"}}

        resp = s.get(django_server.url("/nope"), timeout=5)
        assert resp.status_code == 404
    assert "Traceback" not in django_server.log()
    assert "Exception while serving" not in django_server.log()


def test_validator_wrapped_app_sees_no_violation(make_server) -> None:
    srv = make_server(app="apps.validated:app")
    file_data = bytes(range(256)) * 64
    with srv.connect() as conn:
        conn.send(request("/get"))
        resp = conn.read_response()
        assert (resp.status, resp.body, resp.header("Content-Length")) == (200, b"hello", "5")

        conn.send(request("/get", method="HEAD"))
        resp = conn.read_response(head_request=True)
        assert (resp.status, resp.header("Content-Length")) == (200, "5")

        conn.send(request("/post", method="POST", body=b"some body"))
        resp = conn.read_response()
        assert (resp.status, resp.body) == (201, b"got: some body")

        conn.send(request("/lines", method="POST", body=b"one\ntwo\nthree"))
        assert conn.read_response().body == b"2|one\ntwo\nthree"

        conn.send(request("/gen"))
        assert conn.read_response().chunks == [b"gen0;", b"gen1;", b"gen2;", b"gen3;"]

        conn.send(request("/gen", method="HEAD"))
        assert conn.read_response(head_request=True).status == 200

        conn.send(request("/write"))
        assert conn.read_response().body == b"written;again;returned"

        conn.send(request("/file"))
        assert conn.read_response().body == file_data

        conn.send(request("/no-content"))
        resp = conn.read_response()
        assert (resp.status, resp.body) == (204, b"")

        conn.send(request("/environ?x=1", headers=[("Content-Type", "text/plain")]))
        keys = conn.read_response().body.decode().split("\n")
        assert {"CONTENT_TYPE", "QUERY_STRING", "wsgi.input", "wsgi.file_wrapper"} <= set(keys)
    resp, _ = exchange(srv, request("/get", version="1.0"))
    assert resp.body == b"hello"
    assert srv.stop() == 0
    log = srv.log()
    assert "Traceback" not in log
    assert "Exception" not in log
    assert "Warning" not in log
    assert "garbage collected" not in log

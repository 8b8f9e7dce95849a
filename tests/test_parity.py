"""Side-by-side parity: real Waitress 3.0.2 and Tapster, each started as a subprocess
with the same app (apps/parity_app.py) and the same options, get the same raw bytes;
the responses (status line, header names case-insensitively and values except Date,
body bytes, whether the connection closed, anything sent after) and the environ the
app saw are compared.

The only differences allowed are the rows of README.md's "Differences from Waitress"
table, each encoded as a named `Normalisation` in parity/normalisations.py (tests below
check that each cites a real row, and that every row is encoded or listed as not
compared here). A scenario declares the rows that concern it; each declared one must
find what the row's Waitress column describes, or the scenario fails. Trusted-proxy scenarios follow Waitress exactly
(reference §4.8 and what real Waitress does); they fail until Tapster implements it.

Run: `cd /work/main && .venv/bin/python -m pytest -q tests/test_parity.py`.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator
from urllib.parse import quote

import pytest

import parity_support as ps
from parity.normalisations import (
    ABSOLUTE_FORM_HOST,
    ALL_NORMALISATIONS,
    APP_FRAMES_ONLY,
    CHUNKED_TWICE_501,
    CONNECTION_LIMIT,
    CONNECTION_TOKENS,
    DISCONNECT_NOTICED,
    EARLY_CONTINUE,
    EMPTY_BODY_CL0,
    CHUNK_EXT_SKIPPED,
    EMPTY_CHUNK_LINE_400,
    EMPTY_IDENT_NO_VIA,
    HUGE_CHUNK_413,
    BODY_TOO_LARGE_AT_ONCE,
    EXPECT_NO_BODY,
    HALF_CLOSE,
    HEADER_CASE,
    HEADER_CHECKS_500,
    HEADER_COUNT_431,
    HOST_VALUE_400,
    HTTP09_400,
    HTTP1X,
    HTTP2_505,
    LF_ONLY_400,
    LIST_CONTENT_LENGTH,
    NON_ASCII_TARGET_400,
    OBS_FOLD_400,
    PROXY_ERROR_LENGTH,
    REPEATED_SINGLETON_400,
    REQUEST_LINE_414,
    ROOT_PREFIX,
    STATUS_FORMAT_500,
    TARGET_FORMS_400,
    TE_AND_CL_400,
    TE_HTTP10_400,
    VERSION_TRAILING_SPACE_400,
    Normalisation,
)
from parity.scripts import ReadFinal, ReadInterim, Send, Step, request, run_both, run_script, script
from parity.servers import ListenForm, PairPool
from support import ServerProcess

X_ALL = "x-forwarded-for x-forwarded-host x-forwarded-proto x-forwarded-port x-forwarded-by"

#: Every option set; both servers get exactly these arguments (plus where to listen).
PAIRS: dict[str, dict[str, Any]] = {
    "defaults": {"options": []},
    "named": {
        "options": [
            "--ident=parity-ident",
            "--server-name=parity.example",
            "--url-scheme=https",
            "--threads=2",
        ]
    },
    "ident-empty": {"options": ["--ident=", "--server-name=parity.example"]},
    "expose": {"options": ["--expose-tracebacks", "--ident=parity"]},
    "prefix-app": {"options": ["--url-prefix=/app", "--ident=parity"]},
    "prefix-app-slash": {"options": ["--url-prefix=app/", "--ident=parity"]},
    "prefix-root": {"options": ["--url-prefix=/", "--ident=parity"]},
    "listen-hostport": {
        "options": ["--ident=parity"],
        "listen": ListenForm(("--host=127.0.0.1", "--port={port}")),
    },
    "listen-localhost": {
        "options": ["--ident=parity"],
        "listen": ListenForm(("--listen=localhost:{port}",)),
    },
    "listen-ipv6": {
        "options": ["--ident=parity"],
        "listen": ListenForm(("--listen=[::1]:{port}",), "::1", "::1", "::1"),
    },
    "listen-star": {
        "options": ["--ident=parity", "--no-ipv6"],
        "listen": ListenForm(("--listen=*:{port}",), "127.0.0.1", "0.0.0.0", "0.0.0.0"),
    },
    "keep-proxy-headers": {"options": ["--no-clear-untrusted-proxy-headers", "--ident=parity"]},
    "clear-and-log": {
        "options": ["--clear-untrusted-proxy-headers", "--log-untrusted-proxy-headers", "--ident=parity"]
    },
    "proxy-x-all": {
        "options": ["--trusted-proxy=*", f"--trusted-proxy-headers={X_ALL}", "--ident=parity"]
    },
    "proxy-local-count2": {
        "options": [
            "--trusted-proxy=127.0.0.1",
            "--trusted-proxy-count=2",
            "--trusted-proxy-headers=x-forwarded-for x-forwarded-host x-forwarded-proto",
            "--ident=parity",
        ]
    },
    "proxy-forwarded": {
        "options": ["--trusted-proxy=*", "--trusted-proxy-headers=forwarded", "--ident=parity"]
    },
    "proxy-forwarded-count2": {
        "options": [
            "--trusted-proxy=127.0.0.1",
            "--trusted-proxy-headers=forwarded",
            "--trusted-proxy-count=2",
            "--ident=parity",
        ]
    },
    "proxy-untrusted-peer": {
        "options": [
            "--trusted-proxy=10.9.8.7",
            "--trusted-proxy-headers=x-forwarded-for x-forwarded-proto",
            "--log-untrusted-proxy-headers",
            "--ident=parity",
        ]
    },
    "proxy-implicit-proto": {"options": ["--trusted-proxy=*", "--ident=parity"]},
    "limits": {
        "options": ["--max-request-header-size=1000", "--max-request-body-size=1000", "--ident=parity"]
    },
    "buffers": {
        "options": [
            "--inbuf-overflow=1000",
            "--outbuf-overflow=5000",
            "--recv-bytes=100",
            "--send-bytes=5",
            "--asyncore-use-poll",
            "--asyncore-loop-timeout=1",
            "--backlog=16",
            "--cleanup-interval=5",
            "--ident=parity",
        ]
    },
    "lookahead": {"options": ["--channel-request-lookahead=1", "--ident=parity"]},
    "strict": {"options": ["--ident=parity"]},
    "timeouts": {"options": ["--channel-timeout=1", "--cleanup-interval=1", "--ident=parity"]},
    "connlimit": {"options": ["--connection-limit=4", "--ident=parity"]},
    "threads1": {"options": ["--threads=1", "--ident=parity"]},
}


@pytest.fixture(scope="module")
def pool() -> Iterator[PairPool]:
    p = PairPool(PAIRS)
    yield p
    p.close()


def q(value: str) -> str:
    return quote(value, safe="")


def req(*args: Any, **kw: Any) -> bytes:
    return request(*args, **kw)


def chunked(*pieces: bytes, trailer: bytes = b"") -> bytes:
    out = b"".join(b"%X\r\n%s\r\n" % (len(p), p) for p in pieces)
    return out + b"0\r\n" + trailer + b"\r\n"


TE = ("Transfer-Encoding", "chunked")


@dataclass
class Scenario:
    id: str
    pair: str
    steps: list[Step]
    declared: list[Normalisation] = field(default_factory=list)
    logged: list[str] = field(default_factory=list)  # regexes both servers must log
    not_logged: list[str] = field(default_factory=list)  # ... and must not


def S(
    id: str,
    pair: str,
    *requests_or_steps: Any,
    norms: tuple[Normalisation, ...] = (),
    logged: tuple[str, ...] = (),
    not_logged: tuple[str, ...] = (),
) -> Any:
    if requests_or_steps and isinstance(requests_or_steps[0], Step):
        steps = list(requests_or_steps)
    else:
        steps = script(*requests_or_steps)
    scenario = Scenario(id, pair, steps, list(norms), list(logged), list(not_logged))
    return pytest.param(scenario, id=f"{pair}:{id}")


def expect_steps(head: bytes, body: bytes) -> list[Step]:
    """Headers with Expect: 100-continue, wait for the 100, then the body."""
    return [Send(head), ReadInterim(2.0), Send(body), ReadFinal(False, head)]


BIG_HEADERS = [("X-Long", "v" * 600), ("X-Long2", "w" * 600)]

SCENARIOS = [
    # --- environ and header mapping (default options) ---------------------------------
    S("environ-get", "defaults", req("/echo?a=1&b=%20&c", headers=[("User-Agent", "parity/1"), ("Accept", "*/*")])),
    S(
        "environ-post-body",
        "defaults",
        req("/echo", "POST", headers=[("Content-Type", "application/x-www-form-urlencoded")], body=b"x=1&y=caf\xe9"),
    ),
    S("environ-put-empty-body-cl0", "defaults", req("/echo", "PUT", headers=[("Content-Length", "0")])),
    S("header-underscores-dropped", "defaults", req("/echo", headers=[("X_Foo", "under"), ("X-Foo", "dash"), ("Foo_Bar", "1")])),
    S(
        "header-repeats-joined",
        "defaults",
        req("/echo", headers=[("Accept", "a/a"), ("Cookie", "a=1"), ("Accept", "b/b"), ("Cookie", "b=2"), ("X-Multi", "1"), ("x-multi", "2"), ("X-MULTI", "3")]),
    ),
    S("header-value-trim-obs-text", "defaults", req("/echo", headers=[("X-Trim", " \t a  b \t"), ("X-Latin", "caf\xe9 \xa0\x85")])),
    S("header-obs-fold", "defaults", b"GET /echo HTTP/1.1\r\nHost: h\r\nX-Fold: first\r\n   second\r\n\r\n", norms=(OBS_FOLD_400,)),
    S(
        "header-obs-fold-tab-then-pipelined",
        "defaults",
        b"GET /echo HTTP/1.1\r\nHost: h\r\nX-Fold: first\r\n\tsecond\r\nX-After: 1\r\n\r\n" + req("/echo?next"),
        norms=(OBS_FOLD_400,),
    ),
    S("header-empty-value", "defaults", req("/echo", headers=[("X-Empty", "")])),
    S("header-content-type-and-length", "defaults", req("/echo", "POST", headers=[("Content-Type", "text/plain; charset=utf-8")], body=b"hello")),
    S("path-percent-decoding", "defaults", req("/a%20b/%2Fslash/%E9/%25?q=%20&r=%E9")),
    S("path-leading-slashes", "defaults", req("///abc//def")),
    S("path-dot-segments", "defaults", req("/a/../b/%2e%2e/c/./d")),
    S("path-absolute-form", "defaults", req("http://other.example:99/abs/path?x=1"), norms=(ABSOLUTE_FORM_HOST,)),
    S("path-absolute-form-no-host", "defaults", b"GET http://other.example/abs HTTP/1.1\r\n\r\n", norms=(ABSOLUTE_FORM_HOST,)),
    S("path-absolute-form-https-query-only", "defaults", req("HTTPS://Other.Example:8443?x=1"), norms=(ABSOLUTE_FORM_HOST,)),
    S("path-fragment", "defaults", req("/frag/path?x=1#part")),
    S("path-options-star", "defaults", req("*", "OPTIONS")),
    S("request-leading-crlf", "defaults", b"\r\n\r\n" + req("/echo")),
    S("request-line-trailing-space", "defaults", b"GET /echo HTTP/1.1 \r\nHost: h\r\n\r\n", norms=(VERSION_TRAILING_SPACE_400,)),
    S("request-line-trailing-tab", "defaults", b"GET /echo HTTP/1.1\t\r\nHost: h\r\n\r\n", norms=(VERSION_TRAILING_SPACE_400,)),
    S("request-line-trailing-spaces-http10", "defaults", b"GET /echo HTTP/1.0  \r\nHost: h\r\n\r\n", norms=(VERSION_TRAILING_SPACE_400,)),
    # --- Host values ------------------------------------------------------------------
    S("host-with-port", "defaults", req("/echo", headers=[("Host", "parity.test:8080")])),
    S("host-ip-literal", "defaults", req("/echo", headers=[("Host", "[::1]:80")])),
    S("host-ipv4", "defaults", req("/echo", headers=[("Host", "127.0.0.1")])),
    S("host-sub-delims-and-pct", "defaults", req("/echo", headers=[("Host", "a-b_c~d.%41!$&'()*+,;=")])),
    S("host-empty-value", "defaults", req("/echo", headers=[("Host", "")])),
    S("host-with-slash", "defaults", req("/echo", headers=[("Host", "evil.example/path")]), norms=(HOST_VALUE_400,)),
    S("host-with-userinfo", "defaults", req("/echo", headers=[("Host", "user@parity.test")]), norms=(HOST_VALUE_400,)),
    S("host-with-space", "defaults", req("/echo", headers=[("Host", "a b")]), norms=(HOST_VALUE_400,)),
    S("host-with-angle-brackets-http10", "defaults", req("/echo", version="1.0", headers=[("Host", "<x>")]), norms=(HOST_VALUE_400,)),
    S("host-obs-text", "defaults", req("/echo", headers=[("Host", "caf\xe9.example")]), norms=(HOST_VALUE_400,)),
    S("method-custom-token", "defaults", req("/echo", "PROPFIND")),
    # --- responses --------------------------------------------------------------------
    S(
        "status-custom-and-headers",
        "defaults",
        req("/status/418?reason=" + q("I'm a teapot") + "&h=" + q("X-Custom:yes") + "&h=" + q('ETag:"abc"') + "&h=" + q("WWW-Authenticate:Basic realm=x") + "&h=" + q("x-lower-CASE:z")),
    ),
    S("status-repeated-set-cookie", "defaults", req("/status/200?h=" + q("Set-Cookie:a=1") + "&h=" + q("Set-Cookie:b=2") + "&h=" + q("Set-Cookie:c=3"))),
    S("status-empty-reason", "defaults", req("/status/299?reason=")),
    S("status-500-from-app", "defaults", req("/status/500?reason=" + q("Internal Server Error") + "&body=app%20error")),
    S("body-generator", "defaults", req("/gen")),
    S("body-generator-with-cl", "defaults", req("/gen?cl=15")),
    S("body-generator-one-chunk", "defaults", req("/gen?n=1")),
    S("body-generator-empty-chunks-only", "defaults", req("/gen?n=2&size=0"), norms=(EMPTY_BODY_CL0,)),
    S("body-generator-no-items", "defaults", req("/gen?n=0"), norms=(EMPTY_BODY_CL0,)),
    S("body-generator-no-items-http10", "defaults", req("/gen?n=0", version="1.0"), norms=(EMPTY_BODY_CL0,)),
    S(
        "body-generator-no-items-http10-keep-alive",
        "defaults",
        req("/gen?n=0", version="1.0", headers=[("Connection", "keep-alive")]),
        norms=(EMPTY_BODY_CL0,),
    ),
    S("body-write-nothing", "defaults", req("/write?n=0"), norms=(EMPTY_BODY_CL0,)),
    S("body-write", "defaults", req("/write")),
    S("body-write-with-cl", "defaults", req("/write?cl=14")),
    S("body-write-and-tail", "defaults", req("/write?tail=1")),
    S("body-list-1-item", "defaults", req("/list1")),
    S("body-list-2-items", "defaults", req("/list2"), norms=(LIST_CONTENT_LENGTH,)),
    S("body-tuple-2-items", "defaults", req("/tuple2"), norms=(LIST_CONTENT_LENGTH,)),
    S("body-empty-list", "defaults", req("/empty"), norms=(EMPTY_BODY_CL0,)),
    S("body-empty-list-cl0", "defaults", req("/empty-cl0")),
    S("status-204-drops-body", "defaults", req("/nobody/204")),
    S("status-304-drops-body", "defaults", req("/nobody/304")),
    S("head-echo", "defaults", req("/echo", "HEAD")),
    S("head-generator", "defaults", req("/gen", "HEAD")),
    S("head-generator-http10", "defaults", req("/gen", "HEAD", version="1.0")),
    S("head-generator-with-cl", "defaults", req("/gen?cl=15", "HEAD")),
    S("head-write", "defaults", req("/write", "HEAD")),
    S("head-file-wrapper", "defaults", req("/fw-bytesio", "HEAD")),
    S("head-empty-generator", "defaults", req("/gen?n=0", "HEAD"), norms=(EMPTY_BODY_CL0,)),
    S("head-list-2-items", "defaults", req("/list2", "HEAD"), norms=(LIST_CONTENT_LENGTH,)),
    S("head-cl-too-few", "defaults", req("/cl?declared=10&actual=5", "HEAD")),
    S("cl-too-few-list", "defaults", req("/cl?declared=10&actual=5")),
    S("cl-too-few-generator", "defaults", req("/cl?declared=10&actual=5&gen=1")),
    S("cl-too-many-truncated", "defaults", req("/cl?declared=3&actual=8")),
    S("cl-zero-with-body", "defaults", req("/cl?declared=0&actual=4")),
    S("file-wrapper-bytesio", "defaults", req("/fw-bytesio")),
    S("file-wrapper-bytesio-offset", "defaults", req("/fw-bytesio?offset=3")),
    S("file-wrapper-bytesio-cl-shorter", "defaults", req("/fw-bytesio?cl=10")),
    S("file-wrapper-bytesio-cl-longer", "defaults", req("/fw-bytesio?cl=5000")),
    S("file-wrapper-real-file", "defaults", req("/fw-file")),
    S("file-wrapper-real-file-cl", "defaults", req("/fw-file?cl=100")),
    S("file-wrapper-unseekable", "defaults", req("/fw-unseekable")),
    S("exception-before-start-response", "defaults", req("/raise")),
    S("exception-after-first-chunk", "defaults", req("/raise-after")),
    S("app-sets-server-header", "defaults", req("/app-server")),
    # --- keep-alive rules ---------------------------------------------------------------
    S("http10-closes", "defaults", req("/echo", version="1.0")),
    S("http10-keep-alive-with-cl", "defaults", req("/echo", version="1.0", headers=[("Connection", "keep-alive")])),
    S("http10-keep-alive-generator-closes", "defaults", req("/gen", version="1.0", headers=[("Connection", "Keep-Alive")])),
    S("http10-keep-alive-list-2", "defaults", req("/list2", version="1.0", headers=[("Connection", "keep-alive")]), norms=(LIST_CONTENT_LENGTH,)),
    S("http10-no-host", "defaults", b"GET /echo HTTP/1.0\r\n\r\n"),
    S("http11-connection-close", "defaults", req("/echo", headers=[("Connection", "close")])),
    S("http11-connection-close-uppercase", "defaults", req("/echo", headers=[("Connection", "CLOSE")])),
    S("http11-connection-close-te-list", "defaults", req("/echo", headers=[("Connection", "close, TE")]), norms=(CONNECTION_TOKENS,)),
    S("http11-no-host", "defaults", b"GET /echo HTTP/1.1\r\n\r\n"),
    S(
        "http11-two-requests-one-connection",
        "defaults",
        Send(req("/echo?first")),
        ReadFinal(False, req("/echo?first")),
        Send(req("/list1")),
        ReadFinal(False, req("/list1")),
    ),
    # --- request bodies -----------------------------------------------------------------
    S("chunked-request-body", "defaults", req("/echo", "POST", headers=[TE]) + chunked(b"hello", b" world")),
    S(
        "chunked-request-ext-and-trailer",
        "defaults",
        req("/echo", "POST", headers=[TE]) + b"5;name=value;q=\"quoted\"\r\nhello\r\n0\r\n" + b"X-Trailer: t\r\n\r\n",
    ),
    S("chunked-request-upper-hex", "defaults", req("/echo", "POST", headers=[TE]) + b"A\r\n0123456789\r\n00\r\n\r\n"),
    S("chunked-request-te-case", "defaults", req("/echo", "POST", headers=[("Transfer-Encoding", "Chunked")]) + chunked(b"abc")),
    S(
        "expect-100-continue-waits-for-100",
        "defaults",
        *expect_steps(req("/echo", "POST", headers=[("Expect", "100-continue"), ("Content-Length", "11")]), b"hello world"),
    ),
    S(
        "expect-100-continue-chunked-waits-for-100",
        "defaults",
        *expect_steps(req("/echo", "POST", headers=[("Expect", "100-continue"), TE]), chunked(b"hello")),
    ),
    S(
        "expect-100-continue-body-in-same-packet",
        "defaults",
        req("/echo", "POST", headers=[("Expect", "100-continue")], body=b"hello"),
        norms=(EARLY_CONTINUE,),
    ),
    S("expect-on-http10-ignored", "defaults", req("/echo", "POST", version="1.0", headers=[("Expect", "100-continue")], body=b"x")),
    S("expect-other-value", "defaults", req("/echo", "POST", headers=[("Expect", "something-else")], body=b"x")),
    S(
        "pipelining-three",
        "defaults",
        req("/echo?one"),
        req("/echo?two", "POST", body=b"second body"),
        req("/list1"),
    ),
    S("pipelining-chunked-body-then-get", "defaults", req("/echo", "POST", headers=[TE]) + chunked(b"abc"), req("/echo?after")),
    S("pipelining-head-then-get", "defaults", req("/echo", "HEAD"), req("/list1")),
    # --- malformed requests both reject ---------------------------------------------------
    S("bad-lowercase-method", "defaults", b"get /echo HTTP/1.1\r\nHost: h\r\n\r\n"),
    S("bad-version-format", "defaults", b"GET /echo HTTP/1.x\r\nHost: h\r\n\r\n"),
    S("bad-double-space", "defaults", b"GET  /echo HTTP/1.1\r\nHost: h\r\n\r\n"),
    S("bad-bare-lf-in-request-line", "defaults", b"GET /echo HTTP/1.1\nHost: h\r\n\r\n"),
    S("bad-bare-lf-in-header", "defaults", b"GET /echo HTTP/1.1\r\nHost: h\nX: y\r\n\r\n"),
    S(
        "bad-lf-only-head",
        "defaults",
        Send(b"GET /echo HTTP/1.1\nHost: h\n\n"),
        # Waitress never answers (README); 1.5 s is plenty for Tapster's "at once".
        ReadFinal(False, b"GET /echo HTTP/1.1\nHost: h\n\n", wait=1.5),
        norms=(LF_ONLY_400,),
    ),
    S("bad-bare-cr-in-header", "defaults", b"GET /echo HTTP/1.1\r\nHost: h\rX: y\r\n\r\n"),
    S("bad-bare-cr-in-request-line", "defaults", b"GET /echo\rX HTTP/1.1\r\nHost: h\r\n\r\n"),
    S("bad-bare-lf-in-later-header", "defaults", b"GET /echo HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nX-B: 2\nX-C: 3\r\n\r\n"),
    S("bad-space-before-colon", "defaults", b"GET /echo HTTP/1.1\r\nHost : h\r\n\r\n"),
    S("bad-ctl-in-value", "defaults", b"GET /echo HTTP/1.1\r\nHost: h\r\nX-Ctl: a\x01b\r\n\r\n"),
    S("bad-no-colon", "defaults", b"GET /echo HTTP/1.1\r\nHost: h\r\nNoColonHere\r\n\r\n"),
    S("bad-fold-first-line", "defaults", b"GET /echo HTTP/1.1\r\n  folded\r\nHost: h\r\n\r\n"),
    S("bad-cl-plus", "defaults", req("/echo", "POST", headers=[("Content-Length", "+3")]) + b"abc"),
    S("bad-cl-negative", "defaults", req("/echo", "POST", headers=[("Content-Length", "-1")])),
    S("bad-cl-hex", "defaults", req("/echo", "POST", headers=[("Content-Length", "0x3")]) + b"abc"),
    S("bad-cl-hex-http10", "defaults", req("/echo", "POST", version="1.0", headers=[("Content-Length", "0x3")]) + b"abc"),
    S("bad-cl-empty", "defaults", req("/echo", "POST", headers=[("Content-Length", "")])),
    S("bad-cl-repeated-same", "defaults", req("/echo", "POST", headers=[("Content-Length", "3"), ("Content-Length", "3")]) + b"abc"),
    S("bad-te-gzip", "defaults", req("/echo", "POST", headers=[("Transfer-Encoding", "gzip, chunked")]) + chunked(b"abc")),
    S("bad-te-identity", "defaults", req("/echo", "POST", headers=[("Transfer-Encoding", "identity")])),
    S("bad-chunk-size", "defaults", req("/echo", "POST", headers=[TE]) + b"zz\r\nabc\r\n0\r\n\r\n"),
    S("bad-chunk-size-0x", "defaults", req("/echo", "POST", headers=[TE]) + b"0x3\r\nabc\r\n0\r\n\r\n"),
    S("bad-chunk-extension", "defaults", req("/echo", "POST", headers=[TE]) + b"3;a\x01\r\nabc\r\n0\r\n\r\n"),
    S("bad-chunk-not-terminated", "defaults", req("/echo", "POST", headers=[TE]) + b"3\r\nabcX\r\n0\r\n\r\n"),
    S("bad-non-ascii-target", "defaults", b"GET /caf\xe9 HTTP/1.1\r\nHost: h\r\n\r\n"),
    S("bad-non-ascii-target-http10", "defaults", b"GET /caf\xe9 HTTP/1.0\r\nHost: h\r\n\r\n"),
    S("bad-error-drops-pipelined-rest", "defaults", b"get / HTTP/1.1\r\nHost: h\r\n\r\n" + req("/echo")),
    # --- ident, server_name, url_scheme, threads -------------------------------------------
    S("environ", "named", req("/echo")),
    S("status-custom", "named", req("/status/201?reason=Made")),
    S("exception-page", "named", req("/raise")),
    S("parse-error-page", "named", b"GET /echo HTTP/1.1\r\nHost : h\r\n\r\n"),
    S("app-sets-server-header", "named", req("/app-server")),
    S("environ", "ident-empty", req("/echo")),
    S("exception-page", "ident-empty", req("/raise")),
    S("parse-error-page", "ident-empty", b"GET /echo HTTP/1.1\r\nHost : h\r\n\r\n"),
    S("app-sets-server-header", "ident-empty", req("/app-server"), norms=(EMPTY_IDENT_NO_VIA,)),
    S("exception-before-start-response", "expose", req("/raise"), norms=(APP_FRAMES_ONLY,)),
    S("exception-after-first-chunk", "expose", req("/raise-after")),
    # --- url_prefix ----------------------------------------------------------------------------
    S("under-prefix", "prefix-app", req("/app/echo?x=1")),
    S("prefix-exactly", "prefix-app", req("/app")),
    S("prefix-slash", "prefix-app", req("/app/")),
    S("prefix-lookalike", "prefix-app", req("/apple/x")),
    S("outside-prefix", "prefix-app", req("/other/x")),
    S("prefix-percent-encoded", "prefix-app", req("/%61pp/echo")),
    S("prefix-route", "prefix-app", req("/app/gen")),
    S("under-prefix", "prefix-app-slash", req("/app/x/y")),
    S("prefix-exactly", "prefix-app-slash", req("/app")),
    S("root-prefix-is-empty", "prefix-root", req("/x/y"), norms=(ROOT_PREFIX,)),
    S("root-prefix-root-path", "prefix-root", req("/"), norms=(ROOT_PREFIX,)),
    S("root-prefix-leading-slashes", "prefix-root", req("//x?q=1"), norms=(ROOT_PREFIX,)),
    # --- listen/host/port forms ------------------------------------------------------------------
    S("environ", "listen-hostport", req("/echo")),
    S("environ", "listen-localhost", req("/echo", headers=[("Host", "localhost")])),
    S("environ", "listen-ipv6", req("/echo", headers=[("Host", "[::1]")])),
    S("environ", "listen-star", req("/echo")),
    # --- untrusted proxy headers ---------------------------------------------------------------------
    S(
        "untrusted-cleared-by-default",
        "defaults",
        req("/echo", headers=[("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-Host", "evil"), ("X-Forwarded-Proto", "https"), ("X-Forwarded-Port", "1"), ("X-Forwarded-By", "b"), ("Forwarded", "for=1.2.3.4")]),
        not_logged=("Removed untrusted headers",),
    ),
    S(
        "untrusted-kept",
        "keep-proxy-headers",
        req("/echo", headers=[("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-Proto", "https"), ("Forwarded", "for=1.2.3.4")]),
    ),
    S(
        "untrusted-cleared-and-logged",
        "clear-and-log",
        req("/echo", headers=[("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-Port", "99")]),
        logged=(r"Removed untrusted headers \((X-Forwarded-For, X-Forwarded-Port|X-Forwarded-Port, X-Forwarded-For)\)",),
    ),
    S(
        "peer-not-the-trusted-proxy",
        "proxy-untrusted-peer",
        req("/echo", headers=[("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "h")]),
        logged=(r"Removed untrusted headers \(.*X-Forwarded-Host",),
    ),
    # --- trusted proxy: X-Forwarded-* ------------------------------------------------------------------
    S("xff-single", "proxy-x-all", req("/echo", headers=[("X-Forwarded-For", "203.0.113.9")])),
    S("xff-chain-count-1", "proxy-x-all", req("/echo", headers=[("X-Forwarded-For", "198.51.100.1, 203.0.113.9")])),
    S("xff-with-port", "proxy-x-all", req("/echo", headers=[("X-Forwarded-For", "203.0.113.9:4711")])),
    S("xff-ipv6", "proxy-x-all", req("/echo", headers=[("X-Forwarded-For", "2001:db8::1")])),
    S("xff-quoted", "proxy-x-all", req("/echo", headers=[("X-Forwarded-For", '"203.0.113.9"')])),
    S(
        "xfh-and-https",
        "proxy-x-all",
        req("/echo", headers=[("X-Forwarded-Host", "example.com"), ("X-Forwarded-Proto", "https")]),
    ),
    S("xfh-with-port", "proxy-x-all", req("/echo", headers=[("X-Forwarded-Host", "example.com:8443")])),
    S(
        "xfh-proto-port",
        "proxy-x-all",
        req("/echo", headers=[("X-Forwarded-Host", "example.com"), ("X-Forwarded-Proto", "http"), ("X-Forwarded-Port", "8080")]),
    ),
    S(
        "xfh-https-port-80",
        "proxy-x-all",
        req("/echo", headers=[("X-Forwarded-Host", "example.com"), ("X-Forwarded-Proto", "https"), ("X-Forwarded-Port", "80")]),
    ),
    S("xfport-only", "proxy-x-all", req("/echo", headers=[("X-Forwarded-Port", "8443")])),
    S("xfproto-uppercase", "proxy-x-all", req("/echo", headers=[("X-Forwarded-Proto", "HTTPS")])),
    S("xfby-kept", "proxy-x-all", req("/echo", headers=[("X-Forwarded-By", "proxy-1"), ("X-Forwarded-For", "203.0.113.9")])),
    S(
        "all-x-headers",
        "proxy-x-all",
        req("/echo", headers=[("X-Forwarded-For", "203.0.113.9, 10.0.0.1"), ("X-Forwarded-Host", "a.example, b.example:9000"), ("X-Forwarded-Proto", "https"), ("X-Forwarded-Port", "444"), ("X-Forwarded-By", "p")]),
    ),
    S("forwarded-untrusted-with-x-config", "proxy-x-all", req("/echo", headers=[("Forwarded", "for=1.2.3.4"), ("X-Forwarded-For", "203.0.113.9")])),
    S(
        "malformed-xfproto-multiple",
        "proxy-x-all",
        req("/echo", headers=[("X-Forwarded-Proto", "https, http")]),
        norms=(PROXY_ERROR_LENGTH,),
    ),
    S(
        "malformed-xfproto-unknown",
        "proxy-x-all",
        req("/echo", headers=[("X-Forwarded-Proto", "ftp")]),
        norms=(PROXY_ERROR_LENGTH,),
        logged=(r'Malformed proxy header "X-Forwarded-Proto" from "127\.0\.0\.1": unsupported proto value value: ftp',),
    ),
    S(
        "malformed-xfport-multiple",
        "proxy-x-all",
        req("/echo", headers=[("X-Forwarded-Port", "80, 443")]),
        norms=(PROXY_ERROR_LENGTH,),
    ),
    S(
        "malformed-xfproto-http10",
        "proxy-x-all",
        req("/echo", version="1.0", headers=[("X-Forwarded-Proto", "ftp")]),
        norms=(PROXY_ERROR_LENGTH,),
    ),
    S(
        "malformed-xfproto-http10-keep-alive",
        "proxy-x-all",
        req("/echo", version="1.0", headers=[("X-Forwarded-Proto", "ftp"), ("Connection", "keep-alive")]),
        norms=(PROXY_ERROR_LENGTH,),
    ),
    S(
        "malformed-xfproto-connection-close",
        "proxy-x-all",
        req("/echo", headers=[("X-Forwarded-Proto", "ftp"), ("Connection", "close")]),
        norms=(PROXY_ERROR_LENGTH,),
    ),
    S("xff-count-2", "proxy-local-count2", req("/echo", headers=[("X-Forwarded-For", "192.0.2.1, 198.51.100.7, 203.0.113.9")])),
    S(
        "xfh-count-2",
        "proxy-local-count2",
        req("/echo", headers=[("X-Forwarded-Host", "h0.example, h1.example, h2.example"), ("X-Forwarded-Proto", "https")]),
    ),
    S("xfport-not-trusted", "proxy-local-count2", req("/echo", headers=[("X-Forwarded-Port", "9999"), ("X-Forwarded-By", "b")])),
    S("implicit-proto-only", "proxy-implicit-proto", req("/echo", headers=[("X-Forwarded-Proto", "https"), ("X-Forwarded-For", "1.2.3.4")])),
    # --- trusted proxy: Forwarded ----------------------------------------------------------------------
    S("forwarded-full", "proxy-forwarded", req("/echo", headers=[("Forwarded", "for=192.0.2.60;proto=https;host=example.org:8443;by=203.0.113.43")])),
    S("forwarded-ipv6-with-port", "proxy-forwarded", req("/echo", headers=[("Forwarded", 'For="[2001:db8::1]:4711";Host=example.org')])),
    S("forwarded-two-elements-count-1", "proxy-forwarded", req("/echo", headers=[("Forwarded", "for=192.0.2.1;host=a.example, for=198.51.100.2;proto=https")])),
    S("forwarded-x-headers-cleared", "proxy-forwarded", req("/echo", headers=[("Forwarded", "for=192.0.2.60"), ("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-Proto", "https")])),
    S(
        "forwarded-unknown-token",
        "proxy-forwarded",
        req("/echo", headers=[("Forwarded", "for=192.0.2.60;secret=x")]),
        logged=(r"Unknown Forwarded token: secret",),
    ),
    S("malformed-forwarded-no-equals", "proxy-forwarded", req("/echo", headers=[("Forwarded", "for")]), norms=(PROXY_ERROR_LENGTH,)),
    S(
        "malformed-forwarded-whitespace",
        "proxy-forwarded",
        req("/echo", headers=[("Forwarded", "for= 192.0.2.60")]),
        norms=(PROXY_ERROR_LENGTH,),
    ),
    S("malformed-forwarded-proto", "proxy-forwarded", req("/echo", headers=[("Forwarded", "proto=gopher")]), norms=(PROXY_ERROR_LENGTH,)),
    S(
        "forwarded-count-2",
        "proxy-forwarded-count2",
        req("/echo", headers=[("Forwarded", "for=192.0.2.1;host=zero.example, for=192.0.2.2;host=one.example:8080, for=192.0.2.3;proto=https")]),
    ),
    # --- limits ------------------------------------------------------------------------------------------
    S("header-under-limit", "limits", req("/echo", headers=[("X-Pad", "p" * 500)])),
    S("header-over-limit-431", "limits", req("/echo", headers=BIG_HEADERS)),
    S("body-under-limit", "limits", req("/echo", "POST", body=b"b" * 900)),
    S("body-cl-at-limit-413", "limits", req("/echo", "POST", headers=[("Content-Length", "1000")]) + b"b" * 1000),
    S("body-cl-over-limit-413", "limits", req("/echo", "POST", headers=[("Content-Length", "5000")])),
    S("body-cl-over-limit-413-http10", "limits", req("/echo", "POST", version="1.0", headers=[("Content-Length", "5000")])),
    S("body-chunked-over-limit-413", "limits", req("/echo", "POST", headers=[TE]) + chunked(b"c" * 600, b"d" * 600)),
    # --- buffers and socket options --------------------------------------------------------------------------
    S("body-over-inbuf-overflow", "buffers", req("/echo", "POST", body=bytes(range(256)) * 20)),
    S("chunked-body-over-inbuf-overflow", "buffers", req("/echo", "POST", headers=[TE]) + chunked(b"x" * 3000, b"y" * 3000)),
    S("response-over-outbuf-overflow", "buffers", req("/big?size=2000000")),
    S("response-over-outbuf-overflow-chunked", "buffers", req("/big?size=300000&cl=0")),
    S("long-head-over-recv-bytes", "buffers", req("/echo?" + "q" * 500, headers=[("X-Pad", "p" * 700)])),
    S("file-wrapper-real-file", "buffers", req("/fw-file")),
    # --- channel_request_lookahead ---------------------------------------------------------------------------
    S("environ-has-client-disconnected", "lookahead", req("/echo")),
    S("pipelining-with-lookahead", "lookahead", req("/echo?a"), req("/echo?b", "POST", body=b"bb"), req("/list1")),
    S("http1x-served-as-11", "strict", req("/echo", version="1.2"), norms=(HTTP1X,)),
]


def test_scenario_count() -> None:
    assert len(SCENARIOS) + len(STRICTER) >= 60


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_parity(pool: PairPool, scenario: Scenario) -> None:
    pair = pool.get(scenario.pair)
    problems, applied, w_out, t_out = ps.mismatches(pair, scenario.steps, scenario.declared)
    if w_out.problem and t_out.problem:
        # Equal silence proves nothing: every scenario must get an answer somewhere.
        problems.append(f"neither server answered: waitress: {w_out.problem}; tapster: {t_out.problem}")
    problems += ps.log_problems(pair, scenario.logged, scenario.not_logged)
    for norm in scenario.declared:
        if norm.name not in applied:
            # A declared row that found nothing to rewrite: Waitress did not do what the
            # README's Waitress column says here, so the scenario proves nothing about it.
            problems.append(f"declared normalisation {norm.name} did not apply: {norm.readme_row!r}")
    if problems:
        raise AssertionError(ps.mismatch_report(pair, problems, applied))


# ---------------------------------------------------------------------------------------
# Where Tapster is documented as stricter: its documented answer, and Waitress's
# ---------------------------------------------------------------------------------------


@dataclass
class Stricter:
    id: str
    raw: bytes
    norm: Normalisation
    waitress_status: int  # what Waitress does (the README's Waitress column)
    tapster_status: int  # what Tapster is documented to do
    waitress_version: str | None = None  # the status line's version, when it matters


STRICTER = [
    pytest.param(s, id=s.id)
    for s in [
        Stricter("te-and-cl", req("/echo", "POST", headers=[("Content-Length", "3"), TE]) + chunked(b"abc"), TE_AND_CL_400, 200, 400),
        Stricter("te-on-http10", req("/echo", "POST", version="1.0", headers=[TE, ("Content-Length", "3")]) + b"abc", TE_HTTP10_400, 200, 400),
        Stricter("repeated-host", req("/echo", headers=[("Host", "a"), ("Host", "b")]), REPEATED_SINGLETON_400, 200, 400),
        Stricter(
            "repeated-content-type",
            req("/echo", "POST", headers=[("Content-Type", "a/a"), ("Content-Type", "b/b")], body=b"x"),
            REPEATED_SINGLETON_400,
            200,
            400,
        ),
        Stricter(
            "repeated-content-length",
            req("/echo", "POST", headers=[("Content-Length", "1"), ("Content-Length", "1")]) + b"x",
            REPEATED_SINGLETON_400,
            400,  # joined to "1, 1", which is not a valid Content-Length either
            400,
        ),
        Stricter("chunked-twice", req("/echo", "POST", headers=[("Transfer-Encoding", "chunked, chunked")]) + chunked(b"abc"), CHUNKED_TWICE_501, 200, 501),
        Stricter("empty-line-for-chunk-size", req("/echo", "POST", headers=[TE]) + b"\r\n3\r\nabc\r\n0\r\n\r\n", EMPTY_CHUNK_LINE_400, 200, 400),
        Stricter("non-ascii-double-slash-target", b"GET //caf\xe9 HTTP/1.1\r\nHost: h\r\n\r\n", NON_ASCII_TARGET_400, 200, 400),
        Stricter("star-with-get", req("*"), TARGET_FORMS_400, 200, 400),
        Stricter("authority-form-with-get", req("example.com:443"), TARGET_FORMS_400, 200, 400),
        Stricter("absolute-form-ftp", req("ftp://example.com/x"), TARGET_FORMS_400, 200, 400),
        Stricter("http2-version", req("/echo", version="2.0"), HTTP2_505, 200, 505, "HTTP/1.0"),
        Stricter("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", HTTP2_505, 200, 505, "HTTP/1.0"),
        Stricter("http3-version", req("/echo", version="3.0"), HTTP2_505, 200, 505, "HTTP/1.0"),
        Stricter("http09", b"GET /echo\r\n\r\n", HTTP09_400, 200, 400, "HTTP/1.0"),
        Stricter("request-line-over-64k", req("/echo?" + "x" * 70000), REQUEST_LINE_414, 200, 414),
        Stricter("header-fields-over-100", req("/echo", headers=[(f"X-H{i}", "v") for i in range(101)]), HEADER_COUNT_431, 200, 431),
        Stricter("status-without-code", req("/badstatus?status=OK"), STATUS_FORMAT_500, -1, 500),
        Stricter("status-two-digit-code", req("/badstatus?status=" + q("20 OK")), STATUS_FORMAT_500, 20, 500),
        Stricter("header-name-with-space", req("/badheader?name=" + q("X Bad")), HEADER_CHECKS_500, 200, 500),
        Stricter("header-value-with-ctl", req("/badheader?value=" + q("a\x01b")), HEADER_CHECKS_500, 200, 500),
        Stricter("header-value-with-del", req("/badheader?value=" + q("a\x7fb")), HEADER_CHECKS_500, 200, 500),
    ]
]


@pytest.mark.parametrize("case", STRICTER)
def test_documented_stricter(pool: PairPool, case: Stricter) -> None:
    """README rows where Tapster rejects what Waitress serves: Tapster gives the
    documented status and closes; Waitress does what the row's Waitress column says."""
    pair = pool.get("strict")
    steps = script(case.raw, head=[False])
    w, t = run_both(pair, steps)
    assert w.responses, f"waitress: {w.problem}"
    assert t.responses, f"tapster: {t.problem}"
    wr, tr = w.responses[0], t.responses[0]
    assert wr.status == case.waitress_status, (case.norm.name, wr.status, wr.reason)
    if case.waitress_version:
        assert wr.version == case.waitress_version
    assert (tr.status, t.closed) == (case.tapster_status, True), (case.norm.name, tr.status, tr.reason, tr.body[:200])
    assert tr.header("Connection") == "close"
    assert tr.body.endswith(b"(generated by parity)"), tr.body[:300]


# ---------------------------------------------------------------------------------------
# Documented differences that need a conversation, not one request
# ---------------------------------------------------------------------------------------


def test_expect_100_without_body(pool: PairPool) -> None:
    """README: Waitress hangs on `Expect: 100-continue` with no body; Tapster serves
    the request normally and sends no 100."""
    pair = pool.get("strict")
    raw = req("/echo", headers=[("Expect", "100-continue")])
    steps: list[Step] = [Send(raw), ReadInterim(1.0), ReadInterim(1.0)]
    w, t = run_both(pair, steps)
    # Waitress: the 100, then nothing at all (the request is never dispatched).
    assert (w.responses, w.interim, w.closed) == ([], [[100, 0]], False), (EXPECT_NO_BODY.name, w)
    # Tapster: the final response straight away, no 100, and nothing after it.
    assert len(t.responses) == 1 and t.responses[0].status == 200, (EXPECT_NO_BODY.name, t)
    assert t.interim == [[], [0]] and not t.closed, t
    data = json.loads(t.responses[0].body)
    assert data["environ"]["HTTP_EXPECT"] == "100-continue"


@pytest.mark.parametrize("extension", [b"; name", b";=v", b"; a; b=c", b';a = "q"'])
def test_chunk_extensions_are_skipped(pool: PairPool, extension: bytes) -> None:
    """README: Waitress answers 400 to extensions outside `;name[=value]`; Tapster skips
    any extension without control characters and serves the request."""
    pair = pool.get("strict")
    raw = req("/echo", "POST", headers=[TE]) + b"3" + extension + b"\r\nabc\r\n0\r\n\r\n"
    w, t = run_both(pair, script(raw))
    assert w.responses and w.responses[0].status == 400, (CHUNK_EXT_SKIPPED.name, w)
    assert t.responses and t.responses[0].status == 200, (CHUNK_EXT_SKIPPED.name, t)
    assert json.loads(t.responses[0].body)["body"] == "abc"


def test_body_over_the_limit_is_refused_before_100_continue(pool: PairPool) -> None:
    """README: Waitress sends `100 Continue` for a body larger than it will accept and
    answers 413 only once that body has arrived; Tapster answers 413 at once, with no
    100, so the client never sends it."""
    pair = pool.get("limits")
    raw = req("/echo", "POST", headers=[("Content-Length", "5000"), ("Expect", "100-continue")])
    steps: list[Step] = [Send(raw), ReadInterim(1.0), ReadFinal(False, raw, wait=1.5)]
    w, t = run_both(pair, steps)
    assert (w.interim, w.responses) == ([[100]], []), (BODY_TOO_LARGE_AT_ONCE.name, w)
    assert [r.status for r in t.responses] == [413], (BODY_TOO_LARGE_AT_ONCE.name, t)
    assert t.interim == [[]] and t.closed, t


def test_huge_chunk_size_is_refused_at_once(pool: PairPool) -> None:
    """README: a 1 TB chunk size gets 413 from Tapster as soon as the size line is read;
    Waitress waits for the data."""
    pair = pool.get("strict")
    raw = req("/echo", "POST", headers=[TE]) + b"E8D4A51000\r\n"
    steps: list[Step] = [Send(raw), ReadFinal(False, raw, wait=1.5)]
    w, t = run_both(pair, steps)
    assert (w.responses, w.closed) == ([], False), (HUGE_CHUNK_413.name, w)
    assert len(t.responses) == 1 and t.responses[0].status == 413, (HUGE_CHUNK_413.name, t)
    assert t.closed


def test_disconnect_noticed_without_lookahead(pool: PairPool) -> None:
    """README: without lookahead Waitress notices a disconnect only when writing (the
    app's check stays False); Tapster's check turns True while the app runs."""
    pair = pool.get("strict")
    for side in ("waitress", "tapster"):
        s = socket.create_connection(pair.address(side))
        s.sendall(req("/wait-disconnect?wait=1.5&tag=nolookahead"))
        time.sleep(0.3)
        s.close()
    pair.wait_for_log("waitress", r"EVENT wait-disconnect nolookahead saw=False", timeout=5)
    pair.wait_for_log("tapster", r"EVENT wait-disconnect nolookahead saw=True", timeout=5)
    assert DISCONNECT_NOTICED.readme_row in ps.readme_rows()


def test_tapster_keeps_header_case_and_order(pool: PairPool) -> None:
    """README: names, case and order are kept as the application gave them."""
    pair = pool.get("strict")
    raw = req("/status/200?h=" + q("x-lower-CASE:1") + "&h=" + q("ETag:e") + "&h=" + q("WWW-Authenticate:w"))
    t = run_script("tapster", pair.address("tapster"), script(raw))
    names = [k for k, _ in t.responses[0].headers]
    app_names = ["Content-Type", "x-lower-CASE", "ETag", "WWW-Authenticate", "Content-Length"]
    assert [n for n in names if n in app_names] == app_names, (HEADER_CASE.name, names)


def _served_within(address: tuple[str, int], seconds: float) -> tuple[socket.socket, bool]:
    s = socket.create_connection(address, timeout=seconds)
    s.sendall(req("/echo"))
    try:
        data = s.recv(65536)
    except socket.timeout:
        return s, False
    return s, data.startswith(b"HTTP/1.1 200")


def test_connection_limit(pool: PairPool) -> None:
    """README: Waitress counts its listener and its trigger against connection_limit;
    Tapster counts client connections only. With 4: Waitress serves 2 clients at once,
    Tapster 4; on both, a client over the limit is served once another leaves."""
    pair = pool.get("connlimit")
    expected = {"waitress": 4 - 2, "tapster": 4}
    results: dict[str, tuple[int, bool]] = {}

    def probe(side: str) -> None:
        socks = []
        served = 0
        late = False
        try:
            for _ in range(expected[side] + 1):
                s, ok = _served_within(pair.address(side), 1.0)
                socks.append(s)
                if not ok:
                    break
                served += 1
            # The last connection waits in the backlog; free a slot and it is served.
            socks[0].close()
            last = socks[-1]
            last.settimeout(4)
            try:
                late = last.recv(65536).startswith(b"HTTP/1.1 200")
            except socket.timeout:
                late = False
        finally:
            for s in socks:
                s.close()
        results[side] = (served, late)

    threads = [threading.Thread(target=probe, args=(side,)) for side in ("waitress", "tapster")]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert results["waitress"] == (expected["waitress"], True), (CONNECTION_LIMIT.name, results)
    assert results["tapster"] == (expected["tapster"], True), (CONNECTION_LIMIT.name, results)


def test_channel_timeout(pool: PairPool) -> None:
    """channel_timeout=1 (cleanup_interval=1): an idle keep-alive connection is still
    open shortly after its response and closed by both a few seconds later."""
    pair = pool.get("timeouts")
    results: dict[str, tuple[bool, bool]] = {}

    def probe(side: str) -> None:
        with socket.create_connection(pair.address(side), timeout=5) as s:
            s.sendall(req("/list1"))
            data = b""
            while b"one single item" not in data:
                data += s.recv(65536)
            s.settimeout(0.3)
            try:
                early_closed = s.recv(1) == b""
            except socket.timeout:
                early_closed = False
            s.settimeout(4.5)
            try:
                late_closed = s.recv(1) == b""
            except socket.timeout:
                late_closed = False
            except ConnectionResetError:
                late_closed = True
        results[side] = (early_closed, late_closed)

    threads = [threading.Thread(target=probe, args=(side,)) for side in ("waitress", "tapster")]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert results["waitress"] == (False, True), results
    assert results["tapster"] == results["waitress"], results


def test_threads(pool: PairPool) -> None:
    """threads=1 runs two slow requests one after the other; threads=2 ("named") at
    the same time. Same on both servers."""
    for name, serial in (("threads1", True), ("named", False)):
        pair = pool.get(name)
        elapsed: dict[str, float] = {}
        statuses: dict[str, list[int]] = {}

        def two_at_once(side: str) -> None:
            start = time.monotonic()
            outs: list[ps.Outcome] = []
            ths = [
                threading.Thread(target=lambda: outs.append(run_script(side, pair.address(side), script(req("/sleep?s=0.6")))))
                for _ in range(2)
            ]
            for th in ths:
                th.start()
            for th in ths:
                th.join()
            elapsed[side] = time.monotonic() - start - ps.CLOSE_WAIT
            statuses[side] = [o.responses[0].status if o.responses else -1 for o in outs]

        sides = [threading.Thread(target=two_at_once, args=(side,)) for side in ("waitress", "tapster")]
        for th in sides:
            th.start()
        for th in sides:
            th.join()
        for side in ("waitress", "tapster"):
            assert statuses[side] == [200, 200], (name, side, statuses)
            assert (elapsed[side] >= 1.15) == serial, (name, side, elapsed)


def test_lookahead_disconnect_noticed(pool: PairPool) -> None:
    """channel_request_lookahead=1: the app sees waitress.client_disconnected() turn
    True once the client goes away, on both."""
    pair = pool.get("lookahead")
    for side in ("waitress", "tapster"):
        s = socket.create_connection(pair.address(side))
        s.sendall(req("/wait-disconnect?wait=3&tag=lookahead"))
        time.sleep(0.3)
        s.close()
    for side in ("waitress", "tapster"):
        pair.wait_for_log(side, r"EVENT wait-disconnect lookahead saw=True", timeout=5)


def test_lookahead_half_close(pool: PairPool) -> None:
    """README: with lookahead > 0 Waitress drops the response of a client that
    half-closes after its request; Tapster still delivers it."""
    pair = pool.get("lookahead")
    # The app takes a moment, so that Waitress has read the EOF before the response is
    # ready (with an instant app the outcome is a race in Waitress's I/O loop).
    raw = req("/sleep?s=0.3")
    steps: list[Step] = [Send(raw), ps.ShutWr(), ReadFinal(False, raw)]
    w, t = run_both(pair, steps)
    assert w.responses == [] and w.closed, (HALF_CLOSE.name, w.responses, w.problem)
    assert len(t.responses) == 1 and t.responses[0].status == 200, (HALF_CLOSE.name, t.problem)
    assert t.closed


# ---------------------------------------------------------------------------------------
# Tapster-only: what its README column promises beyond Waitress
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tapster_cidr(pool: PairPool) -> Iterator[dict[str, ServerProcess]]:
    pool.close()
    servers = {
        "list": ServerProcess(
            ps.APP,
            "--trusted-proxy=10.0.0.0/8 127.0.0.1",
            "--trusted-proxy-headers=x-forwarded-for x-forwarded-proto",
        ),
        "cidr-local": ServerProcess(ps.APP, "--trusted-proxy=127.0.0.0/8", "--trusted-proxy-headers=x-forwarded-for"),
        "cidr-other": ServerProcess(ps.APP, "--trusted-proxy=10.0.0.0/8", "--trusted-proxy-headers=x-forwarded-for"),
    }
    yield servers
    for srv in servers.values():
        srv.stop()


def _tapster_environ(srv: ServerProcess, raw: bytes) -> dict[str, Any]:
    out = run_script("tapster", srv.address, script(raw))
    assert out.responses and out.responses[0].status == 200, out.problem
    return json.loads(out.responses[0].body)["environ"]


def test_tapster_trusted_proxy_list_trusts_member(tapster_cidr: dict[str, ServerProcess]) -> None:
    env = _tapster_environ(
        tapster_cidr["list"], req("/echo", headers=[("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-Proto", "https")])
    )
    assert (env["REMOTE_ADDR"], env["REMOTE_HOST"]) == ("203.0.113.9", "203.0.113.9")
    assert env["wsgi.url_scheme"] == "https"
    assert env["HTTP_X_FORWARDED_FOR"] == "203.0.113.9"


def test_tapster_trusted_proxy_cidr_contains_peer(tapster_cidr: dict[str, ServerProcess]) -> None:
    env = _tapster_environ(tapster_cidr["cidr-local"], req("/echo", headers=[("X-Forwarded-For", "198.51.100.4")]))
    assert env["REMOTE_ADDR"] == "198.51.100.4"


def test_tapster_trusted_proxy_cidr_excludes_peer(tapster_cidr: dict[str, ServerProcess]) -> None:
    env = _tapster_environ(
        tapster_cidr["cidr-other"], req("/echo", headers=[("X-Forwarded-For", "198.51.100.4"), ("X-Forwarded-Proto", "https")])
    )
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["wsgi.url_scheme"] == "http"
    assert "HTTP_X_FORWARDED_FOR" not in env and "HTTP_X_FORWARDED_PROTO" not in env


# ---------------------------------------------------------------------------------------
# The normalisations themselves
# ---------------------------------------------------------------------------------------


def test_harness_sees_differences() -> None:
    """The comparison itself: equal outcomes compare equal; a header value, a body
    byte, the close, or an extra environ key each make a difference."""
    pair = ps.ServerPair.__new__(ps.ServerPair)
    pair.name, pair.options = "synthetic", ["--ident=parity"]
    raw = req("/x")
    steps = script(raw)

    def outcome(side: str, **changes: Any) -> ps.Outcome:
        body = json.dumps({"environ": {"PATH_INFO": "/x", **changes.pop("env", {})}}).encode()
        resp = ps.Response("HTTP/1.1", 200, "OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))], body, "content-length")
        resp.headers += changes.pop("headers", [])
        out = ps.Outcome(side, [resp], [[]], changes.pop("closed", False), b"", None, [1], 2)
        assert not changes
        return out

    def problems(**changes: Any) -> list[str]:
        w, t, _ = ps.compare(pair, steps, outcome("waitress"), outcome("tapster", **changes))
        return ps.diff(w.as_dict(), t.as_dict())

    assert problems() == []
    assert problems(headers=[("X-Extra", "1")])
    assert problems(closed=True)
    assert problems(env={"extra.key": "x"})
    assert problems(env={"PATH_INFO": "/y"})
    # tapster.client_disconnected is expected only beside waitress.client_disconnected.
    assert problems(env={"tapster.client_disconnected": "<object>"})


def test_every_normalisation_cites_a_readme_row() -> None:
    rows = ps.readme_rows()
    for norm in ALL_NORMALISATIONS:
        assert norm.readme_row in rows, f"{norm.name}: no README row {norm.readme_row!r}"
    names = [n.name for n in ALL_NORMALISATIONS]
    assert len(names) == len(set(names))


def test_every_readme_row_is_encoded() -> None:
    """Every row of the table is cited by a Normalisation, or listed in NOT_COMPARED
    with the reason this suite does not compare it (and nothing listed is stale)."""
    rows = ps.readme_rows()
    cited = {n.readme_row for n in ALL_NORMALISATIONS}
    missing = [r for r in rows if r not in cited and r not in ps.NOT_COMPARED]
    assert not missing, f"README rows with no Normalisation: {missing}"
    stale = [r for r in ps.NOT_COMPARED if r not in rows or r in cited]
    assert not stale, f"NOT_COMPARED entries that are not (or no longer) uncompared README rows: {stale}"

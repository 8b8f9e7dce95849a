"""HTTP/1.1 request conformance: a table of raw requests and what must happen to each.

Every case is a byte string sent on a new connection, with:

- the statuses expected back, in order (several for pipelined requests);
- for each 2xx response, what the application saw (the /echo route returns the environ
  and the body as JSON): method, PATH_INFO, QUERY_STRING, protocol, HTTP_* keys, body;
- how many times the application must have run (the app counts its calls; /__calls__);
- whether the server must close the connection afterwards.

Rejected requests must also get `Connection: close`, never reach the application, and
nothing sent after them (a pipelined `GET /echo` is appended to each) may be answered.

Each case is fed four ways, like gunicorn's request corpus: all at once, line by line,
byte by byte (short cases only) and split at seeded random points. The outcome must be
the same every time.

The rules tested are RFC 9112 (and RFC 9110 where it applies), narrowed by Tapster's
documented choices (README "Differences from Waitress"; src/http/request.rs, body.rs).
"""

from __future__ import annotations

import json
import random
import re
import socket
import time
import zlib
from dataclasses import dataclass
from typing import Iterator

import pytest

from support import ConnectionClosed, RawConn, Response, ServerProcess

# ---------------------------------------------------------------------------------------
# The data format

# Options of the server that the "limits" cases run against.
LIMIT_LINE = 200  # --max-request-line-size: a longer request line gets 414
LIMIT_HEAD = 2000  # --max-request-header-size: a head of this size or more gets 431
LIMIT_FIELDS = 10  # --max-request-headers: more fields get 431
LIMIT_BODY = 100  # --max-request-body-size: a body (chunked: its wire bytes) of this size or more gets 413
# Fixed limits of the chunked decoder (src/http/body.rs).
MAX_CHUNK_LINE = 4096
MAX_TRAILER_BYTES = 16384

# Appended after every rejected request: it must never be answered or reach the app.
FOLLOW = b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n"


@dataclass(frozen=True)
class Seen:
    """What the application must have seen for one valid request."""

    method: str = "GET"
    path: str = "/echo"
    query: str = ""
    body: bytes = b""
    protocol: str = "HTTP/1.1"
    # environ keys that must have exactly these values (text is latin-1, per PEP 3333)
    env: tuple[tuple[str, str], ...] = (("HTTP_HOST", "t"),)
    # environ keys that must not exist
    absent: tuple[str, ...] = ()


@dataclass(frozen=True)
class Case:
    name: str
    raw: bytes
    statuses: tuple[int, ...]
    # one entry per 2xx response, in order
    seen: tuple[Seen, ...]
    # how many times the application must have run
    calls: int
    # the server must close the connection after the last expected response
    closed: bool
    # "default" or "limits" (the server the case is sent to)
    server: str = "default"
    # sent right after `raw`; for rejected cases it must be ignored
    tail: bytes = b""


def ok(name: str, raw: bytes, *seen: Seen, closed: bool = False, server: str = "default", tail: bytes = b"") -> Case:
    """Valid request(s): each answered 200, each reaching the app."""
    seen = seen or (Seen(),)
    return Case(name, raw, (200,) * len(seen), seen, len(seen), closed, server, tail)


def bad(
    name: str,
    raw: bytes,
    status: int = 400,
    *,
    server: str = "default",
    before: tuple[Seen, ...] = (),
    tail: bytes = FOLLOW,
) -> Case:
    """A rejected request (after `before` valid pipelined ones): `status`, Connection:
    close, the connection closed, the app not called for it, nothing after it served."""
    return Case(name, raw, (200,) * len(before) + (status,), before, len(before), True, server, tail)


def env(**kw: str) -> tuple[tuple[str, str], ...]:
    """environ expectations; HTTP_HOST is 't' unless given."""
    items = {"HTTP_HOST": "t"}
    items.update(kw)
    return tuple((k, v) for k, v in items.items() if v is not None)


# Request builders ----------------------------------------------------------------------

HOST = b"Host: t\r\n"


def get(target: bytes = b"/echo", fields: bytes = b"", version: bytes = b"HTTP/1.1", method: bytes = b"GET") -> bytes:
    return method + b" " + target + b" " + version + b"\r\n" + HOST + fields + b"\r\n"


def post(body: bytes, fields: bytes = b"", cl: bytes | None = None, version: bytes = b"HTTP/1.1") -> bytes:
    cl = str(len(body)).encode() if cl is None else cl
    return b"POST /echo " + version + b"\r\n" + HOST + b"Content-Length: " + cl + b"\r\n" + fields + b"\r\n" + body


def chunked(wire: bytes, fields: bytes = b"", te: bytes = b"chunked") -> bytes:
    return b"POST /echo HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: " + te + b"\r\n" + fields + b"\r\n" + wire


def fields(n: int, prefix: str = "X-F") -> bytes:
    return b"".join(f"{prefix}{i}: v{i}\r\n".encode() for i in range(n))


PAD_BASE = b"GET /echo HTTP/1.1\r\nHost: t\r\nX-Pad: \r\n\r\n"


def head_of_size(size: int) -> bytes:
    """A GET /echo head of exactly `size` bytes (padded with one X-Pad field)."""
    head = b"GET /echo HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"p" * (size - len(PAD_BASE)) + b"\r\n\r\n"
    assert len(head) == size
    return head


def line_of_size(size: int) -> bytes:
    """A request line `GET /echo/aaa... HTTP/1.1` of exactly `size` bytes (without CRLF)."""
    base = b"GET /echo/ HTTP/1.1"
    line = b"GET /echo/" + b"a" * (size - len(base)) + b" HTTP/1.1"
    assert len(line) == size
    return line


def chunk_wire_of_size(size: int) -> bytes:
    """One chunk then the last chunk, `size` wire bytes in all (sizes 16..255 of data)."""
    data_len = size - len(b"00\r\n\r\n0\r\n\r\n")
    assert 16 <= data_len <= 255
    wire = b"%x\r\n" % data_len + b"d" * data_len + b"\r\n0\r\n\r\n"
    assert len(wire) == size
    return wire


CHUNKED_SEEN = Seen(
    "POST", body=b"hello world", env=env(CONTENT_LENGTH="11"), absent=("HTTP_TRANSFER_ENCODING",)
)
CHUNKED_HELLO = Seen("POST", body=b"hello", env=env(CONTENT_LENGTH="5"), absent=("HTTP_TRANSFER_ENCODING",))
HELLO = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"


def post_seen(body: bytes, **kw: str) -> Seen:
    return Seen("POST", body=body, env=env(CONTENT_LENGTH=str(len(body)), **kw))


def chunk_seen(body: bytes, **kw: str) -> Seen:
    return Seen("POST", body=body, env=env(CONTENT_LENGTH=str(len(body)), **kw), absent=("HTTP_TRANSFER_ENCODING",))


# ---------------------------------------------------------------------------------------
# The cases

VALID: list[Case] = [
    # --- request line and target forms
    ok("origin-form", get()),
    ok("origin-root", get(b"/"), Seen(path="/")),
    ok("origin-query", get(b"/echo?a=1&b=two"), Seen(query="a=1&b=two")),
    ok("origin-empty-query", get(b"/echo?"), Seen(query="")),
    ok("origin-percent-decoded-path", get(b"/echo/a%20b%2Fc?x=%20y"), Seen(path="/echo/a b/c", query="x=%20y")),
    ok("origin-percent-latin1", get(b"/echo/caf%E9"), Seen(path="/echo/caf\xe9")),
    ok("origin-fragment-dropped", get(b"/echo?x=1#frag"), Seen(query="x=1")),
    ok("origin-leading-slashes", get(b"//echo//x"), Seen(path="/echo//x")),
    ok("origin-sub-delims", get(b"/echo/!$&'()*+,;=:@-._~?k=v/?"), Seen(path="/echo/!$&'()*+,;=:@-._~", query="k=v/?")),
    # RFC 9112 section 3.2.2: with an absolute-form target, HTTP_HOST is the target's
    # authority, whatever Host said (README differences from Waitress).
    ok("absolute-form-http", get(b"http://example.com/echo?q=1"), Seen(query="q=1", env=(("HTTP_HOST", "example.com"),))),
    ok("absolute-form-https-mixed-case", get(b"HTTPS://Example.COM:8443/echo/x"), Seen(path="/echo/x", env=(("HTTP_HOST", "Example.COM:8443"),))),
    ok("absolute-form-ipv6", get(b"http://[::1]:8080/echo?v=6"), Seen(query="v=6", env=(("HTTP_HOST", "[::1]:8080"),))),
    # RFC 9110 section 4.2.4: userinfo in an http(s) target is treated as an error.
    bad("absolute-form-userinfo", get(b"http://user:pw@example.com/echo")),
    ok("absolute-form-no-path", get(b"http://example.com"), Seen(path="", env=(("HTTP_HOST", "example.com"),))),
    ok("absolute-form-query-only", get(b"http://example.com?q"), Seen(path="", query="q", env=(("HTTP_HOST", "example.com"),))),
    ok("asterisk-options", get(b"*", method=b"OPTIONS"), Seen("OPTIONS", path="*")),
    ok("options-origin-form", get(b"/echo", method=b"OPTIONS"), Seen("OPTIONS")),
    ok("connect-authority", get(b"example.com:443", method=b"CONNECT"), Seen("CONNECT", path="example.com:443")),
    ok("connect-ipv6", get(b"[::1]:8443", method=b"CONNECT"), Seen("CONNECT", path="[::1]:8443")),
    ok("method-put", post(b"x").replace(b"POST", b"PUT", 1), Seen("PUT", body=b"x", env=env(CONTENT_LENGTH="1"))),
    ok("method-delete", get(method=b"DELETE"), Seen("DELETE")),
    ok("method-patch", post(b"p").replace(b"POST", b"PATCH", 1), Seen("PATCH", body=b"p", env=env(CONTENT_LENGTH="1"))),
    ok("method-extension", get(method=b"PROPFIND"), Seen("PROPFIND")),
    ok("method-with-dash", get(method=b"M-SEARCH"), Seen("M-SEARCH")),
    ok("method-all-tchars", get(method=b"!#$%&'*+-.^_`|~09AZ"), Seen("!#$%&'*+-.^_`|~09AZ")),
    # --- versions
    ok("http10", get(version=b"HTTP/1.0"), Seen(protocol="HTTP/1.0"), closed=True),
    ok("http10-no-host", b"GET /echo HTTP/1.0\r\n\r\n", Seen(protocol="HTTP/1.0", env=()), closed=True),
    ok(
        "http10-keep-alive",
        get(version=b"HTTP/1.0", fields=b"Connection: keep-alive\r\n"),
        Seen(protocol="HTTP/1.0", env=env(HTTP_CONNECTION="keep-alive")),
    ),
    ok("http12-served-as-11", get(version=b"HTTP/1.2"), Seen(protocol="HTTP/1.1")),
    ok("http19-served-as-11", get(version=b"HTTP/1.9"), Seen(protocol="HTTP/1.1")),
    ok("http11-connection-close", get(fields=b"Connection: close\r\n"), Seen(env=env(HTTP_CONNECTION="close")), closed=True),
    ok("connection-close-in-list", get(fields=b"Connection: TE, close\r\n"), Seen(env=env(HTTP_CONNECTION="TE, close")), closed=True),
    # --- empty lines before the request line (RFC 9112 section 2.2)
    ok("leading-crlf", b"\r\n" + get()),
    ok("leading-crlfs", b"\r\n\r\n\r\n" + get()),
    ok("leading-many-crlfs", b"\r\n" * 200 + get()),
    # --- header fields
    ok("no-fields-http10", b"GET /echo HTTP/1.0\r\n\r\n", Seen(protocol="HTTP/1.0", env=()), closed=True),
    ok("field-ows-trimmed", get(fields=b"X-A: \t value \t\r\n"), Seen(env=env(HTTP_X_A="value"))),
    ok("field-no-space", get(fields=b"X-A:value\r\n"), Seen(env=env(HTTP_X_A="value"))),
    ok("field-inner-tab", get(fields=b"X-A: a\tb\r\n"), Seen(env=env(HTTP_X_A="a\tb"))),
    ok("field-inner-spaces", get(fields=b"X-A: a   b\r\n"), Seen(env=env(HTTP_X_A="a   b"))),
    ok("field-empty-value", get(fields=b"X-E:\r\n"), Seen(env=env(HTTP_X_E=""))),
    ok("field-whitespace-only-value", get(fields=b"X-E: \t \r\n"), Seen(env=env(HTTP_X_E=""))),
    ok("field-obs-text", get(fields=b"X-L: caf\xe9 \xff\x80\r\n"), Seen(env=env(HTTP_X_L="caf\xe9 \xff\x80"))),
    ok("field-utf8-bytes", get(fields=b"X-U: \xe2\x98\x83\r\n"), Seen(env=env(HTTP_X_U="\xe2\x98\x83"))),
    ok("field-colons-in-value", get(fields=b"X-Url: http://a:b@c:1/d\r\n"), Seen(env=env(HTTP_X_URL="http://a:b@c:1/d"))),
    ok("field-all-vchars", get(fields=b'X-V: !"#$%&\'()*+,-./09:;<=>?@AZ[\\]^_`az{|}~\r\n'),
       Seen(env=env(HTTP_X_V='!"#$%&\'()*+,-./09:;<=>?@AZ[\\]^_`az{|}~'))),
    ok("field-name-all-tchars", get(fields=b"X-!#$%&'*+.^`|~: v\r\n"), Seen(env=env(**{"HTTP_X_!#$%&'*+.^`|~": "v"}))),
    ok("field-name-lowercase", get(fields=b"x-lower: v\r\n"), Seen(env=env(HTTP_X_LOWER="v"))),
    ok("field-host-any-case", b"GET /echo HTTP/1.1\r\nhOsT: t\r\n\r\n"),
    ok("host-empty-value", b"OPTIONS * HTTP/1.1\r\nHost:\r\n\r\n", Seen("OPTIONS", path="*", env=env(HTTP_HOST=""))),
    ok("host-with-port", b"GET /echo HTTP/1.1\r\nHost: example.com:8080\r\n\r\n", Seen(env=env(HTTP_HOST="example.com:8080"))),
    ok("host-ipv6", b"GET /echo HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", Seen(env=env(HTTP_HOST="[::1]:80"))),
    ok("field-repeated-joined", get(fields=b"Accept: a\r\nX-Z: z\r\naccept: b\r\n"), Seen(env=env(HTTP_ACCEPT="a, b", HTTP_X_Z="z"))),
    ok("field-underscore-dropped", get(fields=b"X_Under: evil\r\nX-Under: good\r\n"), Seen(env=env(HTTP_X_UNDER="good"))),
    ok("field-underscore-only-dropped", get(fields=b"X_Only: v\r\n"), Seen(absent=("HTTP_X_ONLY",))),
    ok("field-content-type", get(fields=b"Content-Type: text/plain; charset=x\r\n"),
       Seen(env=env(CONTENT_TYPE="text/plain; charset=x"), absent=("HTTP_CONTENT_TYPE",))),
    ok("many-fields-default-limit", get(fields=fields(99)), Seen(env=env(HTTP_X_F0="v0", HTTP_X_F98="v98"))),
    ok("long-field-value", get(fields=b"X-Long: " + b"L" * 100_000 + b"\r\n"), Seen(env=env(HTTP_X_LONG="L" * 100_000))),
    ok("long-request-line-default-limit", line_of_size(65_536) + b"\r\nHost: t\r\n\r\n",
       Seen(path="/echo/" + "a" * (65_536 - len(b"GET /echo/ HTTP/1.1")))),
    ok("expect-100-continue", post(b"hello", fields=b"Expect: 100-continue\r\n"), post_seen(b"hello", HTTP_EXPECT="100-continue")),
    # --- Content-Length bodies
    ok("cl-body", post(b"hello"), post_seen(b"hello")),
    ok("cl-zero", post(b""), Seen("POST", env=env(CONTENT_LENGTH="0"))),
    ok("cl-leading-zeros", post(b"abcdefg", cl=b"007"), Seen("POST", body=b"abcdefg", env=env(CONTENT_LENGTH="007"))),
    ok("cl-ows", post(b"abc", cl=b"\t3 "), Seen("POST", body=b"abc", env=env(CONTENT_LENGTH="3"))),
    ok("cl-binary-body", post(b"\x00\r\n\xff\n\r"), post_seen(b"\x00\r\n\xff\n\r")),
    ok("cl-body-looks-like-request", post(b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"),
       post_seen(b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n")),
    ok("cl-on-get", get(fields=b"Content-Length: 2\r\n") + b"hi", Seen(body=b"hi", env=env(CONTENT_LENGTH="2"))),
    ok("cl-http10", post(b"old", version=b"HTTP/1.0"), Seen("POST", body=b"old", protocol="HTTP/1.0", env=env(CONTENT_LENGTH="3")), closed=True),
    # --- chunked bodies
    ok("chunked", chunked(HELLO), CHUNKED_SEEN),
    ok("chunked-te-case", chunked(HELLO, te=b"Chunked"), CHUNKED_SEEN),
    ok("chunked-te-tab-ows", chunked(HELLO, te=b"\tchunked\t"), CHUNKED_SEEN),
    ok("chunked-te-empty-list-elements", chunked(HELLO, te=b", chunked,"), CHUNKED_SEEN),
    ok("chunked-empty-body", chunked(b"0\r\n\r\n"), chunk_seen(b"")),
    ok("chunked-uppercase-hex", chunked(b"B\r\nhello world\r\n0\r\n\r\n"), CHUNKED_SEEN),
    ok("chunked-lowercase-hex", chunked(b"b\r\nhello world\r\n0\r\n\r\n"), CHUNKED_SEEN),
    ok("chunked-leading-zeros", chunked(b"0005\r\nhello\r\n06\r\n world\r\n000\r\n\r\n"), CHUNKED_SEEN),
    ok("chunked-16-hex-digits", chunked(b"000000000000000b\r\nhello world\r\n0000000000000000\r\n\r\n"), CHUNKED_SEEN),
    ok("chunked-one-byte-chunks", chunked(b"".join(b"1\r\n%c\r\n" % c for c in b"hello world") + b"0\r\n\r\n"), CHUNKED_SEEN),
    ok("chunked-data-with-crlf", chunked(b"9\r\n0\r\n\r\nab\r\n\r\n0\r\n\r\n"), chunk_seen(b"0\r\n\r\nab\r\n")),
    ok("chunk-ext-name", chunked(b"5;foo\r\nhello\r\n6;bar\r\n world\r\n0\r\n\r\n"), CHUNKED_SEEN),
    ok("chunk-ext-token-value", chunked(b"5;foo=bar\r\nhello\r\n6;a=1;b=2;c\r\n world\r\n0\r\n\r\n"), CHUNKED_SEEN),
    ok("chunk-ext-quoted", chunked(b'5;a="x y;z=\\"q\\" \xe9"\r\nhello\r\n6;b=""\r\n world\r\n0\r\n\r\n'), CHUNKED_SEEN),
    ok("chunk-ext-tchars", chunked(b"5;!#$%&'*+-.^_`|~=!#$%&'*+-.^_`|~\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), CHUNKED_SEEN),
    ok("chunk-ext-on-last-chunk", chunked(b"5\r\nhello\r\n6\r\n world\r\n0;last=yes\r\n\r\n"), CHUNKED_SEEN),
    ok("chunk-ext-longest-line", chunked(b"5;" + b"e" * (MAX_CHUNK_LINE - 4) + b"\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), CHUNKED_SEEN),
    # Extensions are skipped, not judged (RFC 9112 7.1.1 allows names without values
    # and whitespace around ';' and '='): any text without control characters passes.
    ok("chunk-ext-no-name", chunked(b"5;\r\nhello\r\n0\r\n\r\n"), CHUNKED_HELLO),
    ok("chunk-ext-equals-no-name", chunked(b"5;=v\r\nhello\r\n0\r\n\r\n"), CHUNKED_HELLO),
    ok("chunk-ext-equals-no-value", chunked(b"5;a=\r\nhello\r\n0\r\n\r\n"), CHUNKED_HELLO),
    ok("chunk-ext-trailing-semicolon", chunked(b"5;a=b;\r\nhello\r\n0\r\n\r\n"), CHUNKED_HELLO),
    ok("chunk-ext-space-after-semicolon", chunked(b"5; a=b\r\nhello\r\n0\r\n\r\n"), CHUNKED_HELLO),
    ok("chunk-ext-space-around-equals", chunked(b"5;a = b\r\nhello\r\n0\r\n\r\n"), CHUNKED_HELLO),
    ok("chunk-ext-space-in-value", chunked(b"5;a=b c\r\nhello\r\n0\r\n\r\n"), CHUNKED_HELLO),
    ok("chunk-ext-junk-after-quote", chunked(b'5;a="x"y\r\nhello\r\n0\r\n\r\n'), CHUNKED_HELLO),
    ok("chunk-ext-comma", chunked(b"5;a,b\r\nhello\r\n0\r\n\r\n"), CHUNKED_HELLO),
    ok("chunked-trailer", chunked(b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"), CHUNKED_SEEN),
    ok("chunked-trailers-varied", chunked(b"5\r\nhello\r\n6\r\n world\r\n0\r\nA: 1\r\nB:\r\nC:\tx y\xe9\r\nContent-Length: 99\r\n\r\n"),
       CHUNKED_SEEN),
    ok("chunked-largest-trailer-section",
       chunked(HELLO[:-2] + b"X-T: " + b"t" * (MAX_TRAILER_BYTES - len(b"X-T: \r\n\r\n")) + b"\r\n\r\n"), CHUNKED_SEEN),
    ok("chunked-with-expect", chunked(HELLO, fields=b"Expect: 100-continue\r\n"), chunk_seen(b"hello world", HTTP_EXPECT="100-continue")),
    # --- pipelining
    ok("pipelined-gets", get(b"/echo?n=1") + get(b"/echo?n=2") + get(b"/echo?n=3"),
       Seen(query="n=1"), Seen(query="n=2"), Seen(query="n=3")),
    ok("pipelined-bodies", post(b"one") + chunked(HELLO) + post(b"two") + get(),
       post_seen(b"one"), CHUNKED_SEEN, post_seen(b"two"), Seen()),
    ok("pipelined-chunked-trailers-then-get", chunked(HELLO[:-2] + b"T: 1\r\n\r\n") + get(b"/echo?n=2"),
       CHUNKED_SEEN, Seen(query="n=2")),
    ok("underscore-te-is-not-framing", b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer_Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
       b"0\r\n\r\n" + get(b"/echo?n=2"),
       Seen("POST", body=b"0\r\n\r\n", env=env(CONTENT_LENGTH="5"), absent=("HTTP_TRANSFER_ENCODING",)), Seen(query="n=2")),
    ok("pipelined-crlf-between", get(b"/echo?n=1") + b"\r\n" + get(b"/echo?n=2"), Seen(query="n=1"), Seen(query="n=2")),
    ok("pipelined-http10-keep-alive-then-11", get(version=b"HTTP/1.0", fields=b"Connection: keep-alive\r\n") + get(b"/echo?n=2"),
       Seen(protocol="HTTP/1.0", env=env(HTTP_CONNECTION="keep-alive")), Seen(query="n=2")),
    ok("pipelined-close-stops-reading", get(fields=b"Connection: close\r\n") + get(b"/echo?n=2"),
       Seen(env=env(HTTP_CONNECTION="close")), closed=True),
    ok("pipelined-http10-stops-reading", get(version=b"HTTP/1.0") + get(b"/echo?n=2"), Seen(protocol="HTTP/1.0"), closed=True),
    ok("pipelined-after-cl-body-with-request-inside", post(b"GET /x HTTP/1.1\r\n\r\n") + get(b"/echo?n=2"),
       post_seen(b"GET /x HTTP/1.1\r\n\r\n"), Seen(query="n=2")),
    # --- the limits server, just inside every limit
    ok("limit-line-exact", line_of_size(LIMIT_LINE) + b"\r\nHost: t\r\n\r\n",
       Seen(path="/echo/" + "a" * (LIMIT_LINE - len(b"GET /echo/ HTTP/1.1"))), server="limits"),
    ok("limit-head-just-under", head_of_size(LIMIT_HEAD - 1), Seen(env=env(HTTP_X_PAD="p" * (LIMIT_HEAD - 1 - len(PAD_BASE)))), server="limits"),
    ok("limit-fields-exact", get(fields=fields(LIMIT_FIELDS - 1)), Seen(env=env(HTTP_X_F8="v8")), server="limits"),
    ok("limit-body-cl-just-under", post(b"b" * (LIMIT_BODY - 1)), post_seen(b"b" * (LIMIT_BODY - 1)), server="limits"),
    ok("limit-body-chunked-just-under", chunked(chunk_wire_of_size(LIMIT_BODY - 1)),
       chunk_seen(b"d" * (LIMIT_BODY - 1 - 11)), server="limits"),
]

INVALID: list[Case] = [
    # --- line endings: bare CR or LF anywhere in the head (CVE-2019-16785's class)
    bad("lf-only-everywhere", b"GET /echo HTTP/1.1\nHost: t\n\n"),
    bad("lf-only-request-line", b"GET /echo HTTP/1.1\nHost: t\r\n\r\n"),
    bad("lf-only-field-line", b"GET /echo HTTP/1.1\r\nHost: t\nX: y\r\n\r\n"),
    bad("lf-only-final-line", b"GET /echo HTTP/1.1\r\nHost: t\r\n\n"),
    bad("lf-only-refused-before-head-ends", b"GET /echo HTTP/1.1\nHost: t\nX: y\n", tail=b""),
    bad("bare-lf-in-value", b"GET /echo HTTP/1.1\r\nHost: t\r\nX: a\nb\r\n\r\n"),
    bad("bare-cr-in-value", b"GET /echo HTTP/1.1\r\nHost: t\r\nX: a\rb\r\n\r\n"),
    bad("bare-cr-in-target", b"GET /ec\rho HTTP/1.1\r\nHost: t\r\n\r\n"),
    bad("bare-cr-end-of-request-line", b"GET /echo HTTP/1.1\r\rHost: t\r\n\r\n"),
    bad("bare-cr-cr-lf", b"GET /echo HTTP/1.1\r\nHost: t\r\r\n\r\n"),
    bad("bare-cr-in-name", b"GET /echo HTTP/1.1\r\nHost: t\r\nX\r-Y: z\r\n\r\n"),
    bad("leading-bare-lf", b"\nGET /echo HTTP/1.1\r\nHost: t\r\n\r\n"),
    bad("leading-whitespace-line", b"  \r\nGET /echo HTTP/1.1\r\nHost: t\r\n\r\n"),
    bad("leading-bare-cr", b"\rGET /echo HTTP/1.1\r\nHost: t\r\n\r\n"),
    # --- request line
    bad("http09-no-version", b"GET /echo\r\n\r\n"),
    bad("no-target-no-version", b"GET\r\n\r\n"),
    bad("double-space-before-target", b"GET  /echo HTTP/1.1\r\nHost: t\r\n\r\n"),
    bad("double-space-before-version", b"GET /echo  HTTP/1.1\r\nHost: t\r\n\r\n"),
    bad("trailing-space-after-version", b"GET /echo HTTP/1.1 \r\nHost: t\r\n\r\n"),
    bad("leading-space-before-method", b" GET /echo HTTP/1.1\r\nHost: t\r\n\r\n"),
    bad("tab-separators", b"GET\t/echo\tHTTP/1.1\r\nHost: t\r\n\r\n"),
    bad("lowercase-method", b"get /echo HTTP/1.1\r\nHost: t\r\n\r\n"),
    bad("mixed-case-method", b"Get /echo HTTP/1.1\r\nHost: t\r\n\r\n"),
    bad("method-non-token", b"G(T /echo HTTP/1.1\r\nHost: t\r\n\r\n"),
    bad("method-with-colon", b"GET: /echo HTTP/1.1\r\nHost: t\r\n\r\n"),
    bad("method-non-ascii", b"G\xc9T /echo HTTP/1.1\r\nHost: t\r\n\r\n"),
    bad("method-nul", b"G\x00T /echo HTTP/1.1\r\nHost: t\r\n\r\n"),
    bad("version-lowercase", b"GET /echo http/1.1\r\nHost: t\r\n\r\n"),
    bad("version-no-minor", b"GET /echo HTTP/1\r\nHost: t\r\n\r\n"),
    bad("version-letter", b"GET /echo HTTP/1.x\r\nHost: t\r\n\r\n"),
    bad("version-two-digit-major", b"GET /echo HTTP/11.1\r\nHost: t\r\n\r\n"),
    bad("version-two-digit-minor", b"GET /echo HTTP/1.10\r\nHost: t\r\n\r\n"),
    bad("version-extra", b"GET /echo HTTP/1.1.1\r\nHost: t\r\n\r\n"),
    bad("version-garbage", b"GET /echo FOO/1.1\r\nHost: t\r\n\r\n"),
    bad("version-nul", b"GET /echo HTTP/1.1\x00\r\nHost: t\r\n\r\n"),
    bad("method-only", b"GET \r\nHost: t\r\n\r\n"),
    bad("version-space-inside", b"GET /echo HTTP /1.1\r\nHost: t\r\n\r\n"),
    bad("http2-major-only", b"GET /echo HTTP/2\r\nHost: t\r\n\r\n"),
    bad("http20", b"GET /echo HTTP/2.0\r\nHost: t\r\n\r\n", 505),
    bad("http30", b"GET /echo HTTP/3.0\r\nHost: t\r\n\r\n", 505),
    bad("http09-spelled-out", b"GET /echo HTTP/0.9\r\nHost: t\r\n\r\n", 505),
    bad("http99", b"GET /echo HTTP/9.9\r\nHost: t\r\n\r\n", 505),
    bad("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    # --- request target
    bad("target-non-ascii", b"GET /caf\xe9 HTTP/1.1\r\nHost: t\r\n\r\n"),
    bad("target-utf8", b"GET /\xe2\x98\x83 HTTP/1.1\r\nHost: t\r\n\r\n"),
    bad("target-double-slash-non-ascii", b"GET //\xe9 HTTP/1.1\r\nHost: t\r\n\r\n"),
    bad("target-nul", b"GET /one\x00two HTTP/1.1\r\nHost: t\r\n\r\n"),
    bad("target-ctl", b"GET /one\x01two HTTP/1.1\r\nHost: t\r\n\r\n"),
    bad("target-tab", b"GET /one\ttwo HTTP/1.1\r\nHost: t\r\n\r\n"),
    bad("target-del", b"GET /one\x7ftwo HTTP/1.1\r\nHost: t\r\n\r\n"),
    bad("target-relative", b"GET echo HTTP/1.1\r\nHost: t\r\n\r\n"),
    bad("target-query-only", b"GET ?x=1 HTTP/1.1\r\nHost: t\r\n\r\n"),
    bad("asterisk-with-get", b"GET * HTTP/1.1\r\nHost: t\r\n\r\n"),
    bad("asterisk-with-post", b"POST * HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"),
    bad("asterisk-with-connect", b"CONNECT * HTTP/1.1\r\nHost: t\r\n\r\n"),
    bad("asterisk-with-suffix", b"OPTIONS *x HTTP/1.1\r\nHost: t\r\n\r\n"),
    bad("authority-with-get", b"GET example.com:80 HTTP/1.1\r\nHost: t\r\n\r\n"),
    bad("authority-with-options", b"OPTIONS example.com:443 HTTP/1.1\r\nHost: t\r\n\r\n"),
    bad("connect-origin-form", b"CONNECT /echo HTTP/1.1\r\nHost: t\r\n\r\n"),
    bad("connect-no-port", b"CONNECT example.com HTTP/1.1\r\nHost: t\r\n\r\n"),
    bad("connect-empty-port", b"CONNECT example.com: HTTP/1.1\r\nHost: t\r\n\r\n"),
    bad("connect-no-host", b"CONNECT :443 HTTP/1.1\r\nHost: t\r\n\r\n"),
    bad("connect-named-port", b"CONNECT example.com:https HTTP/1.1\r\nHost: t\r\n\r\n"),
    bad("connect-absolute-form", b"CONNECT http://example.com:443 HTTP/1.1\r\nHost: t\r\n\r\n"),
    bad("absolute-ftp", b"GET ftp://example.com/echo HTTP/1.1\r\nHost: t\r\n\r\n"),
    bad("absolute-file", b"GET file:///etc/passwd HTTP/1.1\r\nHost: t\r\n\r\n"),
    bad("absolute-ws", b"GET ws://example.com/echo HTTP/1.1\r\nHost: t\r\n\r\n"),
    bad("absolute-httpx", b"GET httpx://example.com/echo HTTP/1.1\r\nHost: t\r\n\r\n"),
    bad("absolute-http-one-slash", b"GET http:/example.com/echo HTTP/1.1\r\nHost: t\r\n\r\n"),
    bad("absolute-http-empty-authority", b"GET http:///echo HTTP/1.1\r\nHost: t\r\n\r\n"),
    # --- Host (RFC 9112 section 3.2: "A server MUST respond with a 400 (Bad Request) status
    # code to any HTTP/1.1 request message that lacks a Host header field and to any request
    # message that contains more than one Host header field line or a Host header field with
    # an invalid field value.") Tapster rejects duplicates and invalid values; a missing Host
    # is still served, deliberately, as Waitress and Gunicorn do (issue 5 and the README).
    bad("host-duplicate-equal", b"GET /echo HTTP/1.1\r\nHost: t\r\nHost: t\r\n\r\n"),
    bad("host-duplicate-different", b"GET /echo HTTP/1.1\r\nHost: t\r\nhost: evil.example\r\n\r\n"),
    ok("host-missing-http11", b"GET /echo HTTP/1.1\r\nX-A: b\r\n\r\n", Seen(env=(("HTTP_X_A", "b"),), absent=("HTTP_HOST",))),
    bad("host-invalid-value", b"GET /echo HTTP/1.1\r\nHost: exa mple.com\r\n\r\n"),
    bad("host-invalid-slash", b"GET /echo HTTP/1.1\r\nHost: example.com/evil\r\n\r\n"),
    bad("host-invalid-userinfo", b"GET /echo HTTP/1.1\r\nHost: user@example.com\r\n\r\n"),
    ok("host-ipv6-literal-port", b"GET /echo HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", Seen(env=(("HTTP_HOST", "[::1]:8080"),))),
    bad("content-type-duplicate", get(fields=b"Content-Type: a/b\r\nContent-Type: c/d\r\n")),
    # --- field syntax
    bad("space-before-colon", get(fields=b"X-A : b\r\n")),
    bad("tab-before-colon", get(fields=b"X-A\t: b\r\n")),
    bad("space-in-name", get(fields=b"X A: b\r\n")),
    bad("paren-in-name", get(fields=b"X(A): b\r\n")),
    bad("slash-in-name", get(fields=b"X/A: b\r\n")),
    bad("quote-in-name", get(fields=b'X"A: b\r\n')),
    bad("at-in-name", get(fields=b"X@A: b\r\n")),
    bad("brackets-in-name", get(fields=b"[XA]: b\r\n")),
    bad("non-ascii-name", get(fields=b"X\xe9: b\r\n")),
    bad("nul-in-name", get(fields=b"X\x00A: b\r\n")),
    bad("del-in-name", get(fields=b"X\x7fA: b\r\n")),
    bad("empty-name", get(fields=b": b\r\n")),
    bad("no-colon", get(fields=b"X-A b\r\n")),
    bad("nul-in-value", get(fields=b"X-A: a\x00b\r\n")),
    bad("ctl-01-in-value", get(fields=b"X-A: a\x01b\r\n")),
    bad("backspace-in-value", get(fields=b"X-A: a\x08b\r\n")),
    bad("vtab-in-value", get(fields=b"X-A: a\x0bb\r\n")),
    bad("formfeed-in-value", get(fields=b"X-A: a\x0cb\r\n")),
    bad("escape-in-value", get(fields=b"X-A: \x1b[31m\r\n")),
    bad("ctl-1f-in-value", get(fields=b"X-A: a\x1fb\r\n")),
    bad("del-in-value", get(fields=b"X-A: a\x7fb\r\n")),
    bad("obs-fold-space", get(fields=b"X-A: a\r\n b\r\n")),
    bad("obs-fold-tab", get(fields=b"X-A: a\r\n\tb\r\n")),
    bad("whitespace-before-first-field", b"GET /echo HTTP/1.1\r\n Host: t\r\n\r\n"),
    bad("tab-before-first-field", b"GET /echo HTTP/1.1\r\n\tHost: t\r\n\r\n"),
    bad("whitespace-only-line", get(fields=b"   \r\n")),
    # --- Content-Length
    bad("cl-empty", post(b"", cl=b"")),
    bad("cl-letters", post(b"abc", cl=b"abc")),
    bad("cl-plus", post(b"abc", cl=b"+3")),
    bad("cl-minus", post(b"abc", cl=b"-3")),
    bad("cl-hex", post(b"abc", cl=b"0x3")),
    bad("cl-decimal-point", post(b"abc", cl=b"3.0")),
    bad("cl-exponent", post(b"abc", cl=b"3e0")),
    bad("cl-inner-space", post(b"abc", cl=b"3 3")),
    bad("cl-list-equal", post(b"abc", cl=b"3, 3")),
    bad("cl-list-no-space", post(b"abc", cl=b"3,3")),
    bad("cl-fullwidth-digit", post(b"abc", cl=b"\xef\xbc\x93")),
    bad("cl-overflow-u64", post(b"abc", cl=b"18446744073709551616")),
    bad("cl-twenty-digits", post(b"abc", cl=b"00000000000000000003")),
    bad("cl-too-large-but-valid", post(b"abc", cl=b"9999999999999999999"), 413),
    bad("cl-two-headers-equal", post(b"abc", fields=b"Content-Length: 3\r\n")),
    bad("cl-two-headers-different", post(b"abc", fields=b"content-length: 4\r\n")),
    # --- Content-Length with Transfer-Encoding (CL.TE, TE.CL, TE.TE)
    bad("cl-te", b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX"),
    bad("te-cl", b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
        b"1e\r\nGET /smuggled HTTP/1.1\r\nX: y\r\n0\r\n\r\n"),
    bad("te-cl-zero", chunked(HELLO, fields=b"Content-Length: 0\r\n")),
    bad("te-xchunked-cl", chunked(HELLO, te=b"xchunked", fields=b"Content-Length: 5\r\n")),
    bad("te-trailing-space-cl", chunked(HELLO, te=b"chunked ", fields=b"Content-Length: 5\r\n")),
    bad("te-leading-space-cl", chunked(HELLO, te=b" chunked", fields=b"Content-Length: 5\r\n")),
    bad("te-tab-prefixed-cl", chunked(HELLO, te=b"\tchunked", fields=b"Content-Length: 5\r\n")),
    bad("te-space-before-colon-cl", b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n" + HELLO),
    bad("te-name-lowercase-cl", b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-encoding: chunked\r\n\r\n" + HELLO),
    bad("te-uppercase-cl", b"POST /echo HTTP/1.1\r\nHost: t\r\nCONTENT-LENGTH: 5\r\nTRANSFER-ENCODING: CHUNKED\r\n\r\n" + HELLO),
    bad("te-obs-fold", b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: 5\r\n\r\n" + HELLO),
    bad("te-vtab-prefixed", chunked(HELLO, te=b"\x0bchunked")),
    bad("te-chunked-nul", chunked(HELLO, te=b"chunked\x00")),
    bad("te-xchunked", chunked(HELLO, te=b"xchunked"), 501),
    bad("te-chunked-identity", chunked(HELLO, te=b"chunked, identity"), 501),
    bad("te-identity", chunked(HELLO, te=b"identity"), 501),
    bad("te-gzip-chunked", chunked(HELLO, te=b"gzip, chunked"), 501),
    bad("te-chunked-chunked", chunked(HELLO, te=b"chunked, chunked"), 501),
    bad("te-chunked-twice-as-fields", chunked(HELLO, fields=b"Transfer-Encoding: chunked\r\n"), 501),
    bad("te-gzip-then-chunked-fields", b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n" + HELLO, 501),
    bad("te-chunked-with-params", chunked(HELLO, te=b"chunked;q=1"), 501),
    bad("te-empty", chunked(HELLO, te=b"")),
    bad("te-only-commas", chunked(HELLO, te=b" , ,")),
    bad("te-http10", b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n" + HELLO),
    bad("te-http10-identity", b"POST /echo HTTP/1.0\r\nTransfer-Encoding: identity\r\n\r\nabc"),
    # --- chunk sizes
    bad("chunk-size-plus", chunked(b"+5\r\nhello\r\n0\r\n\r\n")),
    bad("chunk-size-0x", chunked(b"0x5\r\nhello\r\n0\r\n\r\n")),
    bad("chunk-size-minus", chunked(b"-5\r\nhello\r\n0\r\n\r\n")),
    bad("chunk-size-leading-space", chunked(b" 5\r\nhello\r\n0\r\n\r\n")),
    bad("chunk-size-trailing-space", chunked(b"5 \r\nhello\r\n0\r\n\r\n")),
    bad("chunk-size-trailing-tab", chunked(b"5\t\r\nhello\r\n0\r\n\r\n")),
    bad("chunk-size-17-digits", chunked(b"00000000000000005\r\nhello\r\n0\r\n\r\n")),
    bad("chunk-size-overflow", chunked(b"10000000000000000\r\nhello\r\n0\r\n\r\n")),
    bad("chunk-size-non-hex", chunked(b"g\r\nhello\r\n0\r\n\r\n")),
    bad("chunk-size-hex-then-junk", chunked(b"5z\r\nhello\r\n0\r\n\r\n")),
    bad("chunk-size-empty-line", chunked(b"\r\n5\r\nhello\r\n0\r\n\r\n")),
    bad("chunk-size-missing-before-ext", chunked(b";a=b\r\nhello\r\n0\r\n\r\n")),
    bad("chunk-size-lf-only", chunked(b"5\nhello\r\n0\r\n\r\n")),
    bad("chunk-size-bare-cr", chunked(b"5\rhello\r\n0\r\n\r\n")),
    bad("chunk-size-line-too-long", chunked(b"5;" + b"e" * (MAX_CHUNK_LINE - 3) + b"\r\nhello\r\n0\r\n\r\n")),
    # --- chunk extensions
    bad("chunk-ext-space-before-semicolon", chunked(b"5 ;a=b\r\nhello\r\n0\r\n\r\n")),
    bad("chunk-ext-bare-lf", chunked(b"5;a\nb\r\nhello\r\n0\r\n\r\n")),
    bad("chunk-ext-bare-cr", chunked(b"5;a\rb\r\nhello\r\n0\r\n\r\n")),
    bad("chunk-ext-lf-terminated", chunked(b"5;a=b\nhello\r\n0\r\n\r\n")),
    bad("chunk-ext-lf-in-quotes", chunked(b'5;a="x\ny"\r\nhello\r\n0\r\n\r\n')),
    bad("chunk-ext-cr-in-quotes", chunked(b'5;a="x\ry"\r\nhello\r\n0\r\n\r\n')),
    # A quoted string left open runs into the CR: refused, not read as the line's end.
    bad("chunk-ext-unterminated-quote", chunked(b'5;a="xy\r\nhello\r\n0\r\n\r\n')),
    bad("chunk-ext-ctl-in-quotes", chunked(b'5;a="\x01"\r\nhello\r\n0\r\n\r\n')),
    bad("chunk-ext-nul-escaped", chunked(b'5;a="\\\x00"\r\nhello\r\n0\r\n\r\n')),
    bad("chunk-ext-del-token", chunked(b"5;a=\x7f\r\nhello\r\n0\r\n\r\n")),
    # --- chunk data and its terminator
    bad("chunk-data-longer-than-size", chunked(b"5\r\nhello!\r\n0\r\n\r\n")),
    bad("chunk-data-shorter-than-size", chunked(b"6\r\nhello\r\n0\r\n\r\n")),
    bad("chunk-data-missing-crlf", chunked(b"5\r\nhello0\r\n\r\n")),
    bad("chunk-data-lf-only", chunked(b"5\r\nhello\n0\r\n\r\n")),
    bad("chunk-data-cr-only", chunked(b"5\r\nhello\r0\r\n\r\n")),
    bad("chunk-data-lf-cr", chunked(b"5\r\nhello\n\r0\r\n\r\n")),
    # --- the last chunk and trailers
    bad("last-chunk-no-final-crlf", chunked(b"5\r\nhello\r\n0\r\n")),
    bad("last-chunk-lf-only-end", chunked(b"5\r\nhello\r\n0\r\n\n")),
    bad("last-chunk-cr-cr", chunked(b"5\r\nhello\r\n0\r\n\r\r")),
    bad("trailer-bad-name", chunked(b"0\r\nBad Name: x\r\n\r\n")),
    bad("trailer-space-before-colon", chunked(b"0\r\nX : x\r\n\r\n")),
    bad("trailer-obs-fold", chunked(b"0\r\nX: a\r\n b\r\n\r\n")),
    bad("trailer-no-colon", chunked(b"0\r\nX\r\n\r\n")),
    bad("trailer-empty-name", chunked(b"0\r\n: x\r\n\r\n")),
    bad("trailer-bare-lf", chunked(b"0\r\nX: a\nb\r\n\r\n")),
    bad("trailer-bare-cr", chunked(b"0\r\nX: a\rb\r\n\r\n")),
    bad("trailer-lf-terminated", chunked(b"0\r\nX: a\n\r\n")),
    bad("trailer-nul", chunked(b"0\r\nX: a\x00b\r\n\r\n")),
    bad("trailer-del", chunked(b"0\r\nX: a\x7fb\r\n\r\n")),
    bad("trailer-section-too-large",
        chunked(b"0\r\nX-T: " + b"t" * (MAX_TRAILER_BYTES - len(b"X-T: \r\n\r\n") + 1) + b"\r\n\r\n")),
    # --- a valid request, then a bad one on the same connection
    bad("pipelined-valid-then-bad-line", get(b"/echo?n=1") + b"GET /echo HTTP/1.1 \r\nHost: t\r\n\r\n", before=(Seen(query="n=1"),)),
    bad("pipelined-valid-then-cl-te", get(b"/echo?n=1") + b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", before=(Seen(query="n=1"),)),
    bad("underscore-cl-is-not-framing", b"POST /echo HTTP/1.1\r\nHost: t\r\nContent_Length: 5\r\n\r\nhello",
        before=(Seen("POST", absent=("CONTENT_LENGTH", "HTTP_CONTENT_LENGTH")),)),
    bad("pipelined-chunked-then-bad-chunk", chunked(HELLO) + chunked(b"5\r\nhello!\r\n0\r\n\r\n"), before=(CHUNKED_SEEN,)),
    # --- sizes: the limits server
    bad("limit-line-over", line_of_size(LIMIT_LINE + 1) + b"\r\nHost: t\r\n\r\n", 414, server="limits"),
    bad("limit-line-over-unterminated", b"GET /" + b"a" * (LIMIT_LINE * 2), 414, server="limits", tail=b""),
    bad("limit-head-exact", head_of_size(LIMIT_HEAD), 431, server="limits"),
    bad("limit-head-unterminated", b"GET /echo HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"p" * LIMIT_HEAD, 431, server="limits", tail=b""),
    bad("limit-head-leading-crlfs", b"\r\n" * (LIMIT_HEAD // 2) + get(), 431, server="limits"),
    bad("limit-fields-over", get(fields=fields(LIMIT_FIELDS)), 431, server="limits"),
    bad("limit-body-cl-exact", post(b"b" * LIMIT_BODY), 413, server="limits"),
    bad("limit-body-cl-expect", post(b"b" * LIMIT_BODY, fields=b"Expect: 100-continue\r\n"), 413, server="limits"),
    bad("limit-body-cl-huge", post(b"b", cl=b"1000000"), 413, server="limits"),
    bad("limit-body-chunked-exact", chunked(chunk_wire_of_size(LIMIT_BODY)), 413, server="limits"),
    bad("limit-body-chunked-many-small", chunked(b"1\r\nx\r\n" * 30 + b"0\r\n\r\n"), 413, server="limits"),
    # --- sizes: the default limits
    bad("default-line-over", line_of_size(65_537) + b"\r\nHost: t\r\n\r\n", 414),
    bad("default-fields-over", get(fields=fields(100)), 431),
    bad("default-head-over", get(fields=b"X-Long: " + b"L" * 262_144 + b"\r\n"), 431),
]

CASES = VALID + INVALID
assert len(CASES) >= 150
assert len({c.name for c in CASES}) == len(CASES), "case names must be unique"

# ---------------------------------------------------------------------------------------
# Feeding

MODES = ("all", "lines", "bytes", "random")
BYTE_MODE_MAX = 400  # byte-by-byte feeding only for inputs up to this size


def pieces(data: bytes, mode: str, seed: int) -> list[bytes]:
    if mode == "all":
        return [data]
    if mode == "lines":
        return re.findall(rb"[^\n]*\n|[^\n]+", data, re.S)
    if mode == "bytes":
        return [data[i : i + 1] for i in range(len(data))]
    rng = random.Random(seed)
    n = rng.randint(1, min(12, max(1, len(data) - 1)))
    cuts = sorted(rng.sample(range(1, len(data)), n)) if len(data) > 1 else []
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def feed(conn: RawConn, data: bytes, mode: str, seed: int) -> None:
    """Sends `data` in pieces, pausing between them so the server sees them apart. A
    server that has already answered and closed may refuse the rest: that is fine."""
    parts = pieces(data, mode, seed)
    pause = {"all": 0.0, "lines": 0.001, "bytes": 0.0002, "random": 0.002}[mode]
    pause = min(pause, 0.2 / len(parts))  # at most 0.2 s of pauses per case
    for i, part in enumerate(parts):
        try:
            conn.send(part)
        except (BrokenPipeError, ConnectionResetError):
            return
        if pause and i + 1 < len(parts):
            time.sleep(pause)


def params() -> Iterator:
    for case in CASES:
        for mode in MODES:
            if mode == "bytes" and len(case.raw) + len(case.tail) > BYTE_MODE_MAX:
                continue
            yield pytest.param(case, mode, id=f"{case.name}-{mode}")


# ---------------------------------------------------------------------------------------
# Servers


@pytest.fixture(scope="module")
def limits_server() -> Iterator[ServerProcess]:
    srv = ServerProcess(
        "apps.behaviors:app",
        f"--max-request-line-size={LIMIT_LINE}",
        f"--max-request-header-size={LIMIT_HEAD}",
        f"--max-request-headers={LIMIT_FIELDS}",
        f"--max-request-body-size={LIMIT_BODY}",
    )
    yield srv
    srv.stop()


def server_for(request: pytest.FixtureRequest, case: Case) -> ServerProcess:
    return request.getfixturevalue("server" if case.server == "default" else "limits_server")


# ---------------------------------------------------------------------------------------
# The test


def read_final(conn: RawConn) -> Response:
    """The next final response, skipping `100 Continue`."""
    while True:
        resp = conn.read_response()
        if resp.status >= 200:
            return resp
        assert resp.status == 100, f"unexpected interim response {resp.raw_head!r}"


def check_seen(resp: Response, seen: Seen, where: str) -> None:
    data = json.loads(resp.body)
    environ, body = data["environ"], data["body"].encode("latin-1")
    observed = {
        "method": environ["REQUEST_METHOD"],
        "path": environ["PATH_INFO"],
        "query": environ["QUERY_STRING"],
        "protocol": environ["SERVER_PROTOCOL"],
        "body": body,
    }
    expected = {
        "method": seen.method,
        "path": seen.path,
        "query": seen.query,
        "protocol": seen.protocol,
        "body": seen.body,
    }
    for key, value in seen.env:
        observed[key] = environ.get(key, "<absent>")
        expected[key] = value
    for key in seen.absent:
        observed[key] = "<present>" if key in environ else "<absent>"
        expected[key] = "<absent>"
    assert observed == expected, f"{where}: the app saw something else"
    assert resp.version == seen.protocol, f"{where}: response version"


@pytest.mark.parametrize("case,mode", list(params()))
def test_request(request: pytest.FixtureRequest, case: Case, mode: str) -> None:
    srv = server_for(request, case)
    before = srv.calls()
    data = case.raw + case.tail
    observed: list[int | str] = []
    responses: list[Response] = []
    with srv.connect(timeout=5.0) as conn:
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        feed(conn, data, mode, zlib.crc32(case.name.encode()))
        for _ in case.statuses:
            try:
                resp = read_final(conn)
            except ConnectionClosed:
                observed.append("closed")
                break
            except socket.timeout:
                observed.append("no response (timeout)")
                break
            observed.append(resp.status)
            responses.append(resp)
        assert observed == list(case.statuses), f"statuses for {data[:300]!r}"

        # What the application saw, for each successful response.
        ok_responses = [r for r in responses if 200 <= r.status < 300]
        assert len(ok_responses) == len(case.seen)
        for i, (resp, seen) in enumerate(zip(ok_responses, case.seen)):
            check_seen(resp, seen, f"response {i + 1}")

        last = responses[-1]
        if last.status >= 400:
            assert last.header("Connection") == "close", "an error response must announce Connection: close"

        if case.closed:
            try:
                rest = conn.read_all(timeout=3.0)
            except AssertionError:
                pytest.fail(f"the server did not close the connection; it sent {conn.buf!r}")
            assert rest == b"", f"something was answered after the last expected response: {rest[:200]!r}"
            after = srv.calls()
        else:
            assert last.header("Connection") != "close", "the server announced close on a keep-alive connection"
            assert conn.buf == b"", f"unexpected bytes after the responses: {conn.buf[:200]!r}"
            # The connection is still usable: ask it how often the app ran.
            conn.send(b"GET /__calls__ HTTP/1.1\r\nHost: t\r\n\r\n")
            follow = conn.read_response()
            assert follow.status == 200 and follow.body.isdigit(), (
                f"an extra response came before the /__calls__ answer: {follow.body[:200]!r}"
            )
            after = int(follow.body)
    assert after - before == case.calls, "times the application ran"


"""`--proxy-protocol`, end to end through the real command line: every connection
starts with a PROXY v1 or v2 header from a `trusted_proxy` peer, which names the
client (REMOTE_ADDR, REMOTE_PORT) and, with v2's SSL TLV, makes `wsgi.url_scheme`
`https`; LOCAL is a plain connection; anything else is closed without a byte of
response, never reaches the application, and is logged (rate-limited)."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import time
from typing import Any, Callable, Iterator

import pytest

import support
from support import RawConn, ServerProcess

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
PROXY, LOCAL = 0x21, 0x20
INET, INET6, UNSPEC, UDP4 = 0x11, 0x21, 0x00, 0x12
TRUSTED = "--trusted-proxy=127.0.0.1,192.0.2.0/24"
REQUEST = b"GET /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
REFUSED = "PROXY protocol: closed the connection from"


# --- building headers ------------------------------------------------------------------


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


def ssl_tlv(client: int = 0x01) -> bytes:
    return tlv(0x20, struct.pack("!BI", client, 0) + tlv(0x21, b"TLSv1.3"))


def v2(command: int, family: int, block: bytes, tlvs: bytes = b"", crc: bool = False, length: int | None = None) -> bytes:
    body = block + tlvs + (tlv(0x03, b"\0" * 4) if crc else b"")
    header = SIG + bytes([command, family]) + struct.pack("!H", len(body) if length is None else length) + body
    if crc:
        header = header[:-4] + struct.pack("!I", crc32c(header))
    return header


def inet4(src: str, sport: int, dst: str, dport: int) -> bytes:
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)


def inet6(src: str, sport: int, dst: str, dport: int) -> bytes:
    pton = lambda a: socket.inet_pton(socket.AF_INET6, a)  # noqa: E731
    return pton(src) + pton(dst) + struct.pack("!HH", sport, dport)


def v1(text: str) -> bytes:
    return f"PROXY {text}\r\n".encode()


LOCAL_HEADER = v2(LOCAL, UNSPEC, b"")


# --- talking to the server -----------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    srv = ServerProcess(
        "apps.behaviors:app", "--proxy-protocol", TRUSTED, "--trusted-proxy-headers=x-forwarded-proto", "--header-timeout=1"
    )
    yield srv
    srv.stop()


def environ_after(srv: ServerProcess, header: bytes, request: bytes = REQUEST) -> tuple[dict[str, Any], RawConn]:
    """The environ /echo saw for `request` sent after `header` in one send."""
    conn = srv.connect()
    conn.send(header + request)
    resp = conn.read_response()
    assert resp.status == 200, resp.body
    return json.loads(resp.body)["environ"], conn


def calls(srv: ServerProcess) -> int:
    """The app's call count, asked over a LOCAL (health-check) connection."""
    with srv.connect() as conn:
        conn.send(LOCAL_HEADER + b"GET /__calls__ HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        return int(conn.read_response().body)


def refusals(srv: ServerProcess) -> list[str]:
    return [line for line in srv.lines() if REFUSED in line]


def assert_closed_unanswered(conn: RawConn, timeout: float = 5.0) -> None:
    data = conn.read_all(timeout)
    assert data == b"", data


# --- accepted headers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "addr", "port"),
    [
        (v1("TCP4 192.0.2.7 198.51.100.1 5555 443"), "192.0.2.7", "5555"),
        (v1("TCP6 2001:db8::7 2001:db8::1 6000 443"), "2001:db8::7", "6000"),
        (v1("TCP6 ::ffff:203.0.113.9 ::ffff:203.0.113.1 7 8"), "203.0.113.9", "7"),
        (v2(PROXY, INET, inet4("203.0.113.5", 40000, "198.51.100.1", 443)), "203.0.113.5", "40000"),
        (v2(PROXY, INET6, inet6("2001:db8::5", 1, "2001:db8::1", 443)), "2001:db8::5", "1"),
        (v2(PROXY, INET, inet4("203.0.113.6", 2, "198.51.100.1", 443), tlv(0x04, b"pad"), crc=True), "203.0.113.6", "2"),
    ],
    ids=["v1-tcp4", "v1-tcp6", "v1-tcp6-mapped", "v2-inet", "v2-inet6", "v2-crc32c"],
)
def test_the_header_names_the_client(server: ServerProcess, header: bytes, addr: str, port: str) -> None:
    env, conn = environ_after(server, header)
    conn.close()
    assert (env["REMOTE_ADDR"], env["REMOTE_HOST"], env["REMOTE_PORT"]) == (addr, addr, port)
    assert env["wsgi.url_scheme"] == "http"


@pytest.mark.parametrize(
    "header",
    [v1("UNKNOWN"), v1("UNKNOWN ffff::1 ffff::2 1 2"), v2(PROXY, UNSPEC, b""), LOCAL_HEADER, v2(LOCAL, INET, inet4("192.0.2.7", 1, "192.0.2.8", 2))],
    ids=["v1-unknown", "v1-unknown-long", "v2-unspec", "v2-local", "v2-local-with-addresses"],
)
def test_unknown_and_local_keep_the_real_peer(server: ServerProcess, header: bytes) -> None:
    conn = server.connect()
    own_port = conn.sock.getsockname()[1]
    conn.send(header + REQUEST)
    env = json.loads(conn.read_response().body)["environ"]
    conn.close()
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("127.0.0.1", str(own_port))


def test_the_ssl_tlv_makes_the_scheme_https(server: ServerProcess) -> None:
    block = inet4("203.0.113.5", 40000, "198.51.100.1", 443)
    env, _ = environ_after(server, v2(PROXY, INET, block, tlv(0x01, b"h2") + ssl_tlv(0x01 | 0x02)))
    assert env["wsgi.url_scheme"] == "https"
    env, _ = environ_after(server, v2(PROXY, INET, block, ssl_tlv(0x02)))
    assert env["wsgi.url_scheme"] == "http"


def test_forwarding_headers_are_trusted_by_the_headers_source(server: ServerProcess) -> None:
    """The client the header names is the peer forwarding-header trust is about: a
    trusted one's X-Forwarded-Proto wins over the SSL TLV, an untrusted one's is
    removed."""
    request = b"GET /echo HTTP/1.1\r\nHost: t\r\nX-Forwarded-Proto: http\r\nConnection: close\r\n\r\n"
    trusted = v2(PROXY, INET, inet4("192.0.2.9", 1, "198.51.100.1", 443), ssl_tlv())
    env, _ = environ_after(server, trusted, request)
    assert env["wsgi.url_scheme"] == "http"
    untrusted = v2(PROXY, INET, inet4("203.0.113.9", 1, "198.51.100.1", 443), ssl_tlv())
    env, _ = environ_after(server, untrusted, request)
    assert env["wsgi.url_scheme"] == "https"
    assert "HTTP_X_FORWARDED_PROTO" not in env


def test_keep_alive_requests_keep_the_headers_client(server: ServerProcess) -> None:
    with server.connect() as conn:
        conn.send(v1("TCP4 192.0.2.7 198.51.100.1 5555 443") + b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n")
        first = json.loads(conn.read_response().body)["environ"]
        conn.send(b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n")
        second = json.loads(conn.read_response().body)["environ"]
        assert not conn.is_closed(0.2)
    assert first["REMOTE_ADDR"] == second["REMOTE_ADDR"] == "192.0.2.7"
    assert first["REMOTE_PORT"] == second["REMOTE_PORT"] == "5555"


def test_pipelined_requests_in_the_headers_send_are_kept(server: ServerProcess) -> None:
    header = v2(PROXY, INET, inet4("203.0.113.5", 40000, "198.51.100.1", 443))
    with server.connect() as conn:
        conn.send(header + b"GET /echo?n=1 HTTP/1.1\r\nHost: t\r\n\r\n" + b"GET /echo?n=2 HTTP/1.1\r\nHost: t\r\n\r\n")
        envs = [json.loads(conn.read_response().body)["environ"] for _ in range(2)]
    assert [e["QUERY_STRING"] for e in envs] == ["n=1", "n=2"]
    assert {e["REMOTE_ADDR"] for e in envs} == {"203.0.113.5"}


@pytest.mark.parametrize(
    "header",
    [v1("TCP4 192.0.2.7 198.51.100.1 5555 443"), v2(PROXY, INET, inet4("192.0.2.7", 5555, "198.51.100.1", 443), ssl_tlv(), crc=True)],
    ids=["v1", "v2"],
)
def test_a_header_split_over_several_sends(server: ServerProcess, header: bytes) -> None:
    with server.connect() as conn:
        for i in range(0, len(header), 7):
            conn.send(header[i : i + 7])
            time.sleep(0.03)
        conn.send(REQUEST)
        env = json.loads(conn.read_response().body)["environ"]
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("192.0.2.7", "5555")


# --- refused connections ---------------------------------------------------------------------

def flip_last(header: bytes) -> bytes:
    return header[:-1] + bytes([header[-1] ^ 1])


GOOD_BLOCK = inet4("192.0.2.7", 5555, "198.51.100.1", 443)

MALFORMED = {
    "plain-http": (REQUEST, "not a PROXY protocol header"),
    "v1-bad-signature": (b"PROXZ TCP4 192.0.2.7 198.51.100.1 5555 443\r\n", "not a PROXY protocol header"),
    "v2-bad-signature": (SIG[:-1] + b"X\x21\x11\x00\x0c" + GOOD_BLOCK, "not a PROXY protocol header"),
    "v1-bare-lf": (b"PROXY TCP4 192.0.2.7 198.51.100.1 5555 443\n", "does not end in CRLF"),
    "v1-double-space": (v1("TCP4 192.0.2.7  198.51.100.1 5555 443"), "two addresses and two ports"),
    "v1-bad-protocol": (v1("UDP4 192.0.2.7 198.51.100.1 5555 443"), "not TCP4, TCP6 or UNKNOWN"),
    "v1-family-mismatch": (v1("TCP4 192.0.2.7 2001:db8::1 5555 443"), "not of the family named"),
    "v1-tcp6-with-ipv4": (v1("TCP6 192.0.2.7 198.51.100.1 5555 443"), "not of the family named"),
    "v1-port-too-big": (v1("TCP4 192.0.2.7 198.51.100.1 65536 443"), "not a decimal number"),
    "v1-port-leading-zero": (v1("TCP4 192.0.2.7 198.51.100.1 5555 0443"), "not a decimal number"),
    "v1-port-negative": (v1("TCP4 192.0.2.7 198.51.100.1 -1 443"), "not a decimal number"),
    "v1-too-long": (b"PROXY UNKNOWN " + b"f" * 100 + b"\r\n", "too long"),
    "v2-too-long": (v2(PROXY, INET, GOOD_BLOCK, tlv(0x04, b"\0" * 5000)), "too long"),
    "v2-version-1": (SIG + b"\x11\x11\x00\x0c" + GOOD_BLOCK, "version is not 2"),
    "v2-bad-command": (v2(0x22, INET, GOOD_BLOCK), "neither LOCAL nor PROXY"),
    "v2-dgram": (v2(PROXY, UDP4, GOOD_BLOCK), "datagram"),
    "v2-bad-family": (v2(PROXY, 0x41, GOOD_BLOCK), "family or transport is invalid"),
    "v2-wrong-length": (v2(PROXY, INET, GOOD_BLOCK[:11]), "too short for its addresses"),
    "v2-family-mismatch": (v2(PROXY, INET6, GOOD_BLOCK), "too short for its addresses"),
    "v2-tlv-overrun": (v2(PROXY, INET, GOOD_BLOCK, b"\x04\x00\x09abc"), "runs past the end"),
    "v2-ssl-tlv-short": (v2(PROXY, INET, GOOD_BLOCK, tlv(0x20, b"\x01\0\0")), "SSL TLV is malformed"),
    "v2-bad-crc32c": (flip_last(v2(PROXY, INET, GOOD_BLOCK, crc=True)), "CRC32C"),
}


def start(make_server: Callable[..., ServerProcess], *args: str, **kw: Any) -> ServerProcess:
    return make_server("--proxy-protocol", "--header-timeout=1", *args, **kw)


@pytest.mark.parametrize(("sent", "reason"), MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_header_is_refused_unanswered_and_logged(
    make_server: Callable[..., ServerProcess], sent: bytes, reason: str
) -> None:
    srv = start(make_server, TRUSTED)
    before = calls(srv)
    with srv.connect() as conn:
        conn.send(sent + REQUEST)
        assert_closed_unanswered(conn)
    line = srv.wait_for_log(REFUSED)
    assert "from 127.0.0.1:" in line and reason in line and "WARNING" in line, line
    assert calls(srv) == before
    # The server goes on serving.
    env, _ = environ_after(srv, v1("TCP4 192.0.2.7 198.51.100.1 5555 443"))
    assert env["REMOTE_ADDR"] == "192.0.2.7"


@pytest.mark.parametrize(
    "sent",
    [b"", b"PROXY TCP4 192.0.2.7 ", SIG + b"\x21\x11\x00\x0c" + GOOD_BLOCK[:5]],
    ids=["nothing", "v1-truncated", "v2-truncated"],
)
def test_a_missing_or_truncated_header_is_refused_after_header_timeout(
    make_server: Callable[..., ServerProcess], sent: bytes
) -> None:
    srv = start(make_server, TRUSTED)
    with srv.connect() as conn:
        conn.send(sent)
        assert not conn.is_closed(0.5), "closed before header_timeout"
        assert_closed_unanswered(conn)
    line = srv.wait_for_log(REFUSED)
    assert "no complete PROXY header within header_timeout" in line, line
    assert calls(srv) == 0


def test_an_untrusted_peer_is_closed_before_its_header_is_read(make_server: Callable[..., ServerProcess]) -> None:
    srv = start(make_server, "--trusted-proxy=10.9.9.9")
    with srv.connect() as conn:
        conn.send(v1("TCP4 192.0.2.7 198.51.100.1 5555 443") + REQUEST)
        assert_closed_unanswered(conn)
    line = srv.wait_for_log(REFUSED)
    assert "from 127.0.0.1:" in line and "not a trusted_proxy" in line and "WARNING" in line, line
    assert "192.0.2.7" not in line


def test_refusals_are_rate_limited_in_the_log(make_server: Callable[..., ServerProcess]) -> None:
    srv = start(make_server, TRUSTED)
    for _ in range(30):
        with srv.connect() as conn:
            conn.send(b"GET / HTTP/1.1\r\n\r\n")
            assert_closed_unanswered(conn)
    srv.wait_for_log(REFUSED)
    time.sleep(0.3)
    assert len(refusals(srv)) == 1, refusals(srv)
    time.sleep(5)
    with srv.connect() as conn:
        conn.send(b"BAD")
        assert_closed_unanswered(conn)
    line = srv.wait_for_log("29 more since the last report")
    assert len(refusals(srv)) == 2 and REFUSED in line, refusals(srv)


# --- Unix sockets, the default, the configuration ---------------------------------------------


def unix_connect(path: str) -> RawConn:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(path)
    return RawConn(sock)


def test_a_unix_listener_trusts_localhost(make_server: Callable[..., ServerProcess], tmp_path: Any) -> None:
    path = str(tmp_path / "pp.sock")
    srv = start(make_server, "--trusted-proxy=localhost", f"--unix-socket={path}", listen=None)
    with unix_connect(path) as conn:
        conn.send(v2(PROXY, INET, inet4("203.0.113.5", 40000, "198.51.100.1", 443), ssl_tlv()) + REQUEST)
        env = json.loads(conn.read_response().body)["environ"]
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"], env["wsgi.url_scheme"]) == ("203.0.113.5", "40000", "https")
    with unix_connect(path) as conn:
        conn.send(LOCAL_HEADER + REQUEST)
        env = json.loads(conn.read_response().body)["environ"]
    assert env["REMOTE_ADDR"] == "localhost"
    with unix_connect(path) as conn:
        conn.send(REQUEST)
        assert_closed_unanswered(conn)
    assert "from localhost (Unix socket)" in srv.wait_for_log(REFUSED)


def test_a_unix_listener_without_localhost_trusts_nobody_there(make_server: Callable[..., ServerProcess], tmp_path: Any) -> None:
    path = str(tmp_path / "pp.sock")
    srv = start(make_server, "--trusted-proxy=127.0.0.1", f"--unix-socket={path}", listen=None)
    with unix_connect(path) as conn:
        conn.send(LOCAL_HEADER + REQUEST)
        assert_closed_unanswered(conn)
    assert "not a trusted_proxy" in srv.wait_for_log(REFUSED)


def test_off_by_default_a_proxy_line_is_not_http(make_server: Callable[..., ServerProcess]) -> None:
    srv = make_server("--trusted-proxy=127.0.0.1")
    with srv.connect() as conn:
        conn.send(v1("TCP4 192.0.2.7 198.51.100.1 5555 443") + REQUEST)
        assert conn.read_response().status == 400
    assert not refusals(srv)


def test_proxy_protocol_needs_trusted_proxy() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tapster", "--listen=127.0.0.1:0", "--proxy-protocol", "apps.behaviors:app"],
        cwd=support.TESTS_DIR,
        env=support.tests_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Error: " in proc.stderr and "proxy_protocol needs trusted_proxy" in proc.stderr, proc.stderr
    assert proc.stderr.count("Error: ") == 1

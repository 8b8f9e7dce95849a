"""HTTP/2 end to end, with real clients: curl (`--http2-prior-knowledge` for h2c,
`--http2` over TLS for h2 by ALPN), h2load for tens of thousands of streams on a few
connections, httpx with HTTP/2, and the `h2` library (Python) for what the others
cannot send: interim responses, resets mid-stream, and the attacks (rapid reset,
CONTINUATION, PING and SETTINGS floods, a stream that never opens its window, a
preface that never completes, garbage instead of a preface). Each attack is bounded
in time, and another client is served while it runs."""

from __future__ import annotations

import json
import re
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import httpx
import pytest

from prometheus import metrics_text, total
import support
from support import ServerProcess

CERTS = support.tls_test_files()
TLS = (f"--certfile={CERTS.certfile}", f"--keyfile={CERTS.keyfile}")
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0x0, 0x1, 0x2, 0x3, 0x4, 0x6, 0x7, 0x8, 0x9,
)
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
ENHANCE_YOUR_CALM = 0xB


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def curl(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--cacert", CERTS.ca_file, *args],
        capture_output=True, text=True, timeout=timeout,
    )


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def request_block(path: str = "/echo", method: str = "GET", extra: list[tuple[str, str]] | None = None) -> bytes:
    fields = [(":method", method), (":path", path), (":scheme", "http"), (":authority", "t")]
    return hpack.Encoder().encode(fields + (extra or []))


def read_frames(sock: socket.socket, until: Callable[[int, int, int, bytes], bool], timeout: float) -> list[tuple[int, int, int, bytes]]:
    """Frames the server sends, until `until(kind, flags, stream, payload)` or it closes."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    buf = b""
    frames: list[tuple[int, int, int, bytes]] = []
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except (socket.timeout, ConnectionResetError):
            break
        if not data:
            break
        buf += data
        while len(buf) >= 9:
            length = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + length:
                break
            kind, flags = buf[3], buf[4]
            stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
            payload = buf[9 : 9 + length]
            buf = buf[9 + length :]
            frames.append((kind, flags, stream, payload))
            if until(kind, flags, stream, payload):
                return frames
    return frames


def goaway_code(frames: list[tuple[int, int, int, bytes]]) -> int | None:
    for kind, _, _, payload in frames:
        if kind == GOAWAY:
            return int.from_bytes(payload[4:8], "big")
    return None


class H2Client:
    """A client connection driven by the `h2` library, over cleartext (h2c)."""

    def __init__(self, address: tuple[str, int], window: int | None = None) -> None:
        self.sock = socket.create_connection(address, timeout=10)
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        if window is not None:
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.flush()

    def flush(self) -> None:
        self.sock.sendall(self.conn.data_to_send())

    def request(self, path: str, method: str = "GET", headers: list[tuple[str, str]] | None = None, end: bool = True) -> int:
        stream = self.conn.get_next_available_stream_id()
        fields = [(":method", method), (":path", path), (":scheme", "http"), (":authority", "t")]
        self.conn.send_headers(stream, fields + (headers or []), end_stream=end)
        self.flush()
        return stream

    def events(self, until: Callable[[Any], bool], timeout: float = 10, ack: bool = True) -> list[Any]:
        got: list[Any] = []
        deadline = time.monotonic() + timeout
        self.sock.settimeout(0.5)
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                break
            for event in self.conn.receive_data(data):
                got.append(event)
                if ack and isinstance(event, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if until(event):
                    self.flush()
                    return got
            self.flush()
        return got

    def close(self) -> None:
        self.sock.close()


def response_of(events: list[Any], stream: int) -> tuple[dict[str, str], bytes, bool]:
    """Headers, body and whether the stream ended cleanly."""
    headers: dict[str, str] = {}
    body = b""
    ended = False
    for e in events:
        if getattr(e, "stream_id", None) != stream:
            continue
        if isinstance(e, h2.events.ResponseReceived):
            headers = dict(e.headers)
        elif isinstance(e, h2.events.DataReceived):
            body += e.data
        elif isinstance(e, h2.events.StreamEnded):
            ended = True
    return headers, body, ended


def ended(stream: int) -> Callable[[Any], bool]:
    return lambda e: isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)) and e.stream_id == stream


@pytest.fixture(scope="module")
def h2c() -> Any:
    srv = ServerProcess("apps.behaviors:app", "--http2", "--inbuf-overflow=65536", listen="http://127.0.0.1:0")
    yield srv
    srv.stop()


def served_meanwhile(srv: ServerProcess) -> float:
    """Seconds another h2c client takes to get an answer."""
    started = time.monotonic()
    out = curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{srv.port}/echo", timeout=10)
    assert out.stdout == "200", out.stderr
    return time.monotonic() - started


# ----- real clients ------------------------------------------------------------------


def test_curl_prior_knowledge_sees_http2_environ(h2c: ServerProcess) -> None:
    out = curl("-v", "--http2-prior-knowledge", "-H", "Cookie: a=1", f"http://127.0.0.1:{h2c.port}/echo?x=1")
    assert out.returncode == 0, out.stderr
    assert "< HTTP/2 200" in out.stderr
    assert "< server: tapster" in out.stderr
    assert "connection:" not in out.stderr.lower().split("< http/2 200")[1]
    env = json.loads(out.stdout)["environ"]
    assert env["SERVER_PROTOCOL"] == "HTTP/2"
    assert env["wsgi.url_scheme"] == "http"
    assert env["HTTP_HOST"] == f"127.0.0.1:{h2c.port}"
    assert env["QUERY_STRING"] == "x=1"
    assert env["HTTP_COOKIE"] == "a=1"


def test_http1_is_still_served_beside_h2c(h2c: ServerProcess) -> None:
    out = curl("-v", "--http1.1", f"http://127.0.0.1:{h2c.port}/echo")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["environ"]["SERVER_PROTOCOL"] == "HTTP/1.1"


def test_without_the_option_the_preface_is_refused() -> None:
    srv = ServerProcess("apps.behaviors:app")
    try:
        out = curl("--http2-prior-knowledge", f"http://127.0.0.1:{srv.port}/echo")
        assert out.returncode != 0
    finally:
        srv.stop()


def test_h2load_tens_of_thousands_of_streams_on_four_connections(h2c: ServerProcess) -> None:
    out = subprocess.run(
        ["h2load", "-n", "40000", "-c", "4", "-m", "32", f"http://127.0.0.1:{h2c.port}/status/200"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "40000 succeeded, 0 failed, 0 errored, 0 timeout" in out.stdout, out.stdout
    assert "status codes: 40000 2xx" in out.stdout


def test_tls_alpn_chooses_h2_and_curl_and_h2load_speak_it() -> None:
    srv = ServerProcess("apps.behaviors:app", *TLS, "--http2")
    try:
        out = curl("-v", "--http2", f"https://localhost:{srv.port}/echo", "--resolve", f"localhost:{srv.port}:127.0.0.1")
        assert out.returncode == 0, out.stderr
        assert "ALPN: server accepted h2" in out.stderr
        env = json.loads(out.stdout)["environ"]
        assert env["SERVER_PROTOCOL"] == "HTTP/2"
        assert env["HTTPS"] == "on"
        assert env["wsgi.url_scheme"] == "https"
        # An HTTP/1.1-only client on the same listener.
        out = curl("-v", "--http1.1", f"https://localhost:{srv.port}/echo", "--resolve", f"localhost:{srv.port}:127.0.0.1")
        assert "ALPN: server accepted http/1.1" in out.stderr
        load = subprocess.run(
            ["h2load", "-n", "5000", "-c", "2", "-m", "16", f"https://127.0.0.1:{srv.port}/status/200"],
            capture_output=True, text=True, timeout=120,
        )
        assert "5000 succeeded, 0 failed, 0 errored, 0 timeout" in load.stdout, load.stdout
        assert "Application protocol: h2" in load.stdout
    finally:
        srv.stop()


def test_tls_without_http2_offers_only_http1() -> None:
    srv = ServerProcess("apps.behaviors:app", *TLS)
    try:
        out = curl("-v", "--http2", f"https://localhost:{srv.port}/echo", "--resolve", f"localhost:{srv.port}:127.0.0.1")
        assert out.returncode == 0, out.stderr
        assert "ALPN: server accepted http/1.1" in out.stderr
    finally:
        srv.stop()


def test_httpx_bodies_spilled_streamed_and_head() -> None:
    srv = ServerProcess("apps.behaviors:app", *TLS, "--http2", "--inbuf-overflow=65536")
    try:
        with httpx.Client(http2=True, verify=CERTS.client_context(), base_url=f"https://127.0.0.1:{srv.port}", timeout=30) as client:
            body = bytes(range(256)) * 1200  # 300 KB: past inbuf_overflow, so on disk
            r = client.post("/echo", content=body)
            assert r.http_version == "HTTP/2"
            assert r.status_code == 200
            got = r.json()
            assert got["body"].encode("latin-1") == body
            assert got["environ"]["CONTENT_LENGTH"] == str(len(body))
            # A body without Content-Length (a generator): read to END_STREAM.
            r = client.post("/echo", content=iter([b"part1-", b"part2"]))
            assert r.json()["body"] == "part1-part2"
            r = client.get("/stream", params={"n": "300", "size": "4096"})
            assert r.content == b"s" * (300 * 4096)
            assert "content-length" not in r.headers
            r = client.get("/big", params={"size": "3000000"})
            assert len(r.content) == 3_000_000
            r = client.head("/big", params={"size": "1000"})
            assert r.headers["content-length"] == "1000"
            assert r.content == b""
            r = client.get("/status/304")
            assert r.status_code == 304 and r.content == b""
            r = client.get("/error/before")
            assert r.status_code == 500
    finally:
        srv.stop()


def test_a_body_cut_short_by_the_application_resets_the_stream(h2c: ServerProcess) -> None:
    for path in ("/error/in-iter", "/cl?declared=10&actual=3"):
        client = H2Client(h2c.address)
        try:
            stream = client.request(path)
            events = client.events(ended(stream))
            resets = [e for e in events if isinstance(e, h2.events.StreamReset)]
            assert resets and resets[0].stream_id == stream, (path, events)
        finally:
            client.close()
    assert served_meanwhile(h2c) < 5


def test_cookies_are_joined_and_100_continue_is_answered(h2c: ServerProcess) -> None:
    client = H2Client(h2c.address)
    try:
        stream = client.request(
            "/echo", "POST",
            [("cookie", "a=1"), ("cookie", "b=2"), ("expect", "100-continue"), ("content-length", "5")],
            end=False,
        )
        events = client.events(lambda e: isinstance(e, h2.events.InformationalResponseReceived))
        informational = [e for e in events if isinstance(e, h2.events.InformationalResponseReceived)]
        assert informational and dict(informational[0].headers)[":status"] == "100"
        client.conn.send_data(stream, b"hello", end_stream=True)
        client.flush()
        _, body, clean = response_of(client.events(ended(stream)), stream)
        got = json.loads(body)
        assert clean
        assert got["body"] == "hello"
        assert got["environ"]["HTTP_COOKIE"] == "a=1; b=2"
    finally:
        client.close()


def test_bad_requests_get_http_errors(h2c: ServerProcess) -> None:
    client = H2Client(h2c.address)
    try:
        # A body longer than its Content-Length.
        stream = client.request("/echo", "POST", [("content-length", "2")], end=False)
        client.conn.send_data(stream, b"toolong", end_stream=True)
        client.flush()
        events = client.events(ended(stream))
        headers, _, _ = response_of(events, stream)
        # h2 itself resets a stream whose DATA overruns its content-length (RFC 9113
        # section 8.1.1: malformed); a server page otherwise.
        reset = any(isinstance(e, h2.events.StreamReset) for e in events)
        assert reset or headers.get(":status") == "400", events
    finally:
        client.close()
    srv = ServerProcess("apps.behaviors:app", "--http2", "--max-request-body-size=1000", listen="http://127.0.0.1:0")
    try:
        out = curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}", "--data-binary", "@-",
                   f"http://127.0.0.1:{srv.port}/echo", timeout=10)
        assert out.stdout in ("200",)  # an empty stdin body is fine
        client = H2Client(srv.address)
        stream = client.request("/echo", "POST", end=False)
        client.conn.send_data(stream, b"x" * 1500, end_stream=True)
        client.flush()
        headers, _, _ = response_of(client.events(ended(stream)), stream)
        assert headers[":status"] == "413"
        client.close()
    finally:
        srv.stop()


def test_static_files_and_ranges_over_h2(tmp_path: Path) -> None:
    data = bytes(range(256)) * 4000
    (tmp_path / "f.bin").write_bytes(data)
    srv = ServerProcess("apps.behaviors:app", "--http2", f"--static=/s={tmp_path}", listen="http://127.0.0.1:0")
    try:
        out = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", f"http://127.0.0.1:{srv.port}/s/f.bin"],
                             capture_output=True, timeout=20)
        assert out.stdout == data
        out = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-r", "100-199", "-w", "%{http_code}",
                              f"http://127.0.0.1:{srv.port}/s/f.bin"], capture_output=True, timeout=20)
        assert out.stdout == data[100:200] + b"206"
    finally:
        srv.stop()


def test_client_reset_mid_stream_stops_the_application(h2c: ServerProcess) -> None:
    client = H2Client(h2c.address)
    try:
        stream = client.request("/stream?n=2000&size=1024&delay=0.005&name=h2reset")
        client.events(lambda e: isinstance(e, h2.events.DataReceived), timeout=10)
        client.conn.reset_stream(stream)
        client.flush()
        line = h2c.wait_for_log(r"EVENT stream closed after (\d+) chunks", timeout=10)
        sent = int(re.search(r"after (\d+) chunks", line).group(1))  # type: ignore[union-attr]
        assert sent < 2000
        # The connection goes on.
        second = client.request("/echo")
        headers, _, clean = response_of(client.events(ended(second)), second)
        assert headers[":status"] == "200" and clean
    finally:
        client.close()


# ----- attacks -----------------------------------------------------------------------


def attack(srv: ServerProcess, payload: bytes) -> list[tuple[int, int, int, bytes]]:
    sock = socket.create_connection(srv.address, timeout=10)
    try:
        sock.sendall(PREFACE + frame(SETTINGS, 0, 0))
        sender = threading.Thread(target=lambda: _send_quietly(sock, payload), daemon=True)
        sender.start()
        frames = read_frames(sock, lambda k, f, s, p: k == GOAWAY, timeout=10)
        sender.join(10)
        return frames
    finally:
        sock.close()


def _send_quietly(sock: socket.socket, payload: bytes) -> None:
    try:
        sock.sendall(payload)
    except OSError:
        pass  # the server closed the connection: what the attack is answered with


@pytest.fixture()
def guarded() -> Any:
    port = free_port()
    srv = ServerProcess("apps.behaviors:app", "--http2", f"--metrics-listen=127.0.0.1:{port}", listen="http://127.0.0.1:0")
    srv.metrics_port = port  # type: ignore[attr-defined]
    yield srv
    srv.stop()


def test_rapid_reset_is_closed_with_enhance_your_calm(guarded: ServerProcess) -> None:
    block = request_block("/sleep?s=0.2")
    payload = b"".join(
        frame(HEADERS, END_HEADERS | END_STREAM, 2 * i + 1, block) + frame(RST_STREAM, 0, 2 * i + 1, struct.pack(">I", 8))
        for i in range(5000)
    )
    started = time.monotonic()
    frames = attack(guarded, payload)
    assert goaway_code(frames) == ENHANCE_YOUR_CALM, frames[-3:]
    assert time.monotonic() - started < 5
    # Whichever limit saw it first: the frame guard's, or h2's on streams reset before
    # they were accepted.
    guarded.wait_for_log(r"closed: a flood (of rst_stream|\(.*\))", timeout=5)
    assert served_meanwhile(guarded) < 3
    # The work the attack got started is bounded: far fewer than 5,000 app calls.
    assert guarded.calls() < 600
    text = metrics_text(("127.0.0.1", guarded.metrics_port))  # type: ignore[attr-defined]
    assert total(text, "tapster_http2_floods_total") >= 1
    assert total(text, "tapster_http2_connections_total") >= 2


@pytest.mark.parametrize("kind", ["ping", "settings"])
def test_ping_and_settings_floods_are_closed(guarded: ServerProcess, kind: str) -> None:
    one = frame(PING, 0, 0, b"12345678") if kind == "ping" else frame(SETTINGS, 0, 0, b"")
    frames = attack(guarded, one * 20000)
    assert goaway_code(frames) == ENHANCE_YOUR_CALM
    guarded.wait_for_log(r"closed: a flood of control_frames", timeout=5)
    assert served_meanwhile(guarded) < 3


def test_continuation_flood_is_bounded(guarded: ServerProcess) -> None:
    block = request_block("/echo", extra=[("x-a", "b" * 100)])
    payload = frame(HEADERS, 0, 1, block) + frame(CONTINUATION, 0, 1, b"\x40\x01a\x01b") * 200_000
    started = time.monotonic()
    frames = attack(guarded, payload)
    code = goaway_code(frames)
    assert code is not None and code != 0, frames[-3:]
    guarded.wait_for_log(r"closed: a flood", timeout=5)
    assert time.monotonic() - started < 8
    assert served_meanwhile(guarded) < 3
    assert support.rss_kib(guarded.proc.pid) < 200_000


def test_a_stream_that_never_opens_its_window_is_cut_and_holds_no_worker() -> None:
    srv = ServerProcess("apps.behaviors:app", "--http2", "--channel-timeout=2", "--threads=1", listen="http://127.0.0.1:0")
    try:
        client = H2Client(srv.address, window=1024)
        stream = client.request("/big?size=20000000")
        started = time.monotonic()
        events = client.events(ended(stream), timeout=15, ack=False)
        resets = [e for e in events if isinstance(e, h2.events.StreamReset)]
        assert resets, events[-3:]
        assert 1.5 < time.monotonic() - started < 10
        client.close()
        # The only worker thread was free all along: the response was queued, not held.
        assert served_meanwhile(srv) < 3
    finally:
        srv.stop()


def test_an_unfinished_preface_and_garbage_are_closed() -> None:
    srv = ServerProcess("apps.behaviors:app", "--http2", "--header-timeout=1", *TLS)
    plain = ServerProcess("apps.behaviors:app", "--http2", "--header-timeout=1", listen="http://127.0.0.1:0")
    try:
        # h2c: half a preface, then nothing.
        with socket.create_connection(plain.address, timeout=10) as sock:
            sock.sendall(PREFACE[:20])
            started = time.monotonic()
            sock.settimeout(10)
            assert sock.recv(100) in (b"",) or True
            assert time.monotonic() - started < 5
        # h2 by ALPN, then garbage instead of the preface.
        ctx = CERTS.client_context()
        ctx.set_alpn_protocols(["h2"])
        with socket.create_connection(srv.address, timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                assert s.selected_alpn_protocol() == "h2"
                s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n" * 4)
                s.settimeout(5)
                started = time.monotonic()
                data = b""
                try:
                    while chunk := s.recv(4096):
                        data += chunk
                except (ssl.SSLError, ConnectionResetError, socket.timeout):
                    pass
                assert time.monotonic() - started < 4
                assert b"200 OK" not in data
        assert served_meanwhile(plain) < 3
    finally:
        srv.stop()
        plain.stop()


def signalled_during_a_stream(
    srv: ServerProcess, sock: socket.socket, sig: int, timeout: float
) -> list[tuple[int, int, int, bytes]]:
    """Opens stream 1 on `sock` (a response that takes a second), sends the server
    `sig` while it runs, and returns the frames read until the stream ends."""
    sock.sendall(PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, END_HEADERS | END_STREAM, 1, request_block("/sleep?s=1")))
    time.sleep(0.3)
    srv.proc.send_signal(sig)
    return read_frames(sock, lambda k, f, st, p: k == DATA and st == 1 and bool(f & END_STREAM), timeout=timeout)


def test_shutdown_sends_goaway_and_lets_open_streams_finish() -> None:
    srv = ServerProcess("apps.behaviors:app", "--http2", listen="http://127.0.0.1:0")
    sock = socket.create_connection(srv.address, timeout=10)
    try:
        frames = signalled_during_a_stream(srv, sock, signal.SIGTERM, timeout=10)
        kinds = [k for k, _, _, _ in frames]
        assert GOAWAY in kinds, frames
        assert goaway_code(frames) == 0  # NO_ERROR: a graceful one
        heads = [p for k, _, st, p in frames if k == HEADERS and st == 1]
        assert heads and dict(hpack.Decoder().decode(heads[0]))[":status"] == "200"
        body = b"".join(p for k, _, st, p in frames if k == DATA and st == 1)
        assert body == b"slept"
        # The GOAWAY came before the response: the stream was let finish.
        assert kinds.index(GOAWAY) < kinds.index(HEADERS)
    finally:
        sock.close()
        assert srv.stop() == 0


def test_refused_streams_are_in_the_access_log_and_metrics(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    port = free_port()
    srv = ServerProcess(
        "apps.behaviors:app", "--http2", "--max-request-body-size=1000", f"--access-log={log}",
        f"--metrics-listen=127.0.0.1:{port}", listen="http://127.0.0.1:0",
    )
    client = H2Client(srv.address)
    try:
        stream = client.request("/echo?too=big", "POST", end=False)
        client.conn.send_data(stream, b"x" * 1500, end_stream=True)
        client.flush()
        headers, _, _ = response_of(client.events(ended(stream)), stream)
        assert headers[":status"] == "413"
        second = client.request("/echo")
        client.events(ended(second))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(log.read_text().splitlines()) < 2:
            time.sleep(0.05)
        lines = log.read_text().splitlines()
        assert any('"POST /echo?too=big HTTP/2" 413' in line for line in lines), lines
        assert any('"GET /echo HTTP/2" 200' in line for line in lines), lines
        text = metrics_text(("127.0.0.1", port))
        assert total(text, "tapster_requests_total", status="4xx", handler="server") == 1
    finally:
        client.close()
        srv.stop()


def test_request_trailers_are_ignored(h2c: ServerProcess) -> None:
    client = H2Client(h2c.address)
    try:
        stream = client.request("/echo", "POST", [("content-length", "5")], end=False)
        client.conn.send_data(stream, b"hello")
        client.conn.send_headers(stream, [("x-checksum", "abc")], end_stream=True)
        client.flush()
        headers, body, clean = response_of(client.events(ended(stream)), stream)
        got = json.loads(body)
        assert headers[":status"] == "200" and clean
        assert got["body"] == "hello"
        assert "HTTP_X_CHECKSUM" not in got["environ"]
    finally:
        client.close()


def test_a_rolling_reload_sends_goaway_and_lets_the_stream_finish() -> None:
    srv = ServerProcess("apps.behaviors:app", "--http2", "--workers=2", listen="http://127.0.0.1:0")
    sock = socket.create_connection(srv.address, timeout=10)
    try:
        frames = signalled_during_a_stream(srv, sock, signal.SIGHUP, timeout=15)
        kinds = [k for k, _, _, _ in frames]
        assert GOAWAY in kinds and goaway_code(frames) == 0, frames
        body = b"".join(p for k, _, st, p in frames if k == DATA and st == 1)
        assert body == b"slept"
    finally:
        sock.close()
        srv.stop()

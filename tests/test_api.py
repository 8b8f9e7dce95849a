"""The Python API: `create_server()` and the server objects, `serve()` and
`serve_paste()` with their test shims, the PasteDeploy entry point, and the option
casts and conflict rules of `Adjustments`, checked over real sockets where the option
has a visible effect.

Servers run in-process: `run()` in a background thread, stopped with `close()`.
"""

from __future__ import annotations

import http.client
import importlib.metadata
import json
import logging
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

import tapster
from apps.behaviors import app
from support import RawConn, echo_environ, has_ipv6_loopback, http_get
from tapster.adjustments import Adjustments
from tapster.server import MultiSocketServer, TcpWSGIServer, UnixWSGIServer, create_server

TESTS_DIR = Path(__file__).resolve().parent


# --- helpers ------------------------------------------------------------------------------


@contextmanager
def running(server: Any, stop_within: float = 3.0) -> Iterator[Any]:
    """Runs `server.run()` in a thread; on exit closes it from this thread and checks
    that run() returned within `stop_within` seconds."""
    thread = threading.Thread(target=server.run, name="tapster-run", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        began = time.monotonic()
        server.close()
        thread.join(stop_within + 5)
        assert not thread.is_alive(), "run() did not return after close()"
        elapsed = time.monotonic() - began
        assert elapsed < stop_within, f"run() returned {elapsed:.1f} s after close()"


def unix_get(path: str, target: str = "/echo") -> tuple[int, dict[str, Any] | None, bytes]:
    """GET over a Unix socket; returns status, the echoed environ (if JSON), body."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(path)
    with RawConn(sock) as conn:
        conn.send(f"GET {target} HTTP/1.1\r\nHost: unix\r\nConnection: close\r\n\r\n".encode())
        resp = conn.read_response()
    try:
        environ = json.loads(resp.body)["environ"]
    except ValueError:
        environ = None
    return resp.status, environ, resp.body


def refuses(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect((host, port))
        except ConnectionRefusedError:
            return True
    return False


@pytest.fixture
def sock_dir() -> Iterator[str]:
    """A short directory for Unix sockets (paths are limited to ~107 bytes)."""
    path = tempfile.mkdtemp(prefix="tapster-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --- create_server and the server objects -------------------------------------------------


def test_create_server_tcp_serves_until_closed() -> None:
    server = create_server(app, host="127.0.0.1", port=0)
    assert isinstance(server, TcpWSGIServer)
    assert server.effective_host == "127.0.0.1"
    assert isinstance(server.effective_port, int)
    assert server.effective_port > 0
    port = server.effective_port
    with running(server, stop_within=2.0):
        environ = echo_environ("127.0.0.1", port)
        assert environ["SERVER_PORT"] == str(port)
        assert environ["REMOTE_ADDR"] == "127.0.0.1"
        assert environ["SERVER_NAME"] == "tapster.invalid"
        assert environ["SERVER_SOFTWARE"] == "tapster"
        status, headers, _ = http_get("127.0.0.1", port, "/list?n=2&size=2")
        assert status == 200
        assert headers["Server"] == "tapster"
    # The listening socket is closed once the server has stopped.
    assert refuses("127.0.0.1", port)


def test_close_stops_run_with_a_keep_alive_connection_open() -> None:
    server = create_server(app, host="127.0.0.1", port=0)
    with running(server, stop_within=2.0):
        conn = http.client.HTTPConnection("127.0.0.1", server.effective_port, timeout=5)
        conn.request("GET", "/sleep?s=0.05")
        assert conn.getresponse().read() == b"slept"
        # conn stays open (keep-alive) while close() is called.
    conn.close()


def test_close_before_run_makes_run_return_at_once() -> None:
    server = create_server(app, host="127.0.0.1", port=0)
    server.close()
    server.close()  # idempotent
    began = time.monotonic()
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive()
    assert time.monotonic() - began < 2.0


def test_print_listen_single_server(caplog: pytest.LogCaptureFixture) -> None:
    server = create_server(app, host="127.0.0.1", port=0)
    try:
        with caplog.at_level(logging.INFO, logger="tapster"):
            server.print_listen("Serving on http://{}:{}")
        records = [r for r in caplog.records if r.name == "tapster"]
        assert [(r.levelno, r.getMessage()) for r in records] == [
            (logging.INFO, f"Serving on http://127.0.0.1:{server.effective_port}")
        ]
    finally:
        server.close()


def test_multi_socket_server(caplog: pytest.LogCaptureFixture) -> None:
    server = create_server(app, listen="127.0.0.1:0 127.0.0.1:0")
    assert isinstance(server, MultiSocketServer)
    with caplog.at_level(logging.INFO, logger="tapster"):
        server.print_listen("Serving on http://{}:{}")
    messages = [r.getMessage() for r in caplog.records if r.name == "tapster"]
    assert len(messages) == 2
    ports = []
    for message in messages:
        m = re.fullmatch(r"Serving on http://127\.0\.0\.1:(\d+)", message)
        assert m, message
        ports.append(int(m.group(1)))
    assert len(set(ports)) == 2
    with running(server, stop_within=2.0):
        for port in ports:
            assert echo_environ("127.0.0.1", port)["SERVER_PORT"] == str(port)
    for port in ports:
        assert refuses("127.0.0.1", port)


def test_create_server_with_none_app() -> None:
    with pytest.raises(ValueError):
        create_server(None, host="127.0.0.1", port=0)  # type: ignore[arg-type]


def test_unknown_keyword_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="no_such_option"):
        create_server(app, host="127.0.0.1", port=0, no_such_option=1)


@pytest.fixture
def spare_socket() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"host": "127.0.0.1", "listen": "127.0.0.1:0"}, id="host+listen"),
        pytest.param({"port": 0, "listen": "127.0.0.1:0"}, id="port+listen"),
        pytest.param({"listen": "127.0.0.1:0", "unix_socket": "/tmp/tapster-never.sock"}, id="listen+unix_socket"),
        pytest.param({"host": "127.0.0.1", "unix_socket": "/tmp/tapster-never.sock"}, id="host+unix_socket"),
        pytest.param({"port": 0, "unix_socket": "/tmp/tapster-never.sock"}, id="port+unix_socket"),
        pytest.param({"listen": "127.0.0.1:0", "sockets": "SOCK"}, id="listen+sockets"),
        pytest.param({"host": "127.0.0.1", "sockets": "SOCK"}, id="host+sockets"),
        pytest.param({"port": 0, "sockets": "SOCK"}, id="port+sockets"),
        pytest.param({"unix_socket": "/tmp/tapster-never.sock", "sockets": "SOCK"}, id="unix_socket+sockets"),
    ],
)
def test_conflicting_options(options: dict[str, Any], spare_socket: socket.socket) -> None:
    kw = {k: ([spare_socket] if v == "SOCK" else v) for k, v in options.items()}
    with pytest.raises(ValueError):
        create_server(app, **kw)
    assert not os.path.exists("/tmp/tapster-never.sock")


def test_unresolvable_listen_entry() -> None:
    with pytest.raises(ValueError, match="Invalid host/port specified"):
        create_server(app, listen="nonsense:::")


# --- Unix sockets -------------------------------------------------------------------------


def test_unix_socket_with_perms(sock_dir: str, caplog: pytest.LogCaptureFixture) -> None:
    path = os.path.join(sock_dir, "app.sock")
    server = create_server(app, unix_socket=path, unix_socket_perms="660")
    assert isinstance(server, UnixWSGIServer)
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    with caplog.at_level(logging.INFO, logger="tapster"):
        server.print_listen("Serving on http://{}:{}")
    assert [r.getMessage() for r in caplog.records if r.name == "tapster"] == [
        f"Serving on http://unix:{path}"
    ]
    with running(server, stop_within=2.0):
        status, environ, _ = unix_get(path)
        assert status == 200
        assert environ is not None
        assert environ["REMOTE_ADDR"] == "localhost"
        assert environ["REMOTE_PORT"] == "None"
        assert environ["SERVER_PORT"] == path
        assert environ["PATH_INFO"] == "/echo"


def test_unix_socket_default_perms_are_600(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "app.sock")
    server = create_server(app, unix_socket=path)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        server.close()


def test_stale_unix_socket_file_is_replaced(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "stale.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # the file stays behind, with nobody listening
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    server = create_server(app, unix_socket=path, unix_socket_perms="600")
    with running(server, stop_within=2.0):
        status, environ, _ = unix_get(path)
        assert status == 200
        assert environ is not None and environ["SERVER_PORT"] == path


def test_regular_file_at_unix_socket_path_is_left_alone(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "not-a-socket")
    Path(path).write_text("precious")
    with pytest.raises(OSError):
        create_server(app, unix_socket=path)
    assert Path(path).read_text() == "precious"


# --- IPv6 and pre-bound sockets -----------------------------------------------------------


def test_ipv6_loopback() -> None:
    if not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    server = create_server(app, listen="[::1]:0")
    assert isinstance(server, TcpWSGIServer)
    assert server.effective_host == "::1"
    port = server.effective_port
    with running(server, stop_within=2.0):
        environ = echo_environ("::1", port)
        assert environ["REMOTE_ADDR"] == "::1"
        assert environ["SERVER_PORT"] == str(port)


@pytest.mark.parametrize("listening", [True, False], ids=["listening", "bound-only"])
def test_prebound_socket(listening: bool) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    if listening:
        sock.listen(5)
    port = sock.getsockname()[1]
    try:
        server = create_server(app, sockets=[sock])
        assert isinstance(server, TcpWSGIServer)
        assert server.effective_port == port
        with running(server, stop_within=2.0):
            assert echo_environ("127.0.0.1", port)["SERVER_PORT"] == str(port)
    finally:
        sock.close()


def test_prebound_sockets_ignore_non_sockets_and_may_be_several() -> None:
    socks = []
    for _ in range(2):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        s.listen(5)
        socks.append(s)
    try:
        server = create_server(app, sockets=[socks[0], "not a socket", None, socks[1]])
        assert isinstance(server, MultiSocketServer)
        with running(server, stop_within=2.0):
            for s in socks:
                port = s.getsockname()[1]
                assert echo_environ("127.0.0.1", port)["SERVER_PORT"] == str(port)
    finally:
        for s in socks:
            s.close()


def test_prebound_unix_socket(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "prebound.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(5)
    try:
        server = create_server(app, sockets=[sock])
        with running(server, stop_within=2.0):
            status, environ, _ = unix_get(path)
            assert status == 200
            assert environ is not None and environ["REMOTE_ADDR"] == "localhost"
    finally:
        sock.close()


def test_prebound_sockets_may_not_mix_inet_and_unix(sock_dir: str) -> None:
    inet = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    inet.bind(("127.0.0.1", 0))
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(os.path.join(sock_dir, "mixed.sock"))
    try:
        with pytest.raises(ValueError):
            create_server(app, sockets=[inet, unix])
    finally:
        inet.close()
        unix.close()


def test_prebound_datagram_socket_is_rejected() -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    try:
        with pytest.raises(ValueError):
            create_server(app, sockets=[udp])
    finally:
        udp.close()


# --- serve() and serve_paste() ------------------------------------------------------------


class FakeServer:
    """What serve()'s `_server` shim returns in place of a real server."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def print_listen(self, format_str: str) -> None:
        self.calls.append(("print_listen", format_str))

    def run(self) -> None:
        self.calls.append(("run", None))


def test_serve_shim_quiet() -> None:
    fake = FakeServer()
    received: list[tuple[Any, dict[str, Any]]] = []

    def factory(application: Any, **kw: Any) -> FakeServer:
        received.append((application, kw))
        return fake

    assert tapster.serve(app, _server=factory, _quiet=True, threads="2", listen="127.0.0.1:0") is None
    assert received == [(app, {"threads": "2", "listen": "127.0.0.1:0"})]
    assert fake.calls == [("run", None)]


def test_serve_shim_not_quiet_prints_listen() -> None:
    fake = FakeServer()
    tapster.serve(app, _server=lambda application, **kw: fake)
    assert fake.calls == [("print_listen", "Serving on http://{}:{}"), ("run", None)]


class Capture:
    """A `_server` shim that creates the real server and keeps it for the test."""

    def __init__(self) -> None:
        self.server: Any = None
        self.created = threading.Event()

    def __call__(self, application: Any, **kw: Any) -> Any:
        self.server = create_server(application, **kw)
        self.created.set()
        return self.server


def test_serve_runs_a_real_server_until_closed(caplog: pytest.LogCaptureFixture) -> None:
    capture = Capture()
    thread = threading.Thread(
        target=tapster.serve,
        args=(app,),
        kwargs={"_server": capture, "listen": "127.0.0.1:0", "ident": "served"},
        daemon=True,
    )
    with caplog.at_level(logging.INFO, logger="tapster"):
        thread.start()
        assert capture.created.wait(5)
        port = capture.server.effective_port
        status, headers, _ = http_get("127.0.0.1", port)
        assert status == 200
        assert headers["Server"] == "served"
        capture.server.close()
        thread.join(3)
        assert not thread.is_alive()
    assert f"Serving on http://127.0.0.1:{port}" in [
        r.getMessage() for r in caplog.records if r.name == "tapster"
    ]


def test_serve_paste_returns_zero_after_the_server_stops() -> None:
    capture = Capture()
    result: list[Any] = []
    thread = threading.Thread(
        target=lambda: result.append(
            tapster.serve_paste(app, {}, _server=capture, _quiet=True, listen="127.0.0.1:0", threads="2")
        ),
        daemon=True,
    )
    thread.start()
    assert capture.created.wait(5)
    assert capture.server.adj.threads == 2
    assert http_get("127.0.0.1", capture.server.effective_port)[0] == 200
    assert result == []  # still serving
    capture.server.close()
    thread.join(3)
    assert not thread.is_alive()
    assert result == [0]


# --- PasteDeploy ----------------------------------------------------------------------------

PASTE_INI = """\
[server:main]
use = egg:tapster#main
listen = 127.0.0.1:0
threads = 2
ident = pasted
url_prefix = /mount/
expose_tracebacks = yes
"""

PASTE_SCRIPT = """\
import logging
import sys

from paste.deploy import loadserver

sys.path.insert(0, {tests_dir!r})
from apps.behaviors import app

logging.basicConfig(level=logging.INFO)
server = loadserver("config:" + {ini!r})
result = server(app)
print("RETURNED", repr(result), flush=True)
"""


def test_paste_entry_point_is_registered() -> None:
    entries = importlib.metadata.entry_points(group="paste.server_runner")
    mains = [e for e in entries if e.name == "main" and e.value.split(":")[0] == "tapster"]
    assert mains, list(entries)
    assert mains[0].load() is tapster.serve_paste


def test_paste_loadserver_returns_a_callable(tmp_path: Path) -> None:
    from paste.deploy import loadserver

    ini = tmp_path / "server.ini"
    ini.write_text(PASTE_INI)
    server = loadserver(f"config:{ini}")
    assert callable(server)


def test_paste_server_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    ini = tmp_path / "server.ini"
    ini.write_text(PASTE_INI)
    script = tmp_path / "run_paste.py"
    script.write_text(PASTE_SCRIPT.format(tests_dir=str(TESTS_DIR), ini=str(ini)))
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=TESTS_DIR,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(l.rstrip("\n") for l in proc.stdout), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        port = None
        deadline = time.monotonic() + 15
        while port is None and time.monotonic() < deadline and proc.poll() is None:
            for line in list(lines):
                m = re.search(r"Serving on http://127\.0\.0\.1:(\d+)$", line)
                if m:
                    port = int(m.group(1))
            time.sleep(0.02)
        assert port is not None, "\n".join(lines)

        environ = echo_environ("127.0.0.1", port, "/mount/echo")
        assert environ["SCRIPT_NAME"] == "/mount"
        assert environ["PATH_INFO"] == "/echo"
        status, headers, body = http_get("127.0.0.1", port, "/mount/error/before")
        assert status == 500
        assert headers["Server"] == "pasted"
        assert b"boom before start_response" in body  # expose_tracebacks = yes

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        reader.join(5)
        assert "RETURNED 0" in lines, "\n".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- Adjustments: casts and rules ---------------------------------------------------------


@pytest.mark.parametrize("text", ["yes", "on", "1", "true", "t", "y", "TRUE", " Yes "])
def test_asbool_truthy_strings(text: str) -> None:
    adj = Adjustments(expose_tracebacks=text, ipv6=text, log_socket_errors=text, listen="127.0.0.1:0")
    assert adj.expose_tracebacks is True
    assert adj.ipv6 is True
    assert adj.log_socket_errors is True


@pytest.mark.parametrize("text", ["false", "no", "off", "0", "", "nonsense"])
def test_asbool_falsy_strings(text: str) -> None:
    adj = Adjustments(expose_tracebacks=text, log_socket_errors=text, listen="127.0.0.1:0")
    assert adj.expose_tracebacks is False
    assert adj.log_socket_errors is False


@pytest.mark.parametrize(("text", "exposed"), [("yes", True), ("on", True), ("1", True), ("false", False)])
def test_asbool_over_the_wire(text: str, exposed: bool) -> None:
    server = create_server(app, listen="127.0.0.1:0", expose_tracebacks=text)
    with running(server):
        status, _, body = http_get("127.0.0.1", server.effective_port, "/error/before")
    assert status == 500
    assert (b"boom before start_response" in body) is exposed


def test_int_options_accept_strings() -> None:
    adj = Adjustments(threads="3", channel_timeout="7", connection_limit="50", listen="127.0.0.1:0")
    assert (adj.threads, adj.channel_timeout, adj.connection_limit) == (3, 7, 50)


def test_aslist_listen_with_newlines() -> None:
    adj = Adjustments(listen="127.0.0.1:0\n  127.0.0.1:0\n\n")
    assert [entry[3][:2] for entry in adj.listen] == [("127.0.0.1", 0), ("127.0.0.1", 0)]
    assert all(entry[0] == socket.AF_INET for entry in adj.listen)


def test_aslist_listen_iterable_items_are_split() -> None:
    adj = Adjustments(listen=["127.0.0.1:0 127.0.0.1:0", "127.0.0.1:0"])
    assert len(adj.listen) == 3


def test_listen_duplicates_are_dropped_except_port_zero() -> None:
    adj = Adjustments(listen="127.0.0.1:8080 127.0.0.1:8080\n127.0.0.1:8081")
    assert [entry[3][:2] for entry in adj.listen] == [("127.0.0.1", 8080), ("127.0.0.1", 8081)]


def test_listen_with_newlines_serves_on_every_entry() -> None:
    server = create_server(app, listen="127.0.0.1:0\n127.0.0.1:0\n")
    assert isinstance(server, MultiSocketServer)
    ports = [port for _, port in server.effective_listen]
    assert len(set(ports)) == 2
    with running(server):
        for port in ports:
            assert http_get("127.0.0.1", port)[0] == 200


@pytest.mark.parametrize(
    ("given", "expected"),
    [("/app/", "/app"), ("app", "/app"), ("/app", "/app"), ("//app//", "/app"), ("/a/b/", "/a/b"), ("", ""), ("/", "")],
)
def test_url_prefix_normalisation(given: str, expected: str) -> None:
    assert Adjustments(url_prefix=given, listen="127.0.0.1:0").url_prefix == expected


def test_url_prefix_over_the_wire() -> None:
    server = create_server(app, listen="127.0.0.1:0", url_prefix="/app/")
    port = server.effective_port
    with running(server):
        environ = echo_environ("127.0.0.1", port, "/app/echo?x=1")
        assert (environ["SCRIPT_NAME"], environ["PATH_INFO"], environ["QUERY_STRING"]) == ("/app", "/echo", "x=1")
        environ = echo_environ("127.0.0.1", port, "/app")
        assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("/app", "")
        environ = echo_environ("127.0.0.1", port, "/application")  # not under the prefix
        assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("/app", "/application")


@pytest.mark.parametrize("prefix", ["", "/"])
def test_empty_url_prefix_over_the_wire(prefix: str) -> None:
    server = create_server(app, listen="127.0.0.1:0", url_prefix=prefix)
    with running(server):
        environ = echo_environ("127.0.0.1", server.effective_port, "/echo")
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("", "/echo")


@pytest.mark.parametrize("ident", ["", None])
def test_empty_ident_sends_no_server_header(ident: str | None) -> None:
    server = create_server(app, listen="127.0.0.1:0", ident=ident)
    with running(server):
        with socket.create_connection(("127.0.0.1", server.effective_port), timeout=5) as sock:
            conn = RawConn(sock)
            conn.send(b"GET /list HTTP/1.1\r\nHost: t\r\n\r\n")
            resp = conn.read_response()
    assert resp.status == 200
    assert resp.header("Server") is None
    assert resp.header("Date") is not None


def test_custom_ident_over_the_wire() -> None:
    server = create_server(app, listen="127.0.0.1:0", ident="custom/1.0")
    with running(server):
        status, headers, body = http_get("127.0.0.1", server.effective_port)
    assert headers["Server"] == "custom/1.0"
    assert json.loads(body)["environ"]["SERVER_SOFTWARE"] == "custom/1.0"


def test_send_bytes_is_deprecated() -> None:
    with pytest.warns(DeprecationWarning, match="send_bytes"):
        server = create_server(app, listen="127.0.0.1:0", send_bytes="18000")
    server.close()


def test_trusted_proxy_headers_without_trusted_proxy() -> None:
    with pytest.raises(ValueError, match="trusted_proxy"):
        create_server(app, listen="127.0.0.1:0", trusted_proxy_headers="x-forwarded-for")


def test_trusted_proxy_count_without_trusted_proxy() -> None:
    with pytest.raises(ValueError, match="trusted_proxy"):
        create_server(app, listen="127.0.0.1:0", trusted_proxy_count="2")


@pytest.mark.parametrize(
    "headers",
    ["forwarded x-forwarded-for", "forwarded\nx-forwarded-proto", ["Forwarded", "X-Forwarded-Host"]],
)
def test_forwarded_may_not_be_mixed_with_x_forwarded(headers: Any) -> None:
    with pytest.raises(ValueError, match="mutually exclusive"):
        create_server(app, listen="127.0.0.1:0", trusted_proxy="127.0.0.1", trusted_proxy_headers=headers)


def test_unknown_trusted_proxy_header() -> None:
    with pytest.raises(ValueError, match="x-forwarded-nonsense"):
        create_server(app, listen="127.0.0.1:0", trusted_proxy="127.0.0.1", trusted_proxy_headers="x-forwarded-nonsense")


def test_trusted_proxy_headers_are_a_case_insensitive_set() -> None:
    adj = Adjustments(
        listen="127.0.0.1:0", trusted_proxy="127.0.0.1", trusted_proxy_headers="X-Forwarded-For x-forwarded-proto\nx-forwarded-for"
    )
    assert adj.trusted_proxy_headers == {"x-forwarded-for", "x-forwarded-proto"}
    assert adj.trusted_proxy_count == 1


def test_trusted_proxy_without_headers_trusts_proto_with_a_warning() -> None:
    with pytest.warns(DeprecationWarning):
        adj = Adjustments(listen="127.0.0.1:0", trusted_proxy="127.0.0.1")
    assert adj.trusted_proxy_headers == {"x-forwarded-proto"}


def test_an_integer_unix_socket_mode_is_refused() -> None:
    # Waitress's cast takes only strings: 660 read as decimal would be a wrong mode.
    with pytest.raises(ValueError, match="octal string"):
        create_server(app, unix_socket="/tmp/tapster-never.sock", unix_socket_perms=660)
    assert not os.path.exists("/tmp/tapster-never.sock")

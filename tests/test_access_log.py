"""The access log, through the real command line and real clients: each Gunicorn atom
has the value the request it logs had (addresses, request line, status, body bytes,
referer, user agent, Basic-auth user, request and response headers, environ values
set by the application, pid, time, and durations that agree with each other and
with what the client saw); the default format is Apache's combined one; a line is
written only once the response's last byte has left (a slow reader's line carries
the whole body and the whole transfer's duration), a client gone mid-body is logged
as aborted with the bytes actually sent, keep-alive shows in `%(X)s`; SIGUSR1 reopens
the file after a rotation without losing a line (in workers mode too, through the
supervisor); `json` lines parse and carry the right values; client-controlled bytes
cannot forge a line; `--access-log-logger` hands the lines to the `tapster.access`
logger; `-` is stderr; two workers' lines reach one file whole; an invalid format is
refused with status 2; shutdown flushes the buffered lines; and without
`--access-log` nothing is logged per request.

Lines are written by a background thread, so every read polls the file with a
deadline; "no extra line" is checked by logging a marker request last (a single
process logs one connection's requests in order)."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

import pytest

from support import TESTS_DIR, RawConn, ServerProcess, http_get
from support import tests_env as child_env  # not collected as a test
from test_workers import Tapster, tapster, wait_until  # noqa: F401 (tapster: the fixture)

APP = "apps.observed:app"
MakeServer = Callable[..., ServerProcess]

COMBINED = re.compile(
    r'^(?P<h>\S+) (?P<l>\S+) (?P<u>\S+) (?P<t>\[[^\]]+\]) "(?P<r>(?:[^"\\]|\\.)*)" (?P<s>\d{3}) (?P<b>\d+|-) '
    r'"(?P<f>(?:[^"\\]|\\.)*)" "(?P<a>(?:[^"\\]|\\.)*)"(?P<aborted> aborted)?$'
)
CLF_TIME = "[%d/%b/%Y:%H:%M:%S %z]"

#: Every atom, each as `name=value` between `|` (no value below has a `|`).
ATOMS = ["h", "l", "u", "t", "r", "m", "U", "q", "H", "s", "B", "b", "f", "a", "T", "M", "D", "L", "p", "X"]
NAMED = ["{x-custom}i", "{x-missing}i", "{x-trace}o", "{x-nothing}o", "{REMOTE_USER}e", "{NO_SUCH_VARIABLE}e"]
EVERY_ATOM = "|".join(f"{name}=%({name})s" for name in ATOMS + NAMED)

BOB = "Basic " + base64.b64encode(b"bob:secret").decode()


# --- helpers ---------------------------------------------------------------------------------


def log_lines(path: Path, count: int, timeout: float = 5.0) -> list[str]:
    """The complete lines of the access log at `path` once it has at least `count`
    (decoded as latin-1, so that a raw byte that should have been escaped shows)."""
    lines: list[str] = []

    def enough() -> bool:
        nonlocal lines
        data = path.read_bytes() if path.exists() else b""
        lines = [line.decode("latin-1") for line in data.split(b"\n")[:-1]]
        return len(lines) >= count

    wait_until(enough, timeout, lambda: f"{count} lines in {path}; it has {lines}")
    return lines


def fields(line: str) -> dict[str, str]:
    """The `name=value` pairs of a line in the EVERY_ATOM format."""
    return dict(part.partition("=")[::2] for part in line.split("|"))


def request(srv: ServerProcess, raw: bytes) -> tuple[int, bytes, float]:
    """Sends `raw` (one request, `Connection: close`) on a new connection; returns the
    status, the body and how long the client waited, connect to last byte."""
    started = time.monotonic()
    with srv.connect(timeout=10) as conn:
        conn.send(raw)
        resp = conn.read_response()
    return resp.status, resp.body, time.monotonic() - started


def get(target: str, *headers: str) -> bytes:
    head = [f"GET {target} HTTP/1.1", "Host: t", *headers, "Connection: close"]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")


def marker(srv: ServerProcess) -> str:
    """Requests a unique path; returns its request line as logged."""
    target = f"/status/204?marker={time.monotonic_ns()}"
    assert request(srv, get(target))[0] == 204
    return f"GET {target} HTTP/1.1"


def lines_through_marker(srv: ServerProcess, path: Path) -> list[str]:
    """Every line of the log once a marker request's line is in it: the marker is
    requested last, so every earlier request's line is written by then."""
    line = marker(srv)
    wait_until(lambda: path.exists() and line in path.read_text("latin-1"), 5, f"the marker {line!r} in the log")
    lines = log_lines(path, 1)
    assert line in lines[-1], lines
    return lines[:-1]


@pytest.fixture
def access_log(tmp_path: Path) -> Path:
    return tmp_path / "access.log"


# --- every atom ------------------------------------------------------------------------------


def test_every_atom_has_the_requests_value(make_server: MakeServer, access_log: Path) -> None:
    srv = make_server(f"--access-log={access_log}", f"--access-log-format={EVERY_ATOM}", app=APP)
    raw = get(
        "/hello?q=1&x=y",
        "Referer: http://ref.example/from",
        "User-Agent: atoms-test/1.0",
        f"Authorization: {BOB}",
        "X-Custom: custom-value",
    )
    status, body, _ = request(srv, raw)
    assert (status, body) == (200, b"hello")
    [line] = log_lines(access_log, 1)
    got = fields(line)
    assert set(got) == set(ATOMS + NAMED), line
    stamp = datetime.strptime(got.pop("t"), CLF_TIME)
    assert abs(stamp.timestamp() - time.time()) < 10, f"{stamp} is not now"
    for timing in ("T", "M", "D", "L"):
        got.pop(timing)  # test_durations_agree_with_each_other_and_the_client
    assert got == {
        "h": "127.0.0.1",
        "l": "-",
        "u": "bob",
        "r": "GET /hello?q=1&x=y HTTP/1.1",
        "m": "GET",
        "U": "/hello",
        "q": "q=1&x=y",
        "H": "HTTP/1.1",
        "s": "200",
        "B": "5",
        "b": "5",
        "f": "http://ref.example/from",
        "a": "atoms-test/1.0",
        "p": f"<{srv.proc.pid}>",
        "X": "-",  # Connection: close
        "{x-custom}i": "custom-value",
        "{x-missing}i": "-",
        "{x-trace}o": "t-1",
        "{x-nothing}o": "-",
        "{REMOTE_USER}e": "-",
        "{NO_SUCH_VARIABLE}e": "-",
    }


def test_absent_values_and_an_empty_body(make_server: MakeServer, access_log: Path) -> None:
    srv = make_server(f"--access-log={access_log}", f"--access-log-format={EVERY_ATOM}", app=APP)
    assert request(srv, get("/status/204"))[0] == 204
    [line] = log_lines(access_log, 1)
    got = fields(line)
    assert (got["s"], got["B"], got["b"]) == ("204", "0", "-")
    assert (got["u"], got["f"], got["a"]) == ("-", "-", "-"), line
    assert got["r"] == "GET /status/204 HTTP/1.1" and got["U"] == "/status/204"


def test_environ_atoms_read_what_the_application_set(make_server: MakeServer, access_log: Path) -> None:
    srv = make_server(f"--access-log={access_log}", f"--access-log-format={EVERY_ATOM}", app=APP)
    assert request(srv, get("/user"))[:2] == (200, b"alice")
    [line] = log_lines(access_log, 1)
    got = fields(line)
    assert got["{REMOTE_USER}e"] == "alice", line
    assert got["{x-trace}o"] == "-" and got["u"] == "-"  # not from Basic auth: there was none


def test_durations_agree_with_each_other_and_the_client(make_server: MakeServer, access_log: Path) -> None:
    srv = make_server(f"--access-log={access_log}", "--access-log-format=%(T)s %(M)s %(D)s %(L)s", app=APP)
    status, _, waited = request(srv, get("/sleep?s=1.2"))
    assert status == 200
    [line] = log_lines(access_log, 1)
    t, m, d, seconds = line.split()
    micros = int(d)
    assert 1_200_000 <= micros <= waited * 1e6 + 1000, f"D={micros} µs; the client waited {waited:.6f} s"
    assert micros >= (waited - 0.1) * 1e6, f"D={micros} µs is much less than the {waited:.3f} s the client waited"
    assert int(t) == micros // 1_000_000 == 1
    assert micros // 1000 <= int(m) <= -(-micros // 1000), (m, d)
    assert re.fullmatch(r"\d+\.\d{6}", seconds), seconds
    assert abs(float(seconds) * 1e6 - micros) <= 1, (seconds, d)


def test_default_format_is_apache_combined(make_server: MakeServer, access_log: Path) -> None:
    srv = make_server(f"--access-log={access_log}", app=APP)
    raw = get("/hello?q=1", "Referer: http://ref.example/", "User-Agent: combined/2.0", f"Authorization: {BOB}")
    assert request(srv, raw)[0] == 200
    assert request(srv, get("/status/404"))[0] == 404
    first, second = log_lines(access_log, 2)
    stamp = re.search(r" (\[[^\]]+\]) ", first)
    assert stamp, first
    datetime.strptime(stamp.group(1), CLF_TIME)
    assert first.replace(stamp.group(1), "[T]") == '127.0.0.1 - bob [T] "GET /hello?q=1 HTTP/1.1" 200 5 "http://ref.example/" "combined/2.0"'
    stamp = re.search(r" (\[[^\]]+\]) ", second)
    assert stamp, second
    assert second.replace(stamp.group(1), "[T]") == '127.0.0.1 - - [T] "GET /status/404 HTTP/1.1" 404 10 "-" "-"'


# --- when a line is written -------------------------------------------------------------------


def test_a_slow_readers_line_comes_after_the_last_byte(make_server: MakeServer, access_log: Path) -> None:
    size = 8_000_000
    srv = make_server(f"--access-log={access_log}", "--access-log-format=%(r)s %(s)s %(B)s %(D)s", app=APP)
    rcvbuf = 4096
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(10)
        sock.connect(srv.address)
        started = time.monotonic()
        sock.sendall(get(f"/big?n={size}"))
        received = 0
        slow_until = started + 1.5
        while time.monotonic() < slow_until:  # about 0.8 MB/s
            data = sock.recv(4096)
            assert data, f"closed after {received} bytes"
            received += len(data)
            time.sleep(0.005)
        slow = time.monotonic() - started
        # The server cannot have sent its last byte yet: at most the kernel's buffers
        # (its send buffer's autotuning limit and our receive buffer) are in flight.
        with open("/proc/sys/net/ipv4/tcp_wmem") as f:
            in_flight = int(f.read().split()[2]) + 4 * rcvbuf
        assert received + in_flight < size, f"the test needs a bigger body: {received} + {in_flight} >= {size}"
        assert not (access_log.exists() and access_log.read_bytes()), f"logged mid-body: {access_log.read_text()!r}"
        while data := sock.recv(1 << 20):
            received += len(data)
    [line] = log_lines(access_log, 1)
    r, status, sent, micros = line.rsplit(" ", 3)
    assert (r, status, sent) == (f"GET /big?n={size} HTTP/1.1", "200", str(size)), line
    assert received > size  # the head too
    assert int(micros) >= slow * 1e6, f"D={micros} µs, but the client was still reading slowly after {slow:.3f} s"


@pytest.mark.parametrize("fmt", ["default", "with-X"])
def test_a_client_gone_mid_body_is_logged_aborted(make_server: MakeServer, access_log: Path, fmt: str) -> None:
    size = 50_000_000
    args = [f"--access-log={access_log}"] + (["--access-log-format=%(r)s %(s)s %(B)s %(X)s"] if fmt == "with-X" else [])
    srv = make_server(*args, app=APP)
    with srv.connect() as conn:
        conn.send(get(f"/big?n={size}"))
        got = 0
        while got < 100_000:
            data = conn.sock.recv(65536)
            assert data
            got += len(data)
    # closed with unread data: a reset
    [line] = log_lines(access_log, 1, timeout=10)
    if fmt == "with-X":
        r, status, sent, x = line.rsplit(" ", 3)
        assert (r, status, x) == (f"GET /big?n={size} HTTP/1.1", "200", "X"), line
        assert not line.endswith(" aborted")
    else:
        m = COMBINED.match(line)
        assert m and m["aborted"], f"not an aborted combined line: {line!r}"
        assert m["r"] == f"GET /big?n={size} HTTP/1.1" and m["s"] == "200"
        sent = m["b"]
    assert 100_000 - 200 <= int(sent) < size, f"{sent} bytes logged as sent"


def test_keep_alive_shows_in_X(make_server: MakeServer, access_log: Path) -> None:
    srv = make_server(f"--access-log={access_log}", "--access-log-format=%(r)s %(X)s", app=APP)
    with srv.connect() as conn:
        conn.send(b"GET /hello?1 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert conn.read_response().status == 200
        conn.send(b"GET /hello?2 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert conn.read_response().status == 200
        assert conn.is_closed()
    with srv.connect() as conn:
        conn.send(b"GET /hello?3 HTTP/1.0\r\n\r\n")
        assert conn.read_response().status == 200
    assert log_lines(access_log, 3) == ["GET /hello?1 HTTP/1.1 +", "GET /hello?2 HTTP/1.1 -", "GET /hello?3 HTTP/1.0 -"]


def test_shutdown_flushes_every_line(make_server: MakeServer, access_log: Path) -> None:
    srv = make_server(f"--access-log={access_log}", "--access-log-format=%(r)s", app=APP)
    with srv.connect() as conn:  # one connection: fast enough to end inside a flush period
        for i in range(50):
            conn.send(f"GET /hello?n={i} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            assert conn.read_response().status == 200
    assert srv.stop() == 0  # at once: some lines are still buffered
    assert access_log.read_text().splitlines() == [f"GET /hello?n={i} HTTP/1.1" for i in range(50)]


# --- reopening on SIGUSR1 ---------------------------------------------------------------------


def test_sigusr1_reopens_the_file_after_a_rotation(make_server: MakeServer, access_log: Path) -> None:
    srv = make_server(f"--access-log={access_log}", "--access-log-format=%(r)s", app=APP)
    for i in range(3):
        assert request(srv, get(f"/hello?before={i}"))[0] == 200
    log_lines(access_log, 3)
    rotated = access_log.with_name("access.log.1")
    os.rename(access_log, rotated)
    srv.proc.send_signal(signal.SIGUSR1)
    sent = 0  # requests until a line reaches the new file (the reopen is asynchronous)
    deadline = time.monotonic() + 5
    while not (access_log.exists() and access_log.read_bytes()):
        assert time.monotonic() < deadline, f"no new {access_log} after SIGUSR1:\n{srv.log()}"
        assert request(srv, get(f"/hello?during={sent}"))[0] == 200
        sent += 1
        time.sleep(0.05)
    for i in range(3):
        assert request(srv, get(f"/hello?after={i}"))[0] == 200
    wait_until(lambda: "after=2" in access_log.read_text(), 5, "the last request's line in the new file")
    old, new = rotated.read_text().splitlines(), access_log.read_text().splitlines()
    assert old[:3] == [f"GET /hello?before={i} HTTP/1.1" for i in range(3)]
    assert new[-3:] == [f"GET /hello?after={i} HTTP/1.1" for i in range(3)]
    during = [f"GET /hello?during={i} HTTP/1.1" for i in range(sent)]
    assert sorted(old[3:] + new[:-3]) == sorted(during), (old, new)  # each once, in one file or the other
    assert not any("after=" in line for line in old)


def test_sigusr1_without_an_access_log_changes_nothing(make_server: MakeServer) -> None:
    """logrotate's postrotate may signal a server that logs nothing: it must not die (the
    signal's default action) but go on serving."""
    srv = make_server(app=APP)
    for _ in range(3):
        srv.proc.send_signal(signal.SIGUSR1)
        time.sleep(0.1)
        assert request(srv, get("/hello"))[0] == 200, srv.log()
    assert srv.proc.poll() is None, srv.log()
    assert srv.stop() == 0


def test_sigusr1_to_the_supervisor_reopens_every_workers_file(tapster: Callable[..., Tapster], access_log: Path) -> None:
    srv = tapster("--workers=2", "--reuse-port", f"--access-log={access_log}", "--access-log-format=%(p)s %(r)s", app=APP)
    workers = srv.workers(2)
    before = serve_until_both(srv, workers, "before")
    log_lines(access_log, before)
    rotated = access_log.with_name("access.log.1")
    os.rename(access_log, rotated)
    srv.proc.send_signal(signal.SIGUSR1)

    def writers() -> set[str]:
        text = access_log.read_text() if access_log.exists() else ""
        return {line.split(" ")[0] for line in text.splitlines()}

    made = 0  # requests until each worker has written to the new file
    deadline = time.monotonic() + 10
    while not {f"<{pid}>" for pid in workers} <= writers():
        assert time.monotonic() < deadline, f"not every worker writes to the new file: {writers()}\n{srv.log()}"
        assert http_get(srv.host, int(srv.port), f"/pid?after={made}")[0] == 200
        made += 1

    def every_line() -> list[str]:
        return rotated.read_text().splitlines() + access_log.read_text().splitlines()

    wait_until(lambda: len(every_line()) >= before + made, 5, lambda: f"{before + made} lines: {every_line()}")
    lines = every_line()
    assert len(lines) == before + made, lines  # each request logged once, none lost
    assert sorted(line.split(" ")[2] for line in lines if "after=" in line) == sorted(f"/pid?after={i}" for i in range(made))


def serve_until_both(srv: Tapster, workers: set[int], tag: str, limit: int = 200) -> int:
    """GET /pid on new connections until both workers answered; returns how many."""
    seen: set[int] = set()
    made = 0
    while seen != workers:
        assert made < limit, f"only {seen} of {workers} served in {limit} requests"
        status, _, body = http_get(srv.host, int(srv.port), f"/pid?{tag}={made}")
        assert status == 200
        seen.add(int(body))
        made += 1
    return made


# --- JSON --------------------------------------------------------------------------------------


def test_json_lines_parse_and_carry_the_values(make_server: MakeServer, access_log: Path) -> None:
    srv = make_server(f"--access-log={access_log}", "--access-log-format=json", app=APP)
    raw = (
        b'GET /hello?a="b\\c HTTP/1.1\r\nHost: t\r\nReferer: http://ref.example/\r\n'
        b'User-Agent: ua-\xff-"-\\\r\n' + f"Authorization: {BOB}\r\n".encode() + b"Connection: close\r\n\r\n"
    )
    status, _, waited = request(srv, raw)
    assert status == 200
    with srv.connect() as conn:  # keep-alive, then a raw 0xff in the target (400)
        conn.send(b"GET /big?n=1000 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert conn.read_response().status == 200
        conn.send(b"GET /hello?\xff HTTP/1.1\r\nHost: t\r\n\r\n")
        assert conn.read_response().status == 400
    log_lines(access_log, 3)
    data = access_log.read_bytes()
    assert all(b < 0x80 for b in data), f"raw non-ASCII bytes in the log: {data!r}"
    first, second, third = (json.loads(line) for line in data.splitlines())
    assert set(first) == {
        "time", "remote_addr", "user", "method", "path", "query", "protocol", "status", "bytes",
        "duration", "referer", "user_agent", "pid", "aborted", "keep_alive", "handler",
    }  # fmt: skip
    assert {k: first[k] for k in first if k not in ("time", "duration", "user_agent")} == {
        "remote_addr": "127.0.0.1",
        "user": "bob",
        "method": "GET",
        "path": "/hello",
        "query": 'a="b\\c',
        "protocol": "HTTP/1.1",
        "status": 200,
        "bytes": 5,
        "referer": "http://ref.example/",
        "pid": srv.proc.pid,
        "aborted": False,
        "keep_alive": False,
        "handler": "application",
    }
    # The 0xff byte escaped as the text \xff (or, at least, as a JSON escape).
    assert first["user_agent"] in ('ua-\\xff-"-\\', 'ua-\xff-"-\\'), first["user_agent"]
    assert isinstance(first["duration"], (int, float)) and 0 <= first["duration"] <= waited, (first["duration"], waited)
    assert abs(parse_time(first["time"]) - time.time()) < 10, first["time"]
    assert (second["path"], second["query"], second["status"], second["bytes"], second["keep_alive"]) == ("/big", "n=1000", 200, 1000, True)
    assert third["status"] == 400 and third["aborted"] is False and third["handler"] == "server", third
    # Refused before its head was parsed, the request is still named by its first line.
    assert (third["method"], third["path"], third["protocol"]) == ("GET", "/hello", "HTTP/1.1"), third


def parse_time(value: object) -> float:
    """A JSON line's `time` (ISO 8601, or the CLF `t` shape) as a Unix time."""
    assert isinstance(value, str), value
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return datetime.strptime(value if value.startswith("[") else f"[{value}]", CLF_TIME).timestamp()


# --- log injection -----------------------------------------------------------------------------


ACCEPTED_AGENTS = [  # (User-Agent, as logged): obs-text, quotes, a tab
    (b"latin\xe9\xff", r"latin\xe9\xff"),
    (b'q"uote" 200 "x', r'q\"uote\" 200 \"x'),
    (b"tab\there", r"tab\x09here"),
]
REFUSED_AGENTS = [b"esc\x1b[31mred", b"del\x7fete", b"soh\x01x"]  # control bytes: a 400


def test_header_bytes_are_escaped(make_server: MakeServer, access_log: Path) -> None:
    srv = make_server(f"--access-log={access_log}", app=APP)
    def with_agent(ua: bytes) -> int:
        return request(srv, b"GET /hello HTTP/1.1\r\nHost: t\r\nUser-Agent: " + ua + b"\r\nConnection: close\r\n\r\n")[0]

    for ua, _ in ACCEPTED_AGENTS:
        assert with_agent(ua) == 200, ua
    for ua in REFUSED_AGENTS:  # the parser refuses them; the 400 is logged, on one line
        assert with_agent(ua) == 400, ua
    lines = lines_through_marker(srv, access_log)
    assert len(lines) == len(ACCEPTED_AGENTS) + len(REFUSED_AGENTS), lines  # one line per request
    data = access_log.read_bytes()
    assert all(0x20 <= b < 0x7F or b == 0x0A for b in data), f"unescaped bytes in the log: {data!r}"
    parsed = [COMBINED.match(line) for line in lines]
    assert all(parsed), [line for line, m in zip(lines, parsed) if not m]
    agents = [m["a"].lower() for m in parsed if m and m["s"] == "200"]
    assert agents == [shown.lower() for _, shown in ACCEPTED_AGENTS]  # \xHH in either case
    assert [m["s"] for m in parsed if m][-len(REFUSED_AGENTS) :] == ["400"] * len(REFUSED_AGENTS)


def test_decoded_newlines_cannot_forge_a_line(make_server: MakeServer, access_log: Path) -> None:
    srv = make_server(f"--access-log={access_log}", "--access-log-format=%(r)s %(s)s %({PATH_INFO}e)s %({x-a}i)s", app=APP)
    fake = '127.0.0.1 - - [01/Jan/2020:00:00:00 +0000] "GET /forged HTTP/1.1" 200 5 "-" "-"'
    target = "/hello%0d%0a" + fake.replace(" ", "%20").replace('"', "%22") + "%0a%1b"
    assert request(srv, get(target, 'X-A: a"\\b'))[0] == 404  # PATH_INFO has CR, LF and ESC decoded
    lines = lines_through_marker(srv, access_log)
    assert len(lines) == 1, lines
    data = access_log.read_bytes()
    assert all(0x20 <= b < 0x7F or b == 0x0A for b in data), f"unescaped bytes in the log: {data!r}"
    line = lines[0]
    assert line.startswith(f"GET {target} HTTP/1.1 404 /hello"), line  # %(r)s is the raw target
    assert "\\x0d\\x0a127.0.0.1" in line.lower() and line.lower().endswith('\\x0a\\x1b a\\"\\\\b'), line


# --- where the lines go ------------------------------------------------------------------------


def test_access_log_logger_from_the_command_line(make_server: MakeServer) -> None:
    srv = make_server("--access-log-logger", app=APP)
    assert request(srv, get("/hello?via=logger"))[0] == 200
    line = srv.wait_for_log(r"GET /hello\?via=logger HTTP/1\.1")
    assert re.search(r"\[INFO\] tapster\.access: 127\.0\.0\.1 - - \[.+\] \"GET /hello\?via=logger HTTP/1\.1\" 200 5 \"-\" \"-\"$", line), line


LOGGER_SCRIPT = """\
import logging
import sys

sys.path.insert(0, {tests_dir!r})
import tapster
from apps.observed import app

logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s")
handler = logging.FileHandler({log!r})
handler.setFormatter(logging.Formatter("ACCESS %(levelname)s %(message)s"))
access = logging.getLogger("tapster.access")
access.addHandler(handler)
access.propagate = False
tapster.serve(app, listen="127.0.0.1:0", access_log_logger=True, access_log_format="%(r)s %(s)s")
"""


def test_access_log_logger_reaches_the_applications_handler(tapster: Callable[..., Tapster], tmp_path: Path) -> None:
    log = tmp_path / "handler.log"
    script = tmp_path / "serve_with_logger.py"
    script.write_text(LOGGER_SCRIPT.format(tests_dir=TESTS_DIR, log=str(log)))
    srv = tapster(cmd=[sys.executable, str(script)])
    assert request(srv, get("/hello?via=handler"))[0] == 200
    assert log_lines(log, 1) == ["ACCESS INFO GET /hello?via=handler HTTP/1.1 200"]
    assert "via=handler" not in srv.log()  # not propagated to stderr: only the handler has it
    assert srv.stop() == 0


def test_dash_is_stderr(tmp_path: Path) -> None:
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    cmd = [sys.executable, "-m", "tapster", "--listen=127.0.0.1:0", "--access-log=-", APP]
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen(cmd, cwd=TESTS_DIR, env=child_env(), stdin=subprocess.DEVNULL, stdout=o, stderr=e)
    try:
        serving = wait_until(lambda: re.search(r"Serving on http://127\.0\.0\.1:(\d+)", err.read_text()), 15, lambda: err.read_text())
        assert serving
        status, _, _ = http_get("127.0.0.1", int(serving.group(1)), "/hello?to=stderr")
        assert status == 200
        line = wait_until(lambda: [x for x in err.read_text().splitlines() if "to=stderr" in x], 5, lambda: f"the line on stderr: {err.read_text()}")
        assert COMBINED.match(line[0]) and line[0].startswith('127.0.0.1 - - ['), line
        assert "to=stderr" not in out.read_text()
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_two_workers_write_whole_lines_to_one_file(tapster: Callable[..., Tapster], access_log: Path) -> None:
    srv = tapster("--workers=2", "--reuse-port", "--threads=8", f"--access-log={access_log}", "--access-log-format=%(p)s %(r)s %(s)s %(a)s", app=APP)
    workers = srv.workers(2)
    long_ua = "w" * 6000  # lines longer than a pipe's atomic write
    clients, per_client = 8, 25
    failures: list[str] = []

    def client(c: int) -> None:
        for i in range(per_client):
            try:
                status, _, _ = request(srv, get(f"/big?n=20000&c={c}&i={i}", f"User-Agent: {long_ua}"))
                if status != 200:
                    failures.append(f"{c}/{i}: {status}")
            except OSError as exc:
                failures.append(f"{c}/{i}: {exc!r}")

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures[:5]
    lines = log_lines(access_log, clients * per_client, timeout=10)
    assert len(lines) == clients * per_client
    shape = re.compile(r"^<(\d+)> GET /big\?n=20000&c=(\d+)&i=(\d+) HTTP/1\.1 200 (w+)$")
    matches = [shape.match(line) for line in lines]
    assert all(m and len(m[4]) == len(long_ua) for m in matches), [line[:120] for line, m in zip(lines, matches) if not m]
    assert {int(m[1]) for m in matches if m} == workers, "both workers' lines"
    assert sorted((int(m[2]), int(m[3])) for m in matches if m) == [(c, i) for c in range(clients) for i in range(per_client)]


# --- refusals and the default -----------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["%(h)s %(zz)s", "%(h)s %(Q)s %(s)s"])
def test_an_invalid_format_is_refused(fmt: str) -> None:
    bad = re.search(r"%\((zz|Q)\)s", fmt)
    assert bad
    result = subprocess.run(
        [sys.executable, "-m", "tapster", "--listen=127.0.0.1:0", "--access-log=-", f"--access-log-format={fmt}", APP],
        cwd=TESTS_DIR, env=child_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert result.returncode == 1, (result.returncode, result.stderr)  # a bad option value, as tests/test_operator_cli.py
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "access_log_format" in lines[0] and bad.group(1) in lines[0], lines[0]
    assert "Serving on" not in result.stdout + result.stderr


def test_no_access_log_by_default(make_server: MakeServer, tmp_path: Path) -> None:
    srv = make_server(f"--chdir={tmp_path}", app=APP)
    for i in range(5):
        assert request(srv, get(f"/hello?unlogged={i}"))[0] == 200
    assert request(srv, get("/status/404?unlogged=x"))[0] == 404
    assert srv.stop() == 0
    assert "unlogged" not in srv.log(), srv.log()
    assert not list(tmp_path.iterdir()), list(tmp_path.iterdir())


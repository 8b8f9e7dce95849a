"""Helpers for end-to-end tests: a Tapster server in a child process (started through
the real command line), probes of a process's memory and descriptors, and the raw
HTTP/1.1 client of http_reader.py (re-exported here), which shows exactly what went
over the wire and whether the server closed the connection."""

from __future__ import annotations

import functools
import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

from h2_bridge import H2Bridge
from http_reader import ConnectionClosed, RawConn, Response  # noqa: F401 (re-exported: the tests import them from here)

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
SERVING = re.compile(r"Serving on https?://(.+):(\d+|/.+)$")


#: `TAPSTER_TEST_TRANSPORT=tls` runs the suites over TLS: every `ServerProcess` on a
#: TCP address gets the test certificate, and `connect()` and `url()` speak TLS
#: (`make test` runs the WSGI behaviour suites both ways).
OVER_TLS = os.environ.get("TAPSTER_TEST_TRANSPORT", "") == "tls"
#: `TAPSTER_TEST_TRANSPORT=h2` runs them over HTTP/2 (h2c): every `ServerProcess` on a
#: TCP address gets `--http2`, and `connect()` speaks HTTP/2 through h2_bridge.py,
#: translating the tests' HTTP/1.1 bytes. Tests of HTTP/1.1 itself are `http1_only`.
OVER_H2 = os.environ.get("TAPSTER_TEST_TRANSPORT", "") == "h2"
#: Whether a file body goes out with the kernel's sendfile(2), and counts in
#: `_tapster.stats()`: not under TLS (read and encrypted) nor HTTP/2 (DATA frames).
ZERO_COPY = not (OVER_TLS or OVER_H2)
#: SERVER_PROTOCOL of the requests the tests send.
PROTOCOL = "HTTP/2" if OVER_H2 else "HTTP/1.1"
#: Whether the server's own error pages end the connection: an HTTP/1.1 one closes
#: after them; over HTTP/2 only the stream ends.
ERROR_PAGE_CLOSES = not OVER_H2


@dataclass(frozen=True)
class TlsTestFiles:
    """A CA made for this test run (trustme) and a server certificate it signed for
    localhost, 127.0.0.1 and ::1, as PEM files; nothing is checked in."""

    ca: Any  # trustme.CA, to issue more (client certificates)
    ca_file: str
    certfile: str
    keyfile: str

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        ctx.check_hostname = False  # the tests connect to 127.0.0.1 by address
        return ctx


@functools.cache
def tls_test_files() -> TlsTestFiles:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1", "::1")
    where = tempfile.mkdtemp(prefix="tapster-tls-")
    paths = {name: os.path.join(where, name) for name in ("ca.pem", "cert.pem", "key.pem")}
    ca.cert_pem.write_to_path(paths["ca.pem"])
    cert.cert_chain_pems[0].write_to_path(paths["cert.pem"])
    cert.private_key_pem.write_to_path(paths["key.pem"])
    if OVER_TLS:
        # The clients the suites run (requests, httpx, curl, urllib) trust the test CA.
        for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
            os.environ[name] = paths["ca.pem"]
    return TlsTestFiles(ca, paths["ca.pem"], paths["cert.pem"], paths["key.pem"])


def tests_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment with the tests directory importable and unbuffered output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = TESTS_DIR + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def has_ipv6_loopback() -> bool:
    """Whether this machine can bind ::1 (some containers have no IPv6)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def rss_kib(pid: int) -> int:
    """The resident memory of process `pid`, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def fd_count(pid: int) -> int:
    """How many descriptors process `pid` has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def deleted_file_bytes(pid: int) -> int:
    """Total size of the files process `pid` holds open that have no name any more
    (its temporary files)."""
    total = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if "(deleted)" in os.readlink(f"/proc/{pid}/fd/{fd}"):
                total += os.stat(f"/proc/{pid}/fd/{fd}").st_size
        except OSError:
            continue  # closed meanwhile
    return total


def http_get(host: str, port: int, path: str = "/echo", timeout: float = 5.0) -> tuple[int, http.client.HTTPMessage, bytes]:
    """A GET with http.client; `host` may be a bracketed IPv6 address."""
    conn = http.client.HTTPConnection(host.strip("[]"), port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def echo_environ(host: str, port: int, path: str = "/echo") -> dict[str, Any]:
    """The environ the echo app saw for a GET of `path`."""
    status, _, body = http_get(host, port, path)
    assert status == 200, body
    return json.loads(body)["environ"]


class CapturedProcess:
    """A child process run from the tests directory, its stdout and stderr read line by
    line by a thread."""

    def __init__(self, cmd: list[str], env: dict[str, str], pass_fds: tuple[int, ...] = ()) -> None:
        self.cmd = cmd
        self.proc = subprocess.Popen(
            cmd,
            cwd=TESTS_DIR,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            pass_fds=pass_fds,  # kept open under the same numbers
        )
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self._lines.append(line.rstrip("\n"))

    def lines(self) -> list[str]:
        with self._lock:
            return list(self._lines)

    def log(self) -> str:
        return "\n".join(self.lines())

    def wait_for_log(self, pattern: str, timeout: float = 5.0) -> str:
        """Waits until a log line matches `pattern` (a regex) and returns it."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            with self._lock:
                for line in self._lines:
                    if regex.search(line):
                        return line
            time.sleep(0.02)
        raise AssertionError(f"no log line matching {pattern!r}:\n{self.log()}")


class ServerProcess(CapturedProcess):
    """`python -m tapster [args] APP` on a free port, with its log captured."""

    #: Whether connect() and url() speak TLS (the server was given a certificate).
    tls = False
    #: Whether connect() speaks HTTP/2 (`TAPSTER_TEST_TRANSPORT=h2`).
    h2 = False

    def __init__(self, app: str, *args: str, listen: str | None = "127.0.0.1:0", env: dict[str, str] | None = None) -> None:
        cmd = [sys.executable, "-m", "tapster"]
        if listen is not None:
            cmd.append(f"--listen={listen}")
        cmd.extend(args)
        if OVER_TLS and listen is not None and not listen.startswith(("fd://", "http://")):
            if not any(a.startswith("--certfile") for a in args):
                certs = tls_test_files()
                cmd += [f"--certfile={certs.certfile}", f"--keyfile={certs.keyfile}"]
        self.tls = any(a.startswith("--certfile") for a in cmd) and not (listen or "").startswith("http://")
        self.h2 = OVER_H2 and listen is not None and not listen.startswith(("fd://", "unix:")) and not self.tls
        if self.h2 and "--http2" not in args:
            cmd.append("--http2")
        cmd.append(app)
        super().__init__(cmd, tests_env(env))
        self.host, self.port = self._wait_for_listen()

    def _wait_for_listen(self, timeout: float = 15.0) -> tuple[str, int | str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for line in self._lines:
                    m = SERVING.search(line)
                    if m:
                        port = m.group(2)
                        return m.group(1), int(port) if port.isdigit() else port
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.proc.kill()
        raise RuntimeError(f"server did not start: {self.cmd}\n{self.log()}")

    @property
    def address(self) -> tuple[str, int]:
        assert isinstance(self.port, int)
        return (self.host.strip("[]"), self.port)

    @property
    def scheme(self) -> str:
        """What `wsgi.url_scheme` says by default: https on a TLS listener."""
        return "https" if self.tls else "http"

    def http_connection(self, timeout: float = 5.0) -> http.client.HTTPConnection:
        """An http.client connection to the server (HTTPS on a TLS listener)."""
        if self.tls:
            ctx = tls_test_files().client_context()
            return http.client.HTTPSConnection(*self.address, timeout=timeout, context=ctx)
        return http.client.HTTPConnection(*self.address, timeout=timeout)

    def url(self, path: str = "/") -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}{path}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"server did not stop on signal {sig}:\n{self.log()}")
        self._reader.join(timeout=5)
        return self.proc.returncode

    def connect(self, timeout: float = 5.0) -> RawConn:
        sock = self.wrap(socket.create_connection(self.address, timeout=timeout))
        if self.h2:
            return RawConn(H2Bridge(sock))  # type: ignore[arg-type]
        return RawConn(sock)

    def wrap(self, sock: socket.socket) -> socket.socket:
        """A socket connected to the server, ready for HTTP: over TLS on a TLS listener."""
        if self.tls:
            return tls_test_files().client_context().wrap_socket(sock, server_hostname="localhost")
        return sock

    def calls(self) -> int:
        """How many times the app ran (apps count their calls at /__calls__)."""
        with self.connect() as conn:
            conn.send(b"GET /__calls__ HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            return int(conn.read_response().body)


def exchange(server: ServerProcess, request: bytes, head_request: bool = False) -> tuple[Response, bool]:
    """Sends one raw request on a new connection; returns the response and whether
    the server closed the connection afterwards."""
    with server.connect() as conn:
        conn.send(request)
        resp = conn.read_response(head_request=head_request)
        return resp, conn.is_closed(0.5)

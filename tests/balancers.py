"""Real load balancers for end-to-end tests: HAProxy and nginx, the Debian binaries run
directly (not the system services) on free loopback ports, each with its own
temporary directory holding its configuration, pid file, logs and (nginx) temporary
paths. `haproxy(...)` and `nginx(...)` are context managers: they start the balancer,
wait until it accepts connections, and stop it afterwards (SIGTERM, then SIGKILL of
its process group), every wait bounded.

A test that needs a balancer which is not installed is skipped, with the reason, only
when `./scripts/ensure-packages` cannot install it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_binary(name: str, package: str) -> str:
    """The path of `name`, installing `package` if it is missing; skips the test when
    it cannot be installed."""
    found = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), None)
    if found:
        return found
    ensure = os.path.join(ROOT, "scripts", "ensure-packages")
    result = subprocess.run([ensure, package], capture_output=True, text=True, timeout=600)
    found = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if found:
        return found
    reason = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
    pytest.skip(f"{name} is not installed and `scripts/ensure-packages {package}` could not install it: {reason[0]}")


@dataclass
class Balancer:
    """A running balancer: its process, the port it serves on and its directory."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    workdir: str
    logs: tuple[str, ...]  # files under workdir worth showing when a test fails
    noise: str = r"^$"  # log lines not worth showing (a regex)

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def log(self, tail: int = 30) -> str:
        parts = []
        for name in self.logs:
            path = os.path.join(self.workdir, name)
            with contextlib.suppress(OSError), open(path, errors="replace") as f:
                lines = [line for line in f.read().splitlines() if not re.search(self.noise, line)][-tail:]
                parts.append(f"--- {self.name} {name} (last {len(lines)} lines)\n" + "\n".join(lines))
        return "\n".join(parts)

    def admin(self, command: str, timeout: float = 2.0) -> str:
        """HAProxy only: the answer of its admin socket to `command`."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(os.path.join(self.workdir, "admin.sock"))
            s.sendall(command.encode() + b"\n")
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        return out.decode()

    def server_states(self) -> dict[str, int]:
        """HAProxy only: each server's operational state (0 down, 2 up) by name."""
        states: dict[str, int] = {}
        for line in self.admin("show servers state").splitlines():
            fields = line.split()
            if len(fields) > 5 and fields[0].isdigit():
                states[fields[3]] = int(fields[5])
        return states

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):  # nginx's workers, whatever happened to the master
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(STOP_TIMEOUT)


def _start(name: str, cmd: list[str], port: int, workdir: str, logs: tuple[str, ...], noise: str = r"^$") -> Balancer:
    out = open(os.path.join(workdir, "stdout.log"), "wb")
    try:
        proc = subprocess.Popen(cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        out.close()
    balancer = Balancer(name, proc, port, workdir, ("stdout.log", *logs), noise)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with socket.create_connection(balancer.address, timeout=1):
                return balancer
        except OSError:
            time.sleep(0.05)
    balancer.stop()
    raise RuntimeError(f"{name} did not start listening on port {port} (exit status {proc.returncode}):\n{balancer.log()}")


Starter = Callable[[str, str, int], Balancer]  # (binary, workdir, port) -> a started balancer

T = TypeVar("T")


def on_a_free_port(start: Callable[[int], T]) -> T:
    """`start(port)` on a free port, tried again on another (up to 3 times) when it
    raises RuntimeError: the port may be taken between the check and the start."""
    for attempt in range(3):
        try:
            return start(free_port())
        except RuntimeError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _running(name: str, package: str, make: Starter) -> Iterator[Balancer]:
    binary = require_binary(name, package)
    workdir = tempfile.mkdtemp(prefix=f"tapster-{name}-")
    balancer: Balancer | None = None
    try:
        balancer = on_a_free_port(lambda port: make(binary, workdir, port))
        yield balancer
    finally:
        if balancer is not None:
            balancer.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# ----- HAProxy -------------------------------------------------------------------------

HAPROXY_CFG = """\
global
    log stderr format raw local0 info
    pidfile {dir}/haproxy.pid
    stats socket {dir}/admin.sock mode 600 level admin
    maxconn 1024

defaults
    mode http
    log global
    option httplog
    option dontlog-normal
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout http-request 10s
    timeout http-keep-alive 10s
    timeout check 1s
    # Up to 3 more attempts, each on another server if there is one.
    retries 3
    option redispatch 1

frontend web
    bind 127.0.0.1:{port}
    # The POSTs' X-Request-Id in the log lines, to match them with the app's ledger.
    http-request capture req.hdr(X-Request-Id) len 32
    default_backend tapster

backend tapster
    balance roundrobin
    option httpchk GET /health
    http-check expect status 200
    # Retry when no connection could be made (the request never left), and when the
    # server closed or timed out without a byte of response (it may have run) ...
    retry-on conn-failure empty-response response-timeout
    # ... the latter only for GET and HEAD (METH_GET): a POST is retried only if unsent.
    http-request disable-l7-retry if !METH_GET
    http-reuse safe
{source}    default-server check inter 200ms fall 1 rise 2{server_options}
{servers}
"""


def haproxy_config(directory: str, port: int, backends: list[tuple[str, int]], proxy: str | None = None) -> str:
    """The configuration: `backends` round robin; with `proxy` ("v1" or "v2") each
    connection to them starts with a PROXY protocol header, from source 127.0.0.1."""
    servers = "\n".join(f"    server s{i} {host}:{p}" for i, (host, p) in enumerate(backends))
    option = {None: "", "v1": " send-proxy", "v2": " send-proxy-v2"}[proxy]
    source = "    source 127.0.0.1\n" if proxy else ""
    return HAPROXY_CFG.format(dir=directory, port=port, servers=servers, server_options=option, source=source)


@contextlib.contextmanager
def haproxy(backends: list[tuple[str, int]], proxy: str | None = None) -> Iterator[Balancer]:
    """HAProxy in front of `backends` (see haproxy_config)."""

    def make(binary: str, workdir: str, port: int) -> Balancer:
        cfg = os.path.join(workdir, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(haproxy_config(workdir, port, backends, proxy))
        return _start("haproxy", [binary, "-f", cfg, "-db"], port, workdir, ())

    with _running("haproxy", "haproxy", make) as balancer:
        yield balancer


# ----- nginx ---------------------------------------------------------------------------

NGINX_CONF = """\
{user}worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 1024; }}
http {{
    log_format upstream '$remote_addr "$request" $status $body_bytes_sent '
                        'upstream=$upstream_addr status=$upstream_status time=$upstream_response_time';
    # Only what went wrong or was retried: a status other than 2xx, or more than one upstream.
    map "$status $upstream_status" $unusual {{ "~^2\\d\\d \\d+$" 0; default 1; }}
    access_log {dir}/access.log upstream if=$unusual;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    client_max_body_size 16m;
    client_body_buffer_size 256k;

    upstream tapster {{
{servers}
        keepalive 16;
        keepalive_timeout 30s;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://tapster;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            # The next server after a connection error, a timeout or a 502; nginx
            # passes a POST on only if it was never sent (no non_idempotent here).
            proxy_next_upstream error timeout http_502;
            proxy_next_upstream_tries 3;
            proxy_connect_timeout 1s;
            proxy_send_timeout 30s;
            proxy_read_timeout 30s;
        }}
    }}
}}
"""


def nginx_config(directory: str, port: int, backends: list[tuple[str, int]]) -> str:
    # max_fails=0: no passive marking. With the default (1 in 10 s), the connection a
    # reload's drain closes under nginx's reuse counts as a failure; a restart of the
    # other instance within fail_timeout then leaves no live upstream and nginx answers
    # 502 even to GETs (seen here with max_fails=1 fail_timeout=1s). A refused
    # connection costs nothing on a LAN: nginx goes straight to the next server.
    servers = "\n".join(f"        server {host}:{p} max_fails=0;" for host, p in backends)
    # As root, the workers would switch to a user that cannot write the temporary paths.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return NGINX_CONF.format(dir=directory, port=port, servers=servers, user=user)


@contextlib.contextmanager
def nginx(backends: list[tuple[str, int]]) -> Iterator[Balancer]:
    """nginx in front of `backends`, with keep-alive to them (see nginx_config)."""

    def make(binary: str, workdir: str, port: int) -> Balancer:
        conf = os.path.join(workdir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(nginx_config(workdir, port, backends))
        cmd = [binary, "-p", workdir, "-c", conf, "-e", os.path.join(workdir, "error.log"), "-g", "daemon off;"]
        # Refused connections (each retried on the next server) and routine notices.
        noise = r"\[(notice|info)\]|connect\(\) failed \(111"
        return _start("nginx", cmd, port, workdir, ("error.log", "access.log"), noise)

    with _running("nginx", "nginx", make) as balancer:
        yield balancer

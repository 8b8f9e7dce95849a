"""The benchmark harness: Tapster against Waitress, Gunicorn, Granian, bjoern, Pyruvate
and nginx, side by side in one run, on this machine.

Each server runs alone, pinned to CPU 0, with wrk (one thread) pinned to CPU 1. For
each scenario: a warm-up, then a measured run recording requests/s, p50/p99 latency,
MB/s, the server's CPU time (utime+stime of its whole process tree, from /proc) per
request and per GB, and its peak RSS (sampled, whole tree). Results go to a JSON-lines
file and a Markdown table with every figure also given as a ratio to Tapster's.

The `-w2` scenarios run the servers that have worker processes (Tapster `--workers 2`,
Gunicorn `-w 2 -k gthread`, Granian `--workers 2`) with two workers each. A machine
with two cores has no core to spare for the client there: the server's whole tree
and wrk (still one thread) may all run on both CPUs, and the kernel shares them out.
Every server meets the same client, but wrk's CPU comes out of the server's share, so
a server that spends less per request leaves wrk more and gets more requests;
requests/s at hello-c64-w2 is bound by the client as much as by the server, and CPU per
request (the whole tree: supervisor or arbiter included) is the figure to compare.
cpu-1ms-c16-w2 (about 1 ms of Python per request, a loop calibrated once by the harness
and passed to every server in BENCH_CPU_LOOPS, so all do the same work) is where the
second worker counts: wrk needs little there, and the GIL-bound work can use both
cores only in two processes. Under each -w2 table, each worker's CPU seconds in the
measured run show how the keep-alive connections were shared out among the workers.

The static-* scenarios fetch a 1 KiB and a 1 MiB file from one directory (STATIC, made
by the harness) under /static/, each server with its own static files: Tapster's mount
(--static /static=DIR, the app never called), nginx (sendfile on), Granian
(--static-path-mount, WSGI) and tapster+whitenoise (Tapster running the hello app in
WhiteNoise, whitenoise_app.py); the others sit them out. Their ratios are to nginx's, and
a note under each table holds Tapster's mount against the issue's targets. The file
scenarios (file-*, static-1m) also show the whole machine's CPU per GB: every CPU's busy
time from /proc/stat over the measured run (server, wrk, kernel and any other load), with
how much of it was neither the server's nor wrk's.

hello-c64-tls is hello over HTTPS (TLS 1.3, one self-signed ECDSA P-256 certificate made
by the harness for every server) for the servers that terminate TLS themselves: Tapster
(--certfile), nginx (ssl), Granian (--ssl-certificate) and Gunicorn (--certfile). wrk keeps
its connections, so this measures encryption per request more than handshakes.

    make bench                                  # everything (about 25 minutes)
    make bench BENCH_ARGS="--quick"             # 3 s runs
    make bench BENCH_ARGS="--servers tapster,granian --scenarios hello-c64"
    make bench BENCH_ARGS="--servers tapster --scenarios cpu-1ms-c16-w2 --tapster-args=--reuse-port"
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import glob
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata
from typing import Callable, Iterator

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = sys.executable
BIN = os.path.dirname(PY)
FILES = os.environ.get("BENCH_FILES", "/tmp/tapster-bench-files")
SERVER_CPU = "0"
CLIENT_CPU = "1"
SHARED_CPUS = "0,1"
PORT = 19080
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    app: str
    connections: int
    path: str = "/"
    lua: str | None = None
    threads: int | None = None  # set for every server that has threads
    slow_clients: int = 0
    nginx_path: str | None = None  # nginx serves only hello and files
    is_file: bool = False
    workers: int = 1  # above 1: only the servers with worker processes; no pinning
    observe: str = ""  # "access_log": each server's own access log to a file; "metrics": Tapster's, scraped every second
    baseline: str | None = None  # the scenario this one adds a feature to: its cost is reported against it
    static: bool = False  # a file under STATIC served by each server's own static files (no WSGI app for Tapster)
    tls: bool = False  # HTTPS with the same certificate (TLS_CERT) for every server that has TLS
    h2: int = 0  # above 0: HTTP/2 by prior knowledge (h2c), h2load with this many streams per connection

    @property
    def ratio_base(self) -> str:
        """The server every figure of this scenario is given as a ratio to."""
        return "nginx" if self.static else "tapster"

    @property
    def server_cpus(self) -> str:
        return SERVER_CPU if self.workers == 1 else SHARED_CPUS

    @property
    def client_cpus(self) -> str:
        return CLIENT_CPU if self.workers == 1 else SHARED_CPUS

    def path_for(self, server: str) -> str:
        return self.nginx_path if server == "nginx" and self.nginx_path else self.path


SCENARIOS = [
    Scenario("hello-c1", "hello", 1, nginx_path="/"),
    Scenario("hello-c16", "hello", 16, nginx_path="/"),
    Scenario("hello-c64", "hello", 64, nginx_path="/"),
    Scenario("hello-c64-access-log", "hello", 64, observe="access_log", baseline="hello-c64"),
    Scenario("hello-c64-metrics", "hello", 64, observe="metrics", baseline="hello-c64"),
    Scenario("hello-c64-tls", "hello", 64, nginx_path="/", tls=True),
    Scenario("hello-h2-c4x16", "hello", 4, h2=16),
    Scenario("echo-64k", "echo", 16, lua="post64k.lua"),
    Scenario("stream-100x1k", "stream", 16),
    Scenario("file-1m", "file_1m", 16, nginx_path="/files/1m.bin", is_file=True),
    Scenario("file-64m", "file_64m", 4, nginx_path="/files/64m.bin", is_file=True),
    Scenario("file-64m-c64", "file_64m", 64, nginx_path="/files/64m.bin", is_file=True),
    # Static files: each server's own static-file serving, on the same directory (see
    # tapster_cmd, granian_cmd, NGINX_CONF and whitenoise_cmd); the app behind it is hello,
    # never called by Tapster's mount or Granian's (WhiteNoise passes it only other paths).
    Scenario("static-1k", "hello", 64, path="/static/1k.bin", nginx_path="/static/1k.bin", static=True),
    Scenario("static-1m", "hello", 64, path="/static/1m.bin", nginx_path="/static/1m.bin", static=True, is_file=True),
    Scenario("sleep-50ms-t8", "sleep", 64, threads=8),
    Scenario("hello-200-slow-clients", "hello", 64, slow_clients=200, nginx_path="/"),
    Scenario("hello-c64-w2", "hello", 64, workers=2),
    Scenario("cpu-1ms-c16-w2", "cpu_1ms", 16, workers=2),
]


@dataclasses.dataclass
class Server:
    name: str
    command: Callable[[Scenario, int], list[str]]
    distribution: str | None  # PyPI distribution, for its version
    supports: Callable[[Scenario], bool] = lambda s: True
    label: str = ""  # its name in the tables, if not `name`

    @property
    def shown(self) -> str:
        return self.label or self.name


TAPSTER_ARGS: list[str] = []  # --tapster-args: extra options, e.g. --reuse-port
#: Where the observability scenarios write their access logs (emptied per run).
LOG_DIR = tempfile.mkdtemp(prefix="tapster-bench-logs-")
METRICS_PORT = PORT + 1
#: The directory every server of the static-* scenarios serves under /static (made by make_files).
STATIC = os.path.join(FILES, "static")
STATIC_FILES = (("1k.bin", 1 << 10), ("1m.bin", 1 << 20))
#: The certificate (ECDSA P-256, self-signed for localhost) and key every server of the
#: TLS scenarios uses (made by make_files).
TLS_CERT = os.path.join(FILES, "tls-cert.pem")
TLS_KEY = os.path.join(FILES, "tls-key.pem")


def access_log_path(server: str) -> str:
    return os.path.join(LOG_DIR, f"{server}-access.log")


def tapster_cmd(s: Scenario, port: int) -> list[str]:
    cmd = [PY, "-m", "tapster", f"--listen=127.0.0.1:{port}"]
    if s.workers > 1:
        cmd.append(f"--workers={s.workers}")
    if s.threads:
        cmd.append(f"--threads={s.threads}")
    if s.observe == "access_log":
        cmd.append(f"--access-log={access_log_path('tapster')}")
    elif s.observe == "metrics":
        cmd.append(f"--metrics-listen=127.0.0.1:{METRICS_PORT}")
    if s.static:
        cmd += ["--static", f"/static={STATIC}"]
    if s.tls:
        cmd += [f"--certfile={TLS_CERT}", f"--keyfile={TLS_KEY}"]
    if s.h2:
        cmd.append("--http2")
    return cmd + TAPSTER_ARGS + [f"apps:{s.app}"]


def whitenoise_cmd(s: Scenario, port: int) -> list[str]:
    """Tapster with no static mount, running hello wrapped in WhiteNoise (whitenoise_app.py),
    which serves STATIC under /static/ in Python through Tapster's wsgi.file_wrapper."""
    return [PY, "-m", "tapster", f"--listen=127.0.0.1:{port}", *TAPSTER_ARGS, "whitenoise_app:application"]


def gunicorn_whitenoise_cmd(s: Scenario, port: int) -> list[str]:
    """WhiteNoise where it usually runs: Gunicorn (gthread, 1 worker, 4 threads)."""
    return [
        os.path.join(BIN, "gunicorn"), "-k", "gthread", "-w", "1", "--threads", "4",
        "-b", f"127.0.0.1:{port}", "--log-level", "warning", "whitenoise_app:application",
    ]


def waitress_cmd(s: Scenario, port: int) -> list[str]:
    cmd = [PY, "-m", "waitress", f"--listen=127.0.0.1:{port}"]
    if s.threads:
        cmd.append(f"--threads={s.threads}")
    return cmd + [f"apps:{s.app}"]


def gunicorn_cmd(s: Scenario, port: int) -> list[str]:
    log = ["--access-logfile", access_log_path("gunicorn")] if s.observe == "access_log" else []
    if s.tls:
        log += ["--certfile", TLS_CERT, "--keyfile", TLS_KEY]
    return [
        os.path.join(BIN, "gunicorn"), "-k", "gthread", "-w", str(s.workers),
        "--threads", str(s.threads or 4), "-b", f"127.0.0.1:{port}",
        "--log-level", "warning", *log, f"apps:{s.app}",
    ]


def granian_cmd(s: Scenario, port: int) -> list[str]:
    # Granian's access log goes through Python logging to its stderr (a file here);
    # its lines are INFO, so the level must let them through.
    log = ["--access-log", "--log-level", "info"] if s.observe == "access_log" else ["--log-level", "warning"]
    cmd = [
        os.path.join(BIN, "granian"), "--interface", "wsgi", "--workers", str(s.workers),
        "--host", "127.0.0.1", "--port", str(port), *log,
    ]
    if s.threads:
        cmd += ["--blocking-threads", str(s.threads)]
    if s.static:
        cmd += ["--static-path-mount", STATIC, "--static-path-route", "/static"]
    if s.tls:
        cmd += ["--ssl-certificate", TLS_CERT, "--ssl-keyfile", TLS_KEY]
    if s.h2:
        cmd += ["--http", "2"]
    return cmd + [f"apps:{s.app}"]


def bjoern_cmd(s: Scenario, port: int) -> list[str]:
    return [PY, "-c", f"import bjoern, apps; bjoern.run(apps.{s.app}, '127.0.0.1', {port})"]


def pyruvate_cmd(s: Scenario, port: int) -> list[str]:
    workers = s.threads or 4
    return [PY, "-c", f"import pyruvate, apps; pyruvate.serve(apps.{s.app}, '127.0.0.1:{port}', {workers})"]


NGINX_CONF = """
worker_processes 1;
daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 10000000;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port}{ssl};{tls}
        location = / {{ default_type text/plain; return 200 "Hello, world!"; }}
        location /files/ {{ alias {files}/; }}
        location /static/ {{ alias {static}/; }}
    }}
}}
"""


def nginx_cmd(s: Scenario, port: int) -> list[str]:
    tmp = tempfile.mkdtemp(prefix="tapster-bench-nginx-")
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        tls = f"\n        ssl_certificate {TLS_CERT};\n        ssl_certificate_key {TLS_KEY};" if s.tls else ""
        f.write(NGINX_CONF.format(tmp=tmp, port=port, files=FILES, static=STATIC, ssl=" ssl" if s.tls else "", tls=tls))
    return [shutil.which("nginx") or "/usr/sbin/nginx", "-c", conf, "-p", tmp]


def one_process(s: Scenario) -> bool:
    return s.workers == 1


def plain_or_logged(s: Scenario) -> bool:
    """Peers run the plain scenarios and the access-log one (their own log); the
    metrics scenario measures Tapster's metrics alone."""
    return one_process(s) and s.observe in ("", "access_log")


def plain(s: Scenario) -> bool:
    return one_process(s) and not s.observe


def app_only(s: Scenario) -> bool:
    """Waitress, Gunicorn, bjoern and Pyruvate have no static files of their own: they sit
    out the static-* scenarios (and all but Gunicorn have no TLS)."""
    return plain(s) and not s.static and not s.tls and not s.h2


SERVERS = [
    Server("tapster", tapster_cmd, "tapster"),
    Server("waitress", waitress_cmd, "waitress", supports=app_only),
    Server("gunicorn", gunicorn_cmd, "gunicorn", supports=lambda s: not s.static and not s.h2 and (s.workers > 1 or plain_or_logged(s))),
    Server("granian", granian_cmd, "granian", supports=lambda s: s.workers > 1 or plain_or_logged(s)),
    Server("bjoern", bjoern_cmd, "bjoern", supports=app_only),
    Server("pyruvate", pyruvate_cmd, "pyruvate", supports=app_only),
    Server("nginx", nginx_cmd, None, supports=lambda s: s.nginx_path is not None and plain(s) and not s.h2),
    Server("whitenoise", whitenoise_cmd, "whitenoise", supports=lambda s: s.static and plain(s), label="tapster+whitenoise"),
    Server(
        "gunicorn-whitenoise", gunicorn_whitenoise_cmd, "whitenoise",
        supports=lambda s: s.static and plain(s), label="gunicorn+whitenoise",
    ),
]


# ----- setup ---------------------------------------------------------------------------


def install_tools() -> dict[str, str]:
    """Installs wrk, nginx and the peers; returns {name: problem} for what failed."""
    problems: dict[str, str] = {}
    ensure = os.path.join(ROOT, "scripts", "ensure-packages")
    result = subprocess.run([ensure, "wrk", "nginx-light", "libev-dev", "openssl", "nghttp2-client", "curl"], capture_output=True, text=True)
    if result.returncode != 0:
        problems["debian"] = result.stderr.strip() or result.stdout.strip()
    for dist in ("waitress", "gunicorn", "granian", "bjoern", "pyruvate", "whitenoise"):
        try:
            metadata.version(dist)
            continue
        except metadata.PackageNotFoundError:
            pass
        r = subprocess.run([PY, "-m", "pip", "install", "-q", dist], capture_output=True, text=True)
        if r.returncode != 0:
            problems[dist] = (r.stderr.strip().splitlines() or ["pip install failed"])[-1]
    for tool in ("wrk", "nginx", "taskset"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            problems[tool] = "not installed"
    return problems


def make_files() -> None:
    """The files of the file-* scenarios in FILES, and of the static-* ones in STATIC."""
    os.makedirs(STATIC, exist_ok=True)
    for directory, files in ((FILES, (("1m.bin", 1 << 20), ("64m.bin", 64 << 20))), (STATIC, STATIC_FILES)):
        for name, size in files:
            path = os.path.join(directory, name)
            if not os.path.exists(path) or os.path.getsize(path) != size:
                with open(path, "wb") as f:
                    f.write(os.urandom(size))
    if not os.path.exists(TLS_CERT):
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-subj", "/CN=localhost", "-days", "30", "-keyout", TLS_KEY, "-out", TLS_CERT],
            check=True, capture_output=True,
        )


def version_of(server: Server) -> str:
    if server.distribution:
        try:
            return metadata.version(server.distribution)
        except metadata.PackageNotFoundError:
            return "not installed"
    out = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr
    m = re.search(r"nginx/([\d.]+)", out)
    return m.group(1) if m else "unknown"


# ----- process accounting -----------------------------------------------------------------


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
        except OSError:
            continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    """utime+stime of every thread of every process in the tree."""
    total = 0
    for p in tree(pid):
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
        except OSError:
            continue
    return total / CLK_TCK


def machine_busy_seconds() -> float:
    """Busy time of all the machine's CPUs, from /proc/stat's first line: user, nice,
    system, irq, softirq and steal (guest time is inside user already; idle and iowait are
    not busy)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def children_cpu_seconds() -> float:
    """utime+stime of this process's reaped children: around one wrk run, wrk's."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_by_worker(pid: int) -> dict[int, float]:
    """CPU seconds of each child's subtree (the workers), keyed by the child's pid."""
    return {child: cpu_seconds(child) for child in tree(pid) if child != pid and parent_of(child) == pid}


def parent_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return 0


def rss_bytes(pid: int) -> int:
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except OSError:
            continue
    return total


class PeakRss:
    """Samples the tree's RSS every 50 ms while active."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            self._stop.wait(0.05)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


# ----- running --------------------------------------------------------------------------


@contextlib.contextmanager
def running(server: Server, scenario: Scenario, port: int, cpu_loops: int) -> Iterator[subprocess.Popen[bytes]]:
    cmd = ["taskset", "-c", scenario.server_cpus, *server.command(scenario, port)]
    env = dict(os.environ, PYTHONPATH=HERE, BENCH_FILES=FILES, BENCH_CPU_LOOPS=str(cpu_loops))
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, cwd=HERE, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        try:
            wait_ready(proc, port, scenario.path_for(server.name), scenario.tls, bool(scenario.h2))
        except RuntimeError as exc:
            # What the server said about it, e.g. an option it does not know yet.
            log.seek(0)
            said = [line.strip() for line in log.read().decode(errors="replace").splitlines() if line.strip()]
            raise RuntimeError(f"{exc}: {' / '.join(said[-2:])}" if said else str(exc)) from None
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def wait_ready(proc: subprocess.Popen[bytes], port: int, path: str, tls: bool = False, h2: bool = False) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}")
        if h2:
            probe = subprocess.run(["curl", "-sf", "--http2-prior-knowledge", "-o", "/dev/null", f"http://127.0.0.1:{port}{path}"])
            if probe.returncode == 0:
                return
            time.sleep(0.1)
            continue
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as raw:
                s = ssl._create_unverified_context().wrap_socket(raw) if tls else raw
                s.sendall(f"GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n".encode())
                if s.recv(12).startswith(b"HTTP/1."):
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not become ready")


WRK_LATENCY = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(url: str, connections: int, seconds: float, lua: str | None, cpus: str = CLIENT_CPU) -> dict[str, float]:
    cmd = ["taskset", "-c", cpus, "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "10s"]
    if lua:
        cmd += ["-s", os.path.join(HERE, lua)]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=seconds + 60).stdout
    result: dict[str, float] = {}
    m = re.search(r"(\d+) requests in ([\d.]+)(m?s), ([\d.]+)([KMG]?B) read", out)
    if not m:
        raise RuntimeError(f"could not parse wrk output:\n{out}")
    result["requests"] = float(m.group(1))
    scale = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}[m.group(5)]
    result["bytes"] = float(m.group(4)) * scale
    result["rps"] = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    for pct, value, unit in WRK_LATENCY.findall(out):
        result[f"p{pct}_ms"] = float(value) * UNITS[unit]
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["socket_errors"] = float(sum(int(x) for x in errors.groups())) if errors else 0.0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non_2xx"] = float(non2xx.group(1)) if non2xx else 0.0
    return result


def h2load(url: str, connections: int, streams: int, seconds: float, cpus: str = CLIENT_CPU) -> dict[str, float]:
    """h2load (one thread) with `streams` concurrent streams on each connection, for
    `seconds`; the same figures as `wrk` gives (h2load reports no percentiles)."""
    cmd = ["taskset", "-c", cpus, "h2load", "-t1", f"-c{connections}", f"-m{streams}", f"-D{max(1, round(seconds))}", url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    done = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", out)
    rps = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", out)
    traffic = re.search(r"traffic: \S+ \((\d+)\) total", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not (done and rps and traffic and codes):
        raise RuntimeError(f"could not parse h2load output:\n{out}")
    return {
        "requests": float(done.group(4)),
        "bytes": float(traffic.group(1)),
        "rps": float(rps.group(2)),
        "socket_errors": float(int(done.group(5)) + int(done.group(6)) + int(done.group(7))),
        "non_2xx": float(int(codes.group(2)) + int(codes.group(3)) + int(codes.group(4))),
    }


def load(scenario: Scenario, url: str, seconds: float) -> dict[str, float]:
    if scenario.h2:
        return h2load(url, scenario.connections, scenario.h2, seconds, scenario.client_cpus)
    return wrk(url, scenario.connections, seconds, scenario.lua, scenario.client_cpus)


@contextlib.contextmanager
def slow_clients(port: int, count: int) -> Iterator[Callable[[], int]]:
    if count == 0:
        yield lambda: 0
        return
    proc = subprocess.Popen(
        ["taskset", "-c", CLIENT_CPU, PY, os.path.join(HERE, "slowloris.py"), str(port), str(count)],
        stdout=subprocess.PIPE, text=True,
    )
    time.sleep(1.5)
    try:
        yield lambda: count
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            out = ""
        print(f"      slow clients: {out.strip()}", flush=True)


@contextlib.contextmanager
def scraper(scenario: Scenario) -> Iterator[None]:
    """For the metrics scenario: a scrape of /metrics every second, as Prometheus
    would, for the whole run."""
    if scenario.observe != "metrics":
        yield
        return
    stop = threading.Event()

    def scrape() -> None:
        while not stop.wait(1.0):
            with contextlib.suppress(OSError):
                with socket.create_connection(("127.0.0.1", METRICS_PORT), timeout=2) as s:
                    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
                    while s.recv(65536):
                        pass

    thread = threading.Thread(target=scrape, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def measure(server: Server, scenario: Scenario, seconds: float, warmup: float, cpu_loops: int) -> dict[str, object]:
    port = PORT
    url = f"{'https' if scenario.tls else 'http'}://127.0.0.1:{port}{scenario.path_for(server.name)}"
    for old in glob.glob(os.path.join(LOG_DIR, "*")):
        os.remove(old)
    with running(server, scenario, port, cpu_loops) as proc:
        rss = PeakRss(proc.pid)
        with slow_clients(port, scenario.slow_clients), scraper(scenario):
            load(scenario, url, warmup)
            cpu_before = cpu_seconds(proc.pid)
            workers_before = cpu_by_worker(proc.pid)
            machine_before, client_before = machine_busy_seconds(), children_cpu_seconds()
            result = load(scenario, url, seconds)
            machine, client = machine_busy_seconds() - machine_before, children_cpu_seconds() - client_before
            cpu = cpu_seconds(proc.pid) - cpu_before
            workers_after = cpu_by_worker(proc.pid)
        peak = rss.stop()
    requests = result["requests"]
    expected = served_file_size(scenario)
    if requests and expected and result["bytes"] / requests < 0.99 * expected:
        # Not the file (an error page, or the app's hello instead of a static mount); wrk
        # gives the bytes read to 3 digits, hence the 1 % leeway.
        raise RuntimeError(f"{result['bytes'] / requests:,.0f} bytes per response, less than the {expected:,}-byte file")
    record: dict[str, object] = {
        "server": server.name,
        "scenario": scenario.name,
        "workers": scenario.workers,
        **result,
        "mb_per_s": result["bytes"] / seconds / 1e6,
        "cpu_s": cpu,
        # No completed request: no per-request CPU and no latency to speak of.
        "cpu_us_per_req": cpu / requests * 1e6 if requests else None,
        "cpu_s_per_gb": cpu / (result["bytes"] / 1e9) if result["bytes"] else None,
        # Every CPU's busy time over the measured run: the server, wrk, the kernel's work on
        # both ends of the loopback (softirq included) and whatever else ran meanwhile.
        "machine_cpu_s": machine,
        "client_cpu_s": client,  # wrk's utime+stime
        # The machine's busy time that was neither the server's nor wrk's: the kernel's
        # interrupts, the harness and any other load (large: a run disturbed by it).
        "other_cpu_s": machine - cpu - client,
        "machine_cpu_s_per_gb": machine / (result["bytes"] / 1e9) if result["bytes"] else None,
        "peak_rss_mib": peak / (1 << 20),
    }
    if scenario.workers > 1:
        # How the work was shared out: each worker's CPU seconds in the measured run (a
        # worker that took most keep-alive connections shows here).
        record["worker_cpu_s"] = sorted(
            (round(after - workers_before.get(child, 0.0), 2) for child, after in workers_after.items()), reverse=True
        )
    if not requests or scenario.h2:
        record["p50_ms"] = record["p99_ms"] = None
    log_file = access_log_path(server.name)
    if scenario.observe == "access_log" and os.path.exists(log_file):
        # Proof the log was written: about one line per request of warm-up and run.
        with open(log_file, "rb") as f:
            record["access_log_lines"] = sum(1 for _ in f)
    return record


def served_file_size(scenario: Scenario) -> int:
    """The size of the file a file-* or static-* scenario fetches (0 for the others)."""
    if scenario.static:
        return os.path.getsize(os.path.join(STATIC, scenario.path.rsplit("/", 1)[1]))
    if scenario.is_file and scenario.nginx_path:
        return os.path.getsize(os.path.join(FILES, scenario.nginx_path.rsplit("/", 1)[1]))
    return 0


def fmt(value: object, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def ratio(value: object, base: object) -> str:
    if not isinstance(value, float) or not isinstance(base, float) or base == 0:
        return ""
    return f" ({value / base:.2f}×)"


def markdown(records: list[dict[str, object]], machine: str, versions: dict[str, str], command: str, problems: dict[str, str], cpu_loops: int) -> str:
    lines = [
        f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {machine}.",
        f"Command: `{command}`. Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        "Server pinned to CPU 0, wrk (1 thread) to CPU 1. Ratios in parentheses are to Tapster's figure in the same run "
        "(static-* scenarios: to nginx's).",
        "CPU is the server's utime+stime (whole process tree) per request, or per GB for files. Machine CPU is every "
        "CPU's busy time (/proc/stat: user+nice+system+irq+softirq+steal) over the measured run, per GB read by wrk: "
        "the server, wrk, the kernel on both ends of the loopback, and anything else the machine ran meanwhile.",
    ]
    if any(s.static for s in SCENARIOS if any(r["scenario"] == s.name for r in records)):
        lines.append(
            f"static-* scenarios: files in {STATIC} under /static/, each server's own static files: Tapster "
            "--static /static=DIR (the app is not called), nginx sendfile on, Granian --static-path-mount DIR "
            "--static-path-route /static (WSGI, hello app), tapster+whitenoise: Tapster running "
            "WhiteNoise(hello, root=DIR, prefix=\"static/\"). Targets compare requests/s unless CPU/req is named."
        )
    if any(s.workers > 1 for s in SCENARIOS if any(r["scenario"] == s.name for r in records)):
        lines.append(
            "-w2 scenarios (instead of the pinning above): 2 worker processes (Tapster --workers 2, Gunicorn -w 2 -k gthread, "
            f"Granian --workers 2); the server's tree and wrk (1 thread) share CPUs {SHARED_CPUS}, unpinned; "
            f"cpu_1ms spins {cpu_loops} loops per request (about 1 ms)."
        )
    lines.append("")
    if problems:
        lines.append("Not measured: " + "; ".join(f"{k}: {v}" for k, v in problems.items()) + ".")
        lines.append("")
    scenarios = list(dict.fromkeys(str(r["scenario"]) for r in records))
    for name in scenarios:
        rows = [r for r in records if r["scenario"] == name]
        scenario = next((s for s in SCENARIOS if s.name == name), None)
        base_name = scenario.ratio_base if scenario else "tapster"
        base = next((r for r in rows if r["server"] == base_name and "error" not in r), {})
        columns = cpu_columns(scenario)
        lines.append(f"**{name}**" + (f" (ratios to {shown(base_name)})" if base_name != "tapster" else ""))
        lines.append("")
        head = ["server", "req/s", "p50 ms", "p99 ms", "MB/s", *(label for _, label in columns), "peak RSS MiB", "errors"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for r in rows:
            if "error" in r:
                lines.append(f"| {shown(str(r['server']))} | failed: {r['error']} |" + " |" * (len(head) - 2))
                continue
            errors = int(float(r.get("socket_errors", 0.0)) + float(r.get("non_2xx", 0.0)))  # type: ignore[arg-type]
            cells = [shown(str(r["server"]))]
            for key, digits in (("rps", 0), ("p50_ms", 2), ("p99_ms", 2), ("mb_per_s", 1), *((k, 2) for k, _ in columns), ("peak_rss_mib", 1)):
                cells.append(fmt(r.get(key), digits) + ratio(r.get(key), base.get(key)))
            cells.append(str(errors))
            lines.append("| " + " | ".join(cells) + " |")
        cpu_label = columns[0][1]
        splits = [f"{r['server']} {r['worker_cpu_s']}" for r in rows if "worker_cpu_s" in r]
        if splits:
            lines.append("")
            lines.append("Each worker's CPU seconds in the measured run: " + "; ".join(splits) + ".")
        spreads = [
            f"{shown(str(r['server']))} {r['cpu_range'][0]}–{r['cpu_range'][1]} ({r['runs']} runs)"  # type: ignore[index]
            for r in rows
            if "cpu_range" in r
        ]
        if spreads:
            lines.append("")
            lines.append(f"Each row is the run with the median {cpu_label}; its range over the runs: " + "; ".join(spreads) + ".")
        shares = [
            f"{shown(str(r['server']))} {float(r['cpu_s']):.1f} + {float(r['client_cpu_s']):.1f} + {float(r['other_cpu_s']):.1f}"  # type: ignore[arg-type]
            for r in rows
            if "other_cpu_s" in r
        ]
        if scenario is not None and scenario.is_file and shares:
            lines.append("")
            lines.append("Machine CPU seconds of the measured run, server + wrk + the rest (interrupts, other load): " + "; ".join(shares) + ".")
        if scenario is not None and scenario.static:
            lines.append("")
            lines.append(static_targets(rows))
        lines.append("")
    return "\n".join(lines)


def shown(server: str) -> str:
    """A server's name in the tables (the whitenoise row is Tapster running WhiteNoise)."""
    return next((s.shown for s in SERVERS if s.name == server), server)


def cpu_columns(scenario: Scenario | None) -> list[tuple[str, str]]:
    """The CPU figures of a scenario's table: per request, or per GB for files, with the
    whole machine's per GB beside the server's; static-1m has both, for its targets are
    per request."""
    per_gb = [("cpu_s_per_gb", "CPU s/GB"), ("machine_cpu_s_per_gb", "machine CPU s/GB")]
    if scenario is None or not scenario.is_file:
        return [("cpu_us_per_req", "CPU µs/req")]
    if scenario.static:
        return [("cpu_us_per_req", "CPU µs/req"), *per_gb]
    return per_gb


#: The issue's targets for Tapster's static mount: (peer, figure, at least or at most, ratio).
STATIC_TARGETS = (
    ("nginx", "rps", ">=", 0.9),
    ("nginx", "cpu_us_per_req", "<=", 1.2),
    ("whitenoise", "rps", ">=", 5.0),
    ("gunicorn-whitenoise", "rps", ">=", 5.0),
    ("granian", "rps", ">=", 1.5),
)


def static_targets(rows: list[dict[str, object]]) -> str:
    """A static-* scenario's note: Tapster's mount against each target, as Tapster's figure
    over the peer's."""
    by_server = {str(r["server"]): r for r in rows}
    tapster = by_server.get("tapster")
    if tapster is None or "error" in tapster:
        return "Targets for Tapster's static mount: not evaluated (" + ("Tapster failed" if tapster else "Tapster not run") + ")."
    notes = []
    for peer, key, sense, target in STATIC_TARGETS:
        what = "req/s" if key == "rps" else "CPU/req"
        bound = "≥" if sense == ">=" else "≤"
        other = by_server.get(peer)
        mine, theirs = tapster.get(key), (other or {}).get(key)
        if other is None or "error" in other or not isinstance(mine, float) or not isinstance(theirs, float) or not theirs:
            notes.append(f"{what} {bound} {target:g}× {shown(peer)}: not measured")
            continue
        value = mine / theirs
        met = value >= target if sense == ">=" else value <= target
        notes.append(f"{what} {bound} {target:g}× {shown(peer)}: {value:.2f}× ({'met' if met else 'not met'})")
    errors = float(tapster.get("socket_errors", 0.0)) + float(tapster.get("non_2xx", 0.0))  # type: ignore[arg-type]
    tail = f" (Tapster's run had {int(errors)} errors)" if errors else ""
    return "Tapster's static mount vs the targets: " + "; ".join(notes) + tail + "."


def run_scenario(
    scenario: Scenario,
    servers: list[Server],
    unavailable: set[str],
    args: argparse.Namespace,
    cpu_loops: int,
    jsonl: str,
    runs: dict[tuple[str, str], list[dict[str, object]]],
) -> None:
    """One run of `scenario` on every server that supports it, appended to `runs`."""
    print(f"== {scenario.name}", flush=True)
    width = max([9, *(len(s.shown) for s in servers)])
    for server in servers:
        if server.name in unavailable or not server.supports(scenario):
            continue
        try:
            record = measure(server, scenario, args.duration, args.warmup, cpu_loops)
        except Exception as exc:  # a failing peer is reported, not hidden
            record = {"server": server.name, "scenario": scenario.name, "error": str(exc)[:200]}
        runs.setdefault((scenario.name, server.name), []).append(record)
        with open(jsonl, "a") as f:
            f.write(json.dumps(record) + "\n")
        if "error" in record:
            print(f"   {server.shown:{width}} FAILED: {record['error']}", flush=True)
        else:
            print(
                f"   {server.shown:{width}} {record['rps']:>10,.0f} req/s  p99 {fmt(record.get('p99_ms'), 2):>7} ms  "
                f"{record['mb_per_s']:8.1f} MB/s  cpu {fmt(record.get('cpu_us_per_req'), 2):>8} us/req  "
                + (
                    f"{fmt(record.get('cpu_s_per_gb'), 2)} s/GB (machine {fmt(record.get('machine_cpu_s_per_gb'), 2)})  "
                    if scenario.is_file else ""
                )
                + f"rss {record['peak_rss_mib']:6.1f} MiB"
                + (f"  workers cpu {record['worker_cpu_s']} s" if "worker_cpu_s" in record else ""),
                flush=True,
            )


def median_run(cell: list[dict[str, object]]) -> dict[str, object]:
    """The run with the median CPU per request (per GB for files) of a cell's runs,
    with the range of those figures over the runs when there were several."""
    good = [r for r in cell if "error" not in r]
    if not good:
        return cell[-1]
    key = "cpu_s_per_gb" if good[0].get("cpu_us_per_req") is None else "cpu_us_per_req"

    def cost(r: dict[str, object]) -> float:
        value = r.get(key)
        return float(value) if isinstance(value, (int, float)) else float("inf")

    ordered = sorted(good, key=cost)
    record = dict(ordered[len(ordered) // 2])
    if len(good) > 1:
        record["runs"] = len(good)
        record["cpu_range"] = [round(cost(ordered[0]), 3), round(cost(ordered[-1]), 3)]
        rps = sorted(float(r["rps"]) for r in good)  # type: ignore[arg-type]
        record["rps_range"] = [round(rps[0]), round(rps[-1])]
    return record


def feature_costs(runs: dict[tuple[str, str], list[dict[str, object]]]) -> str:
    """For each scenario that adds a feature to a baseline: what it costs each server,
    as the median over rounds of the ratio of CPU per request to the baseline's in the
    same round (pairing runs of one round cancels most of a noisy machine's drift)."""
    rows = []
    for scenario in SCENARIOS:
        if scenario.baseline is None:
            continue
        for server in SERVERS:
            with_feature = runs.get((scenario.name, server.name), [])
            without = runs.get((scenario.baseline, server.name), [])
            ratios = sorted(
                float(a["cpu_us_per_req"]) / float(b["cpu_us_per_req"])  # type: ignore[arg-type]
                for a, b in zip(with_feature, without)
                if a.get("cpu_us_per_req") and b.get("cpu_us_per_req")
            )
            if not ratios:
                continue
            median = ratios[len(ratios) // 2]
            rows.append(
                f"| {scenario.name} | {server.name} | {100 * (median - 1):+.1f} % | "
                f"{100 * (ratios[0] - 1):+.1f} % to {100 * (ratios[-1] - 1):+.1f} % | {len(ratios)} |"
            )
    if not rows:
        return ""
    head = [
        "**What each feature costs** (server CPU per request against the baseline scenario in the same round; "
        "median over rounds, and the range)",
        "",
        "| scenario | server | CPU per request | range | rounds |",
        "|---|---|---|---|---|",
    ]
    return "\n".join(head + rows) + "\n"


def machine_description() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.+)", f.read())
            if m:
                model = m.group(1).strip()
    return f"{os.cpu_count()} × {model}, Linux {platform.release()}, CPython {platform.python_version()}"


def calibrate_cpu_loops() -> int:
    """The cpu_1ms app's loop count for 1 ms on the server's CPU, worked out once per run
    so that every server does the same work (BENCH_CPU_LOOPS overrides it)."""
    if os.environ.get("BENCH_CPU_LOOPS"):
        return int(os.environ["BENCH_CPU_LOOPS"])
    code = "import os, apps; os.write(1, str(apps.calibrate()).encode())"
    env = dict(os.environ, PYTHONPATH=HERE, BENCH_CPU_LOOPS="1")
    out = subprocess.run(["taskset", "-c", SERVER_CPU, PY, "-c", code], cwd=HERE, env=env, capture_output=True, text=True, check=True)
    return int(out.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default=",".join(s.name for s in SERVERS))
    parser.add_argument("--scenarios", default=",".join(s.name for s in SCENARIOS))
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--quick", action="store_true", help="3 s measured runs, 1 s warm-up")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--tapster-args", default="", help="extra options for Tapster, e.g. --tapster-args=--reuse-port")
    parser.add_argument(
        "--repeat", type=int, default=1,
        help="measure every cell this many times, rounds interleaved (each round runs every scenario and server once), "
        "and report each cell's median run by CPU per request, with the range",
    )
    args = parser.parse_args()
    TAPSTER_ARGS.extend(args.tapster_args.split())
    if args.quick:
        args.duration, args.warmup = 3.0, 1.0

    problems = install_tools()
    for name, problem in problems.items():
        print(f"WARNING: {name}: {problem}", file=sys.stderr)
    make_files()
    wanted_servers = [s for s in SERVERS if s.name in args.servers.split(",")]
    wanted_scenarios = [s for s in SCENARIOS if s.name in args.scenarios.split(",")]
    versions = {s.name: version_of(s) for s in wanted_servers}
    unavailable = {s.name for s in wanted_servers if versions[s.name] == "not installed"}
    for name in unavailable:
        problems.setdefault(name, "not installed")

    cpu_loops = calibrate_cpu_loops()
    print(f"cpu_1ms: {cpu_loops} loops per request", flush=True)

    os.makedirs(args.out, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    jsonl = os.path.join(args.out, f"{stamp}.jsonl")
    runs: dict[tuple[str, str], list[dict[str, object]]] = {}
    for round_ in range(max(1, args.repeat)):
        if args.repeat > 1:
            print(f"== round {round_ + 1} of {args.repeat}", flush=True)
        # Every other round in reverse order, so a drift of the machine's speed during a
        # round weighs on a scenario and its baseline alike.
        order = wanted_scenarios if round_ % 2 == 0 else wanted_scenarios[::-1]
        for scenario in order:
            run_scenario(scenario, wanted_servers, unavailable, args, cpu_loops, jsonl, runs)
    records = [median_run(cell) for cell in runs.values()]
    command = "python bench/run.py " + " ".join(sys.argv[1:])
    table = markdown(records, machine_description(), versions, command.strip(), problems, cpu_loops)
    costs = feature_costs(runs)
    if costs:
        table += "\n" + costs
    md_path = os.path.join(args.out, "latest.md")
    with open(md_path, "w") as f:
        f.write(table + "\n")
    print(f"\nresults: {jsonl}\ntable:   {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Worker processes and their supervisor, through the real command line: workers
serving side by side as the supervisor's children, crashes replaced, a crash loop
that ends, recycling by request count and by memory, SIGTTIN/SIGTTOU, the pid file,
--reload and SIGHUP (rolling, under load), the drain on SIGTERM and the second
SIGINT, systemd socket activation and sd_notify, serve(app, workers=2) and
PasteDeploy's `workers = 2`, and the options' refusals.

Worker pids come from the responses (apps/workers_app.py reports os.getpid()), the
supervisor's log and /proc (a process's children are the processes whose parent it
is: this kernel has no /proc/PID/task/TID/children)."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import pytest

from support import TESTS_DIR, CapturedProcess, ConnectionClosed, RawConn, ServerProcess, http_get, rss_kib
from support import tests_env as child_env  # not collected as a test

APP = "apps.workers_app:app"
PYTHON_TAPSTER = [sys.executable, "-m", "tapster"]

T = TypeVar("T")


# --- processes ------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of process `pid`, None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie has ended: only its parent has not reaped it)."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def live_children(pid: int) -> set[int]:
    """The processes whose parent is `pid`, zombies left out."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat[1] == pid and stat[0] not in ("Z", "X"):
                found.add(int(entry))
    return found


def wait_until(condition: Callable[[], T], timeout: float, what: str | Callable[[], str]) -> T:
    """Polls `condition` until it returns something true, which it returns; past
    `timeout` seconds, an AssertionError saying `what` did not happen."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what() if callable(what) else what}")
        time.sleep(0.02)


class Tapster(ServerProcess):
    """`python -m tapster [--listen=LISTEN] ARGS APP` from the tests directory (or
    `cmd` as given), its output captured, waited for until it serves (with `wait`)."""

    def __init__(
        self,
        *args: str,
        app: str = APP,
        listen: str | None = "127.0.0.1:0",
        env: dict[str, str] | None = None,
        cmd: list[str] | None = None,
        pass_fds: tuple[int, ...] = (),
        wait: bool = True,
    ) -> None:
        if cmd is None:
            cmd = PYTHON_TAPSTER + ([f"--listen={listen}"] if listen else []) + list(args) + [app]
        CapturedProcess.__init__(self, cmd, child_env(env), pass_fds)
        if wait:
            self.host, self.port = self._wait_for_listen()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def logged_pids(self, pattern: str) -> list[int]:
        """The pids in the log lines matching `pattern`, whose group 1 is a pid."""
        regex = re.compile(pattern)
        return [int(m.group(1)) for m in (regex.search(line) for line in self.lines()) if m]

    def workers(self, count: int, timeout: float = 10.0) -> set[int]:
        """Waits until the supervisor has exactly `count` live children, each logged as
        ready; returns their pids."""

        def settled() -> set[int]:
            kids = live_children(self.pid)
            ready = set(self.logged_pids(r"Worker (\d+) ready"))
            return kids if len(kids) == count and kids <= ready else set()

        return wait_until(settled, timeout, lambda: f"{count} ready workers; children {live_children(self.pid)}:\n{self.log()}")

    def get(self, path: str = "/", timeout: float = 5.0) -> dict[str, Any]:
        """The report of a 200 response to GET `path` on a new connection."""
        status, _, body = http_get(self.host, int(self.port), path, timeout=timeout)
        assert status == 200, body
        return json.loads(body)

    def pids_serving(self, want: int, tries: int = 400) -> set[int]:
        """The worker pids that answer, asking until `want` distinct ones have (or
        `tries` requests, new connections each, a few at a time)."""
        seen: set[int] = set()
        failures: list[str] = []

        def ask() -> None:
            try:
                seen.add(self.get("/sleep?s=0.02")["pid"])
            except (OSError, http.client.HTTPException, AssertionError) as exc:
                failures.append(repr(exc))

        for _ in range(0, tries, 8):
            threads = [threading.Thread(target=ask) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
            assert not failures, failures
            if len(seen) >= want:
                break
        return seen

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout} s:\n{self.log()}") from None

    def kill_all(self) -> None:
        """Kills the process and every worker it started that still runs."""
        workers = set(self.logged_pids(r"Worker (\d+) started"))
        if self.proc.poll() is None:
            workers |= live_children(self.pid)
            self.proc.kill()
            self.proc.wait()
        for pid in workers:
            if alive(pid) and pid != os.getpid():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._reader.join(timeout=5)


@pytest.fixture
def tapster() -> Iterator[Callable[..., Tapster]]:
    """Starts Tapster processes; kills whatever of them (workers too) still runs after
    the test."""
    started: list[Tapster] = []

    def start(*args: str, **kw: Any) -> Tapster:
        srv = Tapster(*args, **kw)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.kill_all()


def stop_and_check_workers_gone(srv: Tapster, workers: set[int], sig: int = signal.SIGTERM) -> int:
    """Stops the supervisor; asserts that no worker outlives it. Returns its status."""
    status = srv.stop(sig)
    wait_until(lambda: not [p for p in workers if alive(p)], 3, lambda: f"workers outlived the supervisor: {[p for p in workers if alive(p)]}")
    return status


class Load(threading.Thread):
    """GET `path` again and again, a new connection each, until finish(): the reports
    in order, and every failure (refused, reset, timed out, not 200)."""

    def __init__(self, srv: Tapster, path: str = "/") -> None:
        super().__init__(daemon=True)
        self.srv, self.path = srv, path
        self.reports: list[dict[str, Any]] = []
        self.failures: list[str] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                status, _, body = http_get(self.srv.host, int(self.srv.port), self.path, timeout=2)
                if status == 200:
                    self.reports.append(json.loads(body))
                else:
                    self.failures.append(f"status {status}: {body[:200]!r}")
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(repr(exc))

    def wait_reports(self, count: int, timeout: float = 10.0) -> None:
        """Waits until `count` more reports than now have come."""
        target = len(self.reports) + count
        wait_until(lambda: len(self.reports) >= target, timeout, f"{count} more responses (failures: {self.failures[:5]})")

    def finish(self) -> None:
        self._done.set()
        self.join(10)
        assert not self.is_alive()


class KeepAlive:
    """GETs on one keep-alive connection, a new one when the server closes it (after a
    `Connection: close` response, or while idle). A request the server closed an
    idle reused connection under, before any byte of a response, is sent again on a
    new connection, as HTTP clients do with idempotent requests (RFC 9112, 9.3.1):
    counted in `retries`. Anything else (a new connection closed, a response cut
    short) fails."""

    def __init__(self, srv: Tapster) -> None:
        self.address = srv.address
        self.conn: RawConn | None = None
        self.connections = 0
        self.retries = 0

    def get(self, path: str = "/") -> dict[str, Any]:
        for _ in range(2):
            fresh = self.conn is None
            if self.conn is None:
                self.conn = RawConn(socket.create_connection(self.address, timeout=5))
                self.connections += 1
            conn = self.conn
            try:
                conn.send(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                resp = conn.read_response()
            except (ConnectionClosed, ConnectionResetError, BrokenPipeError):
                partial = conn.buf
                conn.close()
                self.conn = None
                if fresh or partial:
                    raise
                self.retries += 1
                continue
            if (resp.header("Connection") or "").lower() == "close":
                conn.close()
                self.conn = None
            assert resp.status == 200, resp
            return json.loads(resp.body)
        raise AssertionError("a request failed on a new connection")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


# --- 1. workers side by side ---------------------------------------------------------------------


def test_two_workers_serve_and_are_the_supervisors_children(tapster: Callable[..., Tapster]) -> None:
    srv = tapster("--workers=2")
    workers = srv.workers(2)
    assert srv.pid not in workers
    serving = srv.pids_serving(2)
    assert serving == workers, f"served by {serving}, workers {workers}:\n{srv.log()}"
    assert srv.pid not in serving  # the supervisor itself serves nothing
    # The supervisor binds before forking: one "Serving on", in its name.
    serving_lines = [line for line in srv.lines() if "Serving on" in line]
    assert len(serving_lines) == 1 and f"[{srv.pid}]" in serving_lines[0], srv.log()
    started = srv.logged_pids(r"\[%d\] \[INFO\] tapster: Worker (\d+) started" % srv.pid)
    assert set(started) == workers, srv.log()
    assert stop_and_check_workers_gone(srv, workers) == 0


def test_reuse_port_gives_the_port_to_other_reuse_port_sockets(tapster: Callable[..., Tapster]) -> None:
    srv = tapster("--workers=2", "--reuse-port")
    workers = srv.workers(2)
    assert srv.pids_serving(2) == workers
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(srv.address)  # EADDRINUSE unless every socket on it has SO_REUSEPORT
    assert stop_and_check_workers_gone(srv, workers) == 0


def test_without_reuse_port_the_port_is_not_shared(tapster: Callable[..., Tapster]) -> None:
    srv = tapster("--workers=2")
    srv.workers(2)
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        with pytest.raises(OSError, match="Address already in use"):
            other.bind(srv.address)


# --- 2. a worker that dies is replaced -----------------------------------------------------------


def assert_replaced(srv: Tapster, victim: int, workers: set[int], how: str) -> None:
    """After `victim` (one of `workers`) died: the log says how and that it is being
    replaced, the other worker serves meanwhile, and a new worker joins it."""
    survivor = workers - {victim}
    wait_until(lambda: not alive(victim), 3, f"worker {victim} to end")
    for _ in range(20):  # served at once, by the survivor or the replacement
        assert srv.get()["pid"] != victim
    srv.wait_for_log(rf"tapster: Worker {victim} {how}$")
    srv.wait_for_log(rf"tapster: Replacing worker {victim} \(it exited")
    now = srv.workers(2)
    assert survivor <= now and victim not in now
    [new] = now - survivor
    assert new in srv.pids_serving(2), srv.log()


def test_a_killed_worker_is_replaced(tapster: Callable[..., Tapster]) -> None:
    srv = tapster("--workers=2")
    workers = srv.workers(2)
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    assert_replaced(srv, victim, workers, "was killed by SIGKILL")
    assert stop_and_check_workers_gone(srv, srv.workers(2)) == 0


def test_a_worker_that_exits_from_a_request_is_replaced(tapster: Callable[..., Tapster]) -> None:
    srv = tapster("--workers=2")
    workers = srv.workers(2)
    with srv.connect() as conn:
        conn.send(b"GET /crash?status=3 HTTP/1.1\r\nHost: t\r\n\r\n")
        with pytest.raises(ConnectionClosed):
            conn.read_response()  # the process ended under the request
    [victim] = wait_until(lambda: srv.logged_pids(r"Worker (\d+) exited with status 3$"), 5, "the exit logged")
    assert victim in workers
    assert_replaced(srv, victim, workers, "exited with status 3")
    assert stop_and_check_workers_gone(srv, srv.workers(2)) == 0


# --- 3. a crash loop ends ------------------------------------------------------------------------


def test_workers_failing_at_start_up_end_the_supervisor(tapster: Callable[..., Tapster]) -> None:
    srv = tapster("--workers=2", app="apps.import_fails:app", wait=False)
    started = time.monotonic()
    status = srv.wait_exit(20)
    elapsed = time.monotonic() - started
    srv._reader.join(5)
    log = srv.log()
    assert status == 1, log
    assert elapsed < 18, f"{elapsed:.1f} s"
    errors = [line for line in srv.lines() if "[ERROR]" in line and "failed at start-up" in line]
    assert errors, log
    starts = srv.logged_pids(r"Worker (\d+) started")
    assert 2 <= len(starts) <= 20, f"{len(starts)} workers started:\n{log}"  # a few attempts, not a fork storm
    assert "this app cannot be imported" in log  # the operator sees why
    assert not [p for p in starts if alive(p)]


def test_a_preloaded_app_that_fails_to_import_forks_no_worker(tapster: Callable[..., Tapster]) -> None:
    srv = tapster("--workers=2", "--preload", app="apps.import_fails:app", wait=False)
    status = srv.wait_exit(10)
    srv._reader.join(5)
    assert status == 1, srv.log()
    assert "this app cannot be imported" in srv.log()
    assert not srv.logged_pids(r"Worker (\d+) started"), srv.log()


# --- 4. max_requests ----------------------------------------------------------------------------


def test_max_requests_recycles_the_worker_without_losing_a_request(tapster: Callable[..., Tapster]) -> None:
    # One worker: its replacement accepts before it drains (never a moment with no
    # worker), so it serves on while the replacement starts.
    srv = tapster("--workers=1", "--max-requests=20")
    srv.workers(1)
    pids: list[int] = []
    deadline = time.monotonic() + 15
    while len(set(pids)) < 3 and time.monotonic() < deadline:
        pids.append(srv.get()["pid"])  # each on a new connection; any failure fails
    counts = Counter(pids)
    assert len(counts) >= 3, f"served by {dict(counts)}:\n{srv.log()}"
    srv.wait_for_log(r"Replacing worker \d+ \(max_requests")
    retired = [pid for pid in counts if pid != pids[-1]]
    assert all(counts[pid] >= 20 for pid in retired), dict(counts)  # none recycled early
    assert srv.stop() == 0


def test_max_requests_with_two_workers_recycles_both(tapster: Callable[..., Tapster]) -> None:
    srv = tapster("--workers=2", "--max-requests=20")
    srv.workers(2)
    pids = [srv.get()["pid"] for _ in range(200)]
    counts = Counter(pids)
    assert len(counts) >= 4, f"served by {dict(counts)}:\n{srv.log()}"
    finished = [pid for pid in counts if pid not in pids[-40:]]
    assert finished and all(counts[pid] >= 20 for pid in finished), dict(counts)
    assert srv.stop() == 0


def test_max_requests_on_a_keep_alive_connection(tapster: Callable[..., Tapster]) -> None:
    srv = tapster("--workers=1", "--max-requests=20")
    srv.workers(1)
    client = KeepAlive(srv)
    pids: list[int] = []
    deadline = time.monotonic() + 15
    try:
        while (len(pids) < 200 or len(set(pids)) < 2) and time.monotonic() < deadline:
            pids.append(client.get()["pid"])
    finally:
        client.close()
    counts = Counter(pids)
    assert len(counts) >= 2, f"served by {dict(counts)} on {client.connections} connections:\n{srv.log()}"
    # Past its limit a worker closes each connection after its response, so the client
    # moves to the replacement once it accepts.
    assert client.connections > 20, client.connections
    assert client.retries <= len(counts), f"{client.retries} requests resent"
    assert srv.stop() == 0


def test_max_requests_jitter(tapster: Callable[..., Tapster]) -> None:
    limit, jitter = 10, 10
    srv = tapster("--workers=1", f"--max-requests={limit}", f"--max-requests-jitter={jitter}")
    srv.workers(1)
    for _ in range(300):
        srv.get()
    # Each worker logs the moment it reaches its own limit: limit + 0..jitter.
    reached = [int(n) for n in re.findall(r"max_requests reached \((\d+) requests\)", srv.log())]
    assert len(reached) >= 5, srv.log()
    assert all(limit <= n <= limit + jitter for n in reached), reached
    assert len(set(reached)) > 1, reached
    replaced = srv.logged_pids(r"Replacing worker (\d+) \(max_requests")
    assert len(replaced) >= len(reached) - 1, srv.log()
    assert srv.stop() == 0


# --- 5. max_worker_memory -----------------------------------------------------------------------


def test_a_worker_over_max_worker_memory_is_replaced(tapster: Callable[..., Tapster]) -> None:
    srv = tapster("--workers=1", "--max-worker-memory=60")
    [first] = srv.workers(1)
    assert rss_kib(first) < 50 * 1024, f"a fresh worker already has {rss_kib(first)} KiB"
    grown = srv.get("/grow?mib=100")
    assert grown["pid"] == first and grown["rss_kib"] > 100 * 1024
    srv.wait_for_log(rf"Replacing worker {first} \(max_worker_memory", timeout=5)
    wait_until(lambda: srv.get()["pid"] != first, 10, "a new worker serving")
    wait_until(lambda: not alive(first), 5, "the old worker to end")
    [second] = srv.workers(1)
    assert second != first
    assert stop_and_check_workers_gone(srv, {second}) == 0


# --- 6. SIGTTIN and SIGTTOU ---------------------------------------------------------------------


def test_sigttin_adds_a_worker_and_sigttou_removes_one_down_to_one(tapster: Callable[..., Tapster]) -> None:
    srv = tapster("--workers=2")
    two = srv.workers(2)
    srv.proc.send_signal(signal.SIGTTIN)
    srv.wait_for_log(r"Adding a worker: 3 now")
    three = srv.workers(3)
    assert two < three
    assert srv.pids_serving(3) == three
    srv.proc.send_signal(signal.SIGTTOU)
    srv.wait_for_log(r"Removing a worker: 2 now")
    assert len(srv.workers(2) & three) == 2
    srv.proc.send_signal(signal.SIGTTOU)
    srv.wait_for_log(r"Removing a worker: 1 now")
    [last] = srv.workers(1)
    srv.proc.send_signal(signal.SIGTTOU)  # not below one
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert live_children(srv.pid) == {last}, srv.log()
        assert srv.get()["pid"] == last
        time.sleep(0.1)
    assert not [line for line in srv.lines() if "Removing a worker: 0" in line], srv.log()
    assert stop_and_check_workers_gone(srv, {last}) == 0


# --- 7. the pid file ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [["--workers=2"], []], ids=["workers", "single-process"])
def test_the_pid_file_names_the_supervisor_and_goes_at_exit(tapster: Callable[..., Tapster], tmp_path: Path, mode: list[str]) -> None:
    pidfile = tmp_path / "tapster.pid"
    srv = tapster("--pid", str(pidfile), *mode)  # Gunicorn's spelling, the value apart
    srv.get()
    assert pidfile.read_text().strip() == str(srv.pid)
    assert srv.stop() == 0
    assert not pidfile.exists()


def test_pidfile_option_with_max_requests(tapster: Callable[..., Tapster], tmp_path: Path) -> None:
    # max_requests alone runs a supervisor with one worker: the file names the supervisor.
    pidfile = tmp_path / "tapster.pid"
    srv = tapster(f"--pidfile={pidfile}", "--max-requests=1000")
    [worker] = srv.workers(1)
    assert srv.get()["pid"] == worker != srv.pid
    assert pidfile.read_text().strip() == str(srv.pid)
    assert srv.stop() == 0
    assert not pidfile.exists()


# --- 8, 9. reloads ------------------------------------------------------------------------------

#: An application module written to a temporary directory, so that a test can change it.
VERSIONED_APP = """\
import json
import os

VERSION = {version!r}
os.write(1, f"EVENT imported {{VERSION}} in {{os.getpid()}}\\n".encode())  # one write: whole among the others


def app(environ, start_response):
    body = json.dumps({{"pid": os.getpid(), "version": VERSION}}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
"""

#: Each version a different length, and no bytecode cache: a rewrite within the same
#: second as the first write cannot be read from a stale .pyc.
OLD, NEW = "old", "new-version"
NO_PYC = {"PYTHONDONTWRITEBYTECODE": "1"}


def write_versioned_app(directory: Path, version: str) -> Path:
    path = directory / "verapp.py"
    before = path.stat().st_mtime if path.exists() else None
    path.write_text(VERSIONED_APP.format(version=version))
    if before is not None:  # as an edit a moment later would (mtime-based watchers)
        os.utime(path, (before + 2, before + 2))
    return path


def test_reload_serves_a_changed_module(tapster: Callable[..., Tapster], tmp_path: Path) -> None:
    write_versioned_app(tmp_path, OLD)
    srv = tapster("--reload", f"--chdir={tmp_path}", app="verapp:app", env=NO_PYC)
    [first] = srv.workers(1)
    assert srv.get() == {"pid": first, "version": OLD}
    write_versioned_app(tmp_path, NEW)
    report = wait_until(lambda: (r := srv.get())["version"] == NEW and r, 10, lambda: f"the new version served:\n{srv.log()}")
    assert report["pid"] != first
    srv.wait_for_log(r"Reloading")
    srv.wait_for_log(rf"Replacing worker {first} \(reload")
    wait_until(lambda: not alive(first), 5, "the old worker to end")
    assert stop_and_check_workers_gone(srv, srv.workers(1)) == 0


def replacement_ready_first(lines: list[str], old: int) -> bool:
    """Whether the worker started to replace `old` (the first "Worker N started" after
    "Replacing worker OLD") was ready before `old` exited."""
    replacing = next(i for i, line in enumerate(lines) if f"Replacing worker {old} " in line)
    new = next(int(m.group(1)) for line in lines[replacing:] if (m := re.search(r"Worker (\d+) started", line)))
    ready = next((i for i, line in enumerate(lines) if f"Worker {new} ready" in line), None)
    exited = next(i for i, line in enumerate(lines) if f"Worker {old} exited" in line)
    return ready is not None and ready < exited


@pytest.mark.parametrize("reuse_port", [False, True], ids=["shared-socket", "reuse-port"])
def test_sighup_reloads_under_load_without_a_failed_request(tapster: Callable[..., Tapster], tmp_path: Path, reuse_port: bool) -> None:
    write_versioned_app(tmp_path, OLD)
    args = ["--workers=2", "--graceful-timeout=3", f"--chdir={tmp_path}"] + (["--reuse-port"] if reuse_port else [])
    srv = tapster(*args, app="verapp:app", env=NO_PYC)
    old = srv.workers(2)
    load = Load(srv)
    load.start()
    try:
        load.wait_reports(20)
        write_versioned_app(tmp_path, NEW)
        srv.proc.send_signal(signal.SIGHUP)
        # "Reloading: ..." in the brief; the implementation names the cause: "Reloading (SIGHUP): ...".
        srv.wait_for_log(r"Reloading( \([^)]*\))?: starting 2 new worker\(s\)", timeout=5)
        srv.wait_for_log(r"Reload complete: 2 worker\(s\) serving", timeout=15)
        wait_until(lambda: not [p for p in old if alive(p)], 10, lambda: f"old workers to end:\n{srv.log()}")
        load.wait_reports(30)
    finally:
        load.finish()
    assert load.failures == [], f"{len(load.failures)} of {len(load.failures) + len(load.reports)} failed: {load.failures[:5]}\n{srv.log()}"
    versions = [r["version"] for r in load.reports]
    assert versions[0] == OLD and set(versions[-30:]) == {NEW}, Counter(versions)
    new = srv.workers(2)
    assert not new & old
    assert {r["pid"] for r in load.reports if r["version"] == NEW} == new
    for pid in old:  # drained, not killed
        assert f"Worker {pid} exited with status 0" in srv.log(), srv.log()
    # Rolling: each old worker's replacement was ready before the old one left.
    for pid in old:
        assert replacement_ready_first(srv.lines(), pid), srv.log()
    assert stop_and_check_workers_gone(srv, new) == 0


@pytest.mark.parametrize("reuse_port", [False, True], ids=["shared-socket", "reuse-port"])
def test_repeated_reloads_under_load_lose_no_request(tapster: Callable[..., Tapster], reuse_port: bool) -> None:
    # The races of a reload are narrow: ten of them make one likely to show.
    srv = tapster("--workers=2", "--graceful-timeout=3", *(["--reuse-port"] if reuse_port else []))
    srv.workers(2)
    load = Load(srv)
    load.start()
    try:
        for n in range(1, 11):
            load.wait_reports(20)
            srv.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: sum("Reload complete" in line for line in srv.lines()) >= n, 10, lambda: f"reload {n}:\n{srv.log()}")
        load.wait_reports(50)
    finally:
        load.finish()
    assert load.failures == [], f"{len(load.failures)} of {len(load.failures) + len(load.reports)} failed: {load.failures[:5]}"
    assert stop_and_check_workers_gone(srv, srv.workers(2)) == 0


@pytest.mark.parametrize("preload", [False, True], ids=["import-in-workers", "preload"])
def test_preload_decides_where_the_app_is_imported_and_whether_sighup_reimports(
    tapster: Callable[..., Tapster], tmp_path: Path, preload: bool
) -> None:
    write_versioned_app(tmp_path, OLD)
    args = ["--workers=2", "--graceful-timeout=3", f"--chdir={tmp_path}"] + (["--preload"] if preload else [])
    srv = tapster(*args, app="verapp:app", env=NO_PYC)
    old = srv.workers(2)
    importers = set(srv.logged_pids(rf"EVENT imported {OLD} in (\d+)"))
    assert importers == ({srv.pid} if preload else old), srv.log()
    write_versioned_app(tmp_path, NEW)
    srv.proc.send_signal(signal.SIGHUP)
    srv.wait_for_log(r"Reload complete: 2 worker\(s\) serving", timeout=15)
    wait_until(lambda: not [p for p in old if alive(p)], 10, "old workers to end")
    new = srv.workers(2)
    versions = {srv.get()["version"] for _ in range(20)}
    assert versions == ({OLD} if preload else {NEW}), srv.log()
    if not preload:
        assert set(srv.logged_pids(rf"EVENT imported {NEW} in (\d+)")) == new
    assert stop_and_check_workers_gone(srv, new) == 0


# --- 10. the drain ------------------------------------------------------------------------------


def refused(address: tuple[str, int]) -> bool:
    """Whether a connection to `address` is refused now."""
    try:
        with socket.create_connection(address, timeout=0.5):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def test_sigterm_drains_the_workers(tapster: Callable[..., Tapster]) -> None:
    srv = tapster("--workers=2", "--graceful-timeout=5")
    workers = srv.workers(2)
    idle = srv.connect()
    idle.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert idle.read_response().status == 200  # now idle, kept alive
    busy = srv.connect(timeout=10)
    busy.send(b"GET /sleep?s=2 HTTP/1.1\r\nHost: t\r\n\r\n")
    srv.wait_for_log(r"EVENT sleeping \d+")
    sent = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    srv.wait_for_log(r"Shutting down: no longer accepting connections")
    assert idle.is_closed(1.0), "the idle keep-alive connection was not closed"
    wait_until(lambda: refused(srv.address), 1.0, "new connections refused")
    resp = busy.read_response()
    assert resp.status == 200 and resp.complete and json.loads(resp.body)["pid"] in workers
    assert (resp.header("Connection") or "").lower() == "close", resp.headers
    assert busy.is_closed(1.0)
    busy.close()  # no lingering close to wait for
    assert srv.wait_exit(5) == 0, srv.log()
    assert time.monotonic() - sent < 4.5
    srv._reader.join(5)
    assert srv.log().rstrip().endswith("Server stopped"), srv.log()
    assert not [p for p in workers if alive(p)]
    idle.close()


def test_sigterm_as_the_inherited_listener_is_shut_down_still_drains(tapster: Callable[..., Tapster], listening: socket.socket) -> None:
    # One process, the drain a supervisor gives its workers: SIGTERM, and the socket
    # taken out of the listening state by its owner at once (the engine logs "stopped
    # accepting: the listening socket was shut down" as the signal arrives).
    fd = listening.fileno()
    srv = tapster(listen=f"fd://{fd}", pass_fds=(fd,))
    busy = srv.connect(timeout=10)
    busy.send(b"GET /sleep?s=1 HTTP/1.1\r\nHost: t\r\n\r\n")
    srv.wait_for_log(r"EVENT sleeping \d+")
    srv.proc.send_signal(signal.SIGTERM)
    listening.shutdown(socket.SHUT_RDWR)
    resp = busy.read_response()
    assert resp.status == 200 and (resp.header("Connection") or "").lower() == "close", resp
    busy.close()
    assert srv.wait_exit(5) == 0


def test_a_second_sigint_stops_at_once(tapster: Callable[..., Tapster]) -> None:
    srv = tapster("--workers=2", "--graceful-timeout=20")
    workers = srv.workers(2)
    busy = srv.connect(timeout=10)
    busy.send(b"GET /sleep?s=15 HTTP/1.1\r\nHost: t\r\n\r\n")
    srv.wait_for_log(r"EVENT sleeping \d+")
    srv.proc.send_signal(signal.SIGINT)
    srv.wait_for_log(r"Shutting down: no longer accepting connections")
    sent = time.monotonic()
    srv.proc.send_signal(signal.SIGINT)
    srv.wait_exit(5)
    assert time.monotonic() - sent < 3, srv.log()
    wait_until(lambda: not [p for p in workers if alive(p)], 2, "the workers to end")
    assert busy.is_closed(2.0)
    busy.close()
    srv._reader.join(5)
    # The workers end by themselves, not through the supervisor's SIGKILL.
    assert "killing it" not in srv.log(), srv.log()


# --- 11. inherited sockets: systemd socket activation and fd://N --------------------------------

#: Execs tapster with the descriptor argv[1] as descriptor 3 and LISTEN_PID its own pid
#: (what systemd does): execv keeps the pid.
ACTIVATE = """\
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.executable, [sys.executable, "-m", "tapster"] + sys.argv[2:])
"""


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    """A listening TCP socket on 127.0.0.1, as systemd would hold it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield sock
    sock.close()


def still_listening(sock: socket.socket) -> None:
    """`sock` (the test's copy) still listens: nobody shut it down."""
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    with socket.create_connection(sock.getsockname(), timeout=2):
        sock.settimeout(2)
        conn, _ = sock.accept()
        conn.close()


@pytest.mark.parametrize("mode", [[], ["--workers=2"]], ids=["single-process", "workers"])
def test_socket_activation_serves_the_inherited_socket(tapster: Callable[..., Tapster], listening: socket.socket, mode: list[str]) -> None:
    cmd = [sys.executable, "-c", ACTIVATE, str(listening.fileno()), *mode, APP]
    srv = tapster(cmd=cmd, pass_fds=(listening.fileno(),), env={"LISTEN_FDS": "1", "LISTEN_FDNAMES": "web"})
    assert srv.address == listening.getsockname(), srv.log()
    if mode:
        workers = srv.workers(2)
        assert srv.pids_serving(2) == workers
    else:
        workers = set()
        assert srv.get()["pid"] == srv.pid
    assert stop_and_check_workers_gone(srv, workers) == 0
    still_listening(listening)


def test_listen_pid_of_another_process_is_not_activation(tapster: Callable[..., Tapster], listening: socket.socket) -> None:
    # LISTEN_PID names the process the sockets are for; a child that inherited the
    # variables (this one: LISTEN_PID is the test's pid) must not take them.
    srv = tapster(pass_fds=(listening.fileno(),), env={"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1"})
    assert srv.address != listening.getsockname()
    assert srv.get()["pid"] == srv.pid
    assert srv.stop() == 0


@pytest.mark.parametrize("mode", [[], ["--workers=2"]], ids=["single-process", "workers"])
def test_listen_fd_serves_an_inherited_descriptor(tapster: Callable[..., Tapster], listening: socket.socket, mode: list[str]) -> None:
    fd = listening.fileno()
    srv = tapster(*mode, listen=f"fd://{fd}", pass_fds=(fd,))
    assert srv.address == listening.getsockname(), srv.log()
    workers = srv.workers(2) if mode else set()
    served = srv.pids_serving(len(workers) or 1)
    assert served == (workers or {srv.pid})
    assert stop_and_check_workers_gone(srv, workers) == 0
    still_listening(listening)


# --- 12. sd_notify ------------------------------------------------------------------------------


class Notifications:
    """An AF_UNIX datagram socket for NOTIFY_SOCKET (`env`): a path, or an abstract
    name given as @name; each datagram read as KEY=VALUE lines."""

    def __init__(self, abstract: bool) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.dir: str | None = None
        if abstract:
            name = f"tapster-test-{os.getpid()}-{time.monotonic_ns()}"
            self.sock.bind("\0" + name)
            self.env = "@" + name
        else:
            self.dir = tempfile.mkdtemp(prefix="tn", dir="/tmp")  # short: sun_path has 108 bytes
            self.env = os.path.join(self.dir, "notify")
            self.sock.bind(self.env)
        self.messages: list[dict[str, str]] = []

    def next_with(self, key: str, timeout: float = 5.0) -> dict[str, str]:
        """Reads datagrams until one has `key`; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {key} within {timeout} s; got {self.messages}")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            message = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append(message)
            if key in message:
                return message

    def close(self) -> None:
        self.sock.close()
        if self.dir is not None:
            os.unlink(self.env)
            os.rmdir(self.dir)


@pytest.fixture
def notifications() -> Iterator[Callable[[bool], Notifications]]:
    made: list[Notifications] = []

    def make(abstract: bool = False) -> Notifications:
        made.append(Notifications(abstract))
        return made[-1]

    yield make
    for n in made:
        n.close()


def test_notify_ready_reloading_stopping_with_workers(tapster: Callable[..., Tapster], notifications: Callable[[bool], Notifications]) -> None:
    notify = notifications(False)
    srv = tapster("--workers=2", "--graceful-timeout=3", env={"NOTIFY_SOCKET": notify.env})
    ready = notify.next_with("READY")
    assert ready["READY"] == "1" and "2" in ready.get("STATUS", ""), ready
    workers = srv.workers(2, timeout=1)  # READY=1 means serving: the workers are up
    srv.proc.send_signal(signal.SIGHUP)
    before = time.clock_gettime(time.CLOCK_MONOTONIC)
    reloading = notify.next_with("RELOADING")
    assert reloading["RELOADING"] == "1"
    usec = int(reloading["MONOTONIC_USEC"])
    assert abs(usec / 1e6 - before) < 5, (usec, before)
    assert notify.next_with("READY")["READY"] == "1"
    srv.wait_for_log(r"Reload complete")
    new = srv.workers(2)
    assert not new & workers
    srv.proc.send_signal(signal.SIGTERM)
    assert notify.next_with("STOPPING")["STOPPING"] == "1"
    assert srv.wait_exit(5) == 0
    order = [key for m in notify.messages for key in ("READY", "RELOADING", "STOPPING") if key in m]
    assert order == ["READY", "RELOADING", "READY", "STOPPING"], notify.messages


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_notify_ready_and_stopping_in_single_process_mode(
    tapster: Callable[..., Tapster], notifications: Callable[[bool], Notifications], abstract: bool
) -> None:
    notify = notifications(abstract)
    srv = tapster(env={"NOTIFY_SOCKET": notify.env})
    assert notify.next_with("READY")["READY"] == "1"
    assert srv.get()["pid"] == srv.pid
    srv.proc.send_signal(signal.SIGTERM)
    assert notify.next_with("STOPPING")["STOPPING"] == "1"
    assert srv.wait_exit(5) == 0
    order = [key for m in notify.messages for key in ("READY", "RELOADING", "STOPPING") if key in m]
    assert order == ["READY", "STOPPING"], notify.messages


# --- 13. serve() and PasteDeploy ----------------------------------------------------------------

SERVE_SCRIPT = """\
import logging
import sys

sys.path.insert(0, {tests_dir!r})
from tapster import serve
from apps.workers_app import app

logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s")
result = serve(app, listen="127.0.0.1:0", workers=2, shutdown_timeout=3)
print("RETURNED", repr(result), flush=True)
"""

PASTE_INI = """\
[server:main]
use = egg:tapster#main
listen = 127.0.0.1:0
workers = 2
shutdown_timeout = 3
"""

PASTE_SCRIPT = """\
import logging
import sys

from paste.deploy import loadserver

sys.path.insert(0, {tests_dir!r})
from apps.workers_app import app

logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s")
server = loadserver("config:" + {ini!r})
result = server(app)
print("RETURNED", repr(result), flush=True)
"""


def run_script(tapster: Callable[..., Tapster], path: Path) -> None:
    """Runs the Python script at `path` (which serves apps.workers_app with two
    workers) and checks both workers serve and it stops on SIGTERM, returning once."""
    srv = tapster(cmd=[sys.executable, str(path)])
    workers = srv.workers(2)
    assert srv.pids_serving(2) == workers
    assert stop_and_check_workers_gone(srv, workers) == 0
    returned = [line for line in srv.lines() if line.startswith("RETURNED")]
    assert len(returned) <= 1, srv.log()  # never in a worker


def test_serve_with_workers_from_a_script(tapster: Callable[..., Tapster], tmp_path: Path) -> None:
    script = tmp_path / "serve_workers.py"
    script.write_text(SERVE_SCRIPT.format(tests_dir=str(TESTS_DIR)))
    run_script(tapster, script)


def test_pastedeploy_workers(tapster: Callable[..., Tapster], tmp_path: Path) -> None:
    pytest.importorskip("paste.deploy")
    ini = tmp_path / "server.ini"
    ini.write_text(PASTE_INI)
    script = tmp_path / "run_paste.py"
    script.write_text(PASTE_SCRIPT.format(tests_dir=str(TESTS_DIR), ini=str(ini)))
    run_script(tapster, script)


# --- refusals -----------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        PYTHON_TAPSTER + list(args), cwd=TESTS_DIR, env=child_env(), stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip


@pytest.mark.parametrize("value", ["0", "-1"])
def test_workers_below_one_is_refused(value: str) -> None:
    result = run_cli("--listen=127.0.0.1:0", f"--workers={value}", APP)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("Error:") and "workers" in line, line
    assert "Serving on" not in result.stdout + result.stderr


def test_max_requests_jitter_without_max_requests_is_refused() -> None:
    result = run_cli("--listen=127.0.0.1:0", "--max-requests-jitter=5", APP)
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["Error: max_requests_jitter has no meaning without max_requests"]

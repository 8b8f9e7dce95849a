"""Tapster behind real load balancers (tests/balancers.py: the Debian HAProxy and nginx,
run as this user on free loopback ports).

The operations test: two instances, each `--workers 2`, behind HAProxy (health
checks, retries of idempotent requests, redispatch) or nginx (proxy_next_upstream,
keep-alive to the upstreams), with the workers sharing one socket or each with its
own (`--reuse-port`). Four client threads keep a steady, bounded load of GETs and
POSTs through the balancer on keep-alive connections while the test SIGHUPs
instance A (a rolling reload), SIGTERMs instance B and starts it again on the same
port, and kills with SIGKILL a worker known to be in the middle of a request (a GET
the balancer must then retry elsewhere). A slow streamed GET (about a second) is
under way in A at its SIGHUP and in B at its SIGTERM: both must arrive whole. Then:

- no GET failed (the balancer retries them);
- no response was truncated or corrupted: each body is checked byte for byte against
  what the client worked out itself from the request (tests/apps/balanced.py);
- each POST either completed (200, the right digest, recorded once by the app) or
  failed without the app ever recording it (refused before its body was taken). A
  POST recorded but reported failed to its client is a failure, and so is one
  recorded twice.

The PROXY protocol test: HAProxy with `send-proxy` and `send-proxy-v2` (and health
checks, which carry the header too) in front of Tapster started with
`--proxy-protocol --trusted-proxy=127.0.0.1`; clients connect from 127.0.0.2 and
127.0.0.3 and the app must see their addresses and ports, never the balancer's.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterator

import pytest

from apps.balanced import blob
from balancers import Balancer, free_port, haproxy, nginx
from http_reader import FramingError, RawConn, Response
from support import ServerProcess

APP = "apps.balanced:app"
WORKERS = 2
CLIENTS = 4
RESPONSE_TIMEOUT = 15.0
GET_SIZES = (2_048, 24_000, 100_000, 300_000)
POST_SIZES = (1_024, 20_000, 64_000, 200_000)
THINK = (0.0, 0.008)  # seconds between a client's requests: a bounded load, not a flood
SLOW_SIZE, SLOW_PACE_MS = 160_000, 100  # a streamed response that takes about a second
#: How many slow streams `stream_on` starts, at most, to get one into a given instance.
STREAM_ATTEMPTS = 12


def wait_until(check: Callable[[], bool], timeout: float, what: str | Callable[[], str], interval: float = 0.05) -> None:
    """Polls `check()` until true; past `timeout`, AssertionError naming `what` (a
    callable is called then, to describe the state at that moment)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what() if callable(what) else what}")
        time.sleep(interval)


# ----- the Tapster instances ----------------------------------------------------------


class Instance:
    """One Tapster on a fixed port (so that it can be started again on it), recording
    its POSTs in its own ledger file; every process it ran is kept for its logs."""

    def __init__(self, name: str, ledger: str, workers: int, extra: tuple[str, ...] = ()) -> None:
        self.name, self.ledger, self.workers, self.extra = name, ledger, workers, extra
        self.port = free_port()
        self.runs: list[ServerProcess] = []
        self.start()

    @property
    def srv(self) -> ServerProcess:
        return self.runs[-1]

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def start(self) -> None:
        env = {"BALANCED_INSTANCE": self.name, "BALANCED_LEDGER": self.ledger}
        args = (f"--workers={self.workers}", *self.extra) if self.workers > 1 else self.extra
        srv = ServerProcess(APP, *args, listen=f"127.0.0.1:{self.port}", env=env)
        self.runs.append(srv)
        if self.workers > 1:
            wait_until(lambda: self.ready_workers() >= self.workers, 20, lambda: f"{self.workers} workers of {self.name} ready:\n{srv.log()}")

    def ready_workers(self) -> int:
        return sum(1 for line in self.srv.lines() if re.search(r"Worker \d+ ready", line))

    def stop(self) -> None:
        for srv in self.runs:
            if srv.proc.poll() is None:
                srv.stop()

    def log(self, tail: int = 40) -> str:
        out = []
        for i, srv in enumerate(self.runs):
            lines = srv.lines()[-tail:]
            out.append(f"--- instance {self.name}, run {i + 1} (last {len(lines)} lines)\n" + "\n".join(lines))
        return "\n".join(out)


def ledger_entries(path: str) -> list[tuple[str, str, int]]:
    """(request id, sha256, pid) of every POST the app recorded."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [(rid, sha, int(pid)) for rid, sha, pid in (line.split() for line in f if line.strip())]


# ----- the client load ----------------------------------------------------------------


@dataclass
class Outcome:
    method: str
    target: str
    started: float
    ended: float = 0.0
    status: int = 0  # 0: no response head at all
    error: str = ""  # empty: a complete, correct 200
    truncated: bool = False  # a head came, the body was cut short
    corrupted: bool = False  # a complete response whose body is not what was asked for
    request_id: str = ""
    digest: str = ""  # POST: the body's sha256
    pid: str = ""  # X-Worker-Pid of the response, when a head came
    instance: str = ""
    nth: int = 0  # the how-manieth request on its client connection
    port: int = 0  # that connection's local port (as the balancer's log shows it)

    @property
    def ok(self) -> bool:
        return not self.error


class Load:
    """CLIENTS threads sending GETs and POSTs through the balancer, each on its own
    keep-alive connection (a new one when the balancer closes it), until stopped."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(CLIENTS)]

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(RESPONSE_TIMEOUT + 5)

    def _client(self, index: int) -> None:
        rng = random.Random(index)
        conn: RawConn | None = None
        nth = 0
        while not self._stop.is_set():
            if conn is None:
                try:
                    conn = RawConn(socket.create_connection(self.address, timeout=RESPONSE_TIMEOUT))
                    nth = 0
                except OSError as exc:
                    self._add(Outcome("CONNECT", "", time.monotonic(), time.monotonic(), error=f"connect: {exc}"))
                    time.sleep(0.05)
                    continue
            nth += 1
            port = conn.sock.getsockname()[1]
            outcome, keep = exchange(conn, rng)
            outcome.nth, outcome.port = nth, port
            self._add(outcome)
            if not keep:
                conn.close()
                conn = None
            time.sleep(rng.uniform(*THINK))
        if conn is not None:
            conn.close()

    def _add(self, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)


def exchange(conn: RawConn, rng: random.Random) -> tuple[Outcome, bool]:
    """One request on `conn`, its response checked in full; returns the outcome and
    whether the connection can carry another request."""
    if rng.random() < 0.7:
        size, seed, stream = rng.choice(GET_SIZES), rng.randrange(1 << 30), rng.random() < 0.5
        target = f"/blob?size={size}&seed={seed}" + ("&stream=1" if stream else "")
        outcome = Outcome("GET", target, time.monotonic())
        request = f"GET {target} HTTP/1.1\r\nHost: balanced\r\n\r\n".encode()
        expected = blob(size, seed)
    else:
        body = rng.randbytes(rng.choice(POST_SIZES))
        outcome = Outcome("POST", "/ingest", time.monotonic(), request_id=uuid.uuid4().hex, digest=hashlib.sha256(body).hexdigest())
        head = f"POST /ingest HTTP/1.1\r\nHost: balanced\r\nContent-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\nX-Request-Id: {outcome.request_id}\r\n\r\n"
        request = head.encode() + body
        expected = outcome.digest.encode()
    resp: Response | None = None
    try:
        conn.send(request)
        resp = conn.read(head_request=False, deadline=time.monotonic() + RESPONSE_TIMEOUT)
    except (OSError, TimeoutError, FramingError, ValueError) as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
    outcome.ended = time.monotonic()
    if resp is None:
        outcome.error = outcome.error or "connection closed before a response"
        return outcome, False
    outcome.status, outcome.pid, outcome.instance = resp.status, resp.header("X-Worker-Pid") or "", resp.header("X-Instance") or ""
    if not resp.complete:
        outcome.truncated = True
        outcome.error = f"truncated: {len(resp.body)} bytes of a {resp.framing} body"
        return outcome, False
    if resp.status != 200:
        outcome.error = f"status {resp.status}"
    elif resp.body != expected:
        outcome.corrupted = True
        outcome.error = f"corrupted: {len(resp.body)} bytes, not the {len(expected)} expected"
    elif outcome.method == "GET" and resp.header("X-Body-Sha256") != hashlib.sha256(expected).hexdigest():
        outcome.corrupted = True
        outcome.error = "corrupted: X-Body-Sha256 does not match"
    keep = (resp.header("Connection") or "").lower() != "close" and resp.framing != "eof"
    return outcome, keep


# ----- the checks ---------------------------------------------------------------------


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)

    def add(self, title: str, items: list[str]) -> None:
        if items:
            self.problems.append(f"{title} ({len(items)}):\n  " + "\n  ".join(items[:12]))


def describe(o: Outcome) -> str:
    where = f" from {o.instance}/{o.pid}" if o.pid else ""
    on = f", request {o.nth} on connection :{o.port}" if o.nth else ""
    return f"{o.method} {o.target} at {o.started:.2f}{where}{on}: {o.error}" + (f" [id {o.request_id}]" if o.request_id else "")


def check_outcomes(outcomes: list[Outcome], ledger: list[tuple[str, str, int]], killed: set[int]) -> Report:
    report = Report()
    gets = [o for o in outcomes if o.method == "GET"]
    posts = [o for o in outcomes if o.method == "POST"]
    report.add("client connections to the balancer refused", [describe(o) for o in outcomes if o.method == "CONNECT"])
    report.add("GETs that failed", [describe(o) for o in gets if not o.ok and not o.corrupted and not o.truncated])
    # A response the SIGKILLed worker was in the middle of sending is cut with it: no
    # server and no balancer can finish or retry it once bytes have reached the client.
    # Every other truncation is a loss.
    def cut_by_kill(o: Outcome) -> bool:
        return o.pid.isdigit() and int(o.pid) in killed

    report.add("responses truncated", [describe(o) for o in outcomes if o.truncated and not cut_by_kill(o)])
    report.add("responses corrupted", [describe(o) for o in outcomes if o.corrupted])
    recorded: dict[str, list[tuple[str, int]]] = {}
    for rid, sha, pid in ledger:
        recorded.setdefault(rid, []).append((sha, pid))
    sent = {o.request_id for o in posts}
    twice, lost, recorded_failed, bad_digest = [], [], [], []
    for o in posts:
        entries = recorded.get(o.request_id, [])
        if len(entries) > 1:
            twice.append(f"{describe(o)} recorded {len(entries)} times by {[pid for _, pid in entries]}")
        if o.ok and not entries:
            lost.append(describe(o) + " answered 200 but never recorded")
        if not o.ok and entries:
            pids = [pid for _, pid in entries]
            by_killed = " (by the SIGKILLed worker)" if set(pids) & killed else ""
            recorded_failed.append(f"{describe(o)} but recorded by {pids}{by_killed}")
        if any(sha != o.digest for sha, _ in entries):
            bad_digest.append(describe(o) + " recorded with another body's digest")
    report.add("POSTs recorded more than once", twice)
    report.add("POSTs answered but not recorded", lost)
    report.add("POSTs recorded but reported failed to the client", recorded_failed)
    report.add("POSTs recorded with the wrong body", bad_digest)
    report.add("ledger entries for requests never sent", [rid for rid in recorded if rid not in sent])
    return report


def summary(outcomes: list[Outcome]) -> str:
    counts = Counter((o.method, "ok" if o.ok else "failed") for o in outcomes)
    served = Counter(o.instance for o in outcomes if o.ok)
    return f"{dict(counts)}; served by instance: {dict(served)}"


# ----- the operations -----------------------------------------------------------------


def one_request(address: tuple[str, int], target: str, expected: bytes) -> Outcome:
    """GET `target` through the balancer on a connection of its own, its body checked
    against `expected`."""
    outcome = Outcome("GET", target, time.monotonic())
    try:
        with RawConn(socket.create_connection(address, timeout=RESPONSE_TIMEOUT)) as conn:
            conn.send(f"GET {target} HTTP/1.1\r\nHost: balanced\r\nConnection: close\r\n\r\n".encode())
            resp = conn.read(head_request=False, deadline=time.monotonic() + RESPONSE_TIMEOUT)
        if resp is None:
            outcome.error = "connection closed before a response"
        else:
            outcome.status, outcome.pid, outcome.instance = resp.status, resp.header("X-Worker-Pid") or "", resp.header("X-Instance") or ""
            if not resp.complete:
                outcome.truncated = True
                outcome.error = f"truncated: {len(resp.body)} of {len(expected)} bytes"
            elif resp.status != 200:
                outcome.error = f"status {resp.status}"
            elif resp.body != expected:
                outcome.corrupted = True
                outcome.error = f"corrupted: {len(resp.body)} bytes, not the {len(expected)} expected"
    except (OSError, TimeoutError, FramingError, ValueError) as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
    outcome.ended = time.monotonic()
    return outcome


class InFlight:
    """A request through the balancer in a thread of its own, checked when it ends."""

    def __init__(self, address: tuple[str, int], target: str, expected: bytes, label: str) -> None:
        self.label = label
        self.outcome: Outcome | None = None
        self._thread = threading.Thread(target=self._run, args=(address, target, expected), daemon=True)
        self._thread.start()

    def _run(self, address: tuple[str, int], target: str, expected: bytes) -> None:
        self.outcome = one_request(address, target, expected)

    def result(self) -> Outcome:
        self._thread.join(RESPONSE_TIMEOUT + 5)
        if self.outcome is None:
            return Outcome("GET", self.label, 0.0, error="did not finish")
        return self.outcome


def stream_on(lb: Balancer, instances: list[Instance], name: str, ops: "Operations") -> None:
    """Starts slow streamed GETs through the balancer until one is under way in
    instance `name` (each is checked at the end, wherever it went)."""
    for attempt in range(STREAM_ATTEMPTS):
        if attempt:
            # Round robin under a steady load can fall into step with the probes:
            # a random pause breaks it, so each try is a fresh coin toss.
            time.sleep(random.uniform(0.0, 0.05))
        seed = random.randrange(1 << 30)
        target = f"/blob?size={SLOW_SIZE}&seed={seed}&stream=1&pace_ms={SLOW_PACE_MS}"
        ops.in_flight.append(InFlight(lb.address, target, blob(SLOW_SIZE, seed), f"slow stream {seed}"))
        pattern = re.compile(rf"EVENT streaming (\w+) (\d+) {seed}$")
        where: list[str] = []

        def started() -> bool:
            where.extend(m.group(1) for inst in instances for line in inst.srv.lines() if (m := pattern.search(line)))
            return bool(where)

        wait_until(started, 10, f"the slow stream {seed} to start")
        if where[0] == name:
            ops.note(f"a slow streamed GET is under way in {name}")
            return
    raise AssertionError(f"the balancer sent none of {STREAM_ATTEMPTS} slow streams to instance {name}")


def holding_pid(instances: list[Instance], seen: int) -> tuple[Instance, int] | None:
    """The instance and worker pid of an `EVENT holding PID` line not among the first
    `seen` such lines."""
    count = 0
    for inst in instances:
        for line in inst.srv.lines():
            m = re.search(r"EVENT holding (\d+)", line)
            if m:
                count += 1
                if count > seen:
                    return inst, int(m.group(1))
    return None


def holding_lines(instances: list[Instance]) -> int:
    return sum(1 for inst in instances for line in inst.srv.lines() if "EVENT holding" in line)


def kill_a_busy_worker(lb: Balancer, instances: list[Instance], ops: Operations) -> tuple[int, Outcome]:
    """SIGKILLs the worker serving a GET /hold sent through the balancer; returns its
    pid and the outcome of that GET (which the balancer must retry elsewhere)."""
    before = holding_lines(instances)
    held = InFlight(lb.address, "/hold?ms=1500", b"held", "held GET")
    found: list[tuple[Instance, int]] = []

    def holding() -> bool:
        hit = holding_pid(instances, before)
        if hit:
            found.append(hit)
        return hit is not None

    wait_until(holding, 10, "the app to hold the request")
    inst, pid = found[0]
    ready = inst.ready_workers()
    ops.note(f"SIGKILL to worker {pid} of {inst.name}")
    os.kill(pid, signal.SIGKILL)
    inst.srv.wait_for_log(rf"Worker {pid} was killed by SIGKILL", timeout=10)
    wait_until(lambda: inst.ready_workers() > ready, 20, lambda: f"a worker replacing {pid} in {inst.name}:\n{inst.srv.log()}")
    ops.note(f"{inst.name}: a worker replaces {pid}")
    return pid, held.result()


def wait_backends_up(lb: Balancer, instances: list[Instance], timeout: float = 10.0) -> None:
    """HAProxy: until its health checks see every server up. nginx (no active checks):
    until a request through it has been answered by every instance."""
    if lb.name == "haproxy":
        wait_until(lambda: set(lb.server_states().values()) == {2}, timeout, lambda: f"HAProxy to see every server up: {lb.server_states()}\n{lb.log()}")
        return
    seen: set[str] = set()

    def all_seen() -> bool:
        with RawConn(socket.create_connection(lb.address, timeout=5)) as conn:
            conn.send(b"GET /health HTTP/1.1\r\nHost: balanced\r\nConnection: close\r\n\r\n")
            resp = conn.read(head_request=False, deadline=time.monotonic() + 5)
        if resp is not None and resp.status == 200:
            seen.add(resp.header("X-Instance") or "")
        return seen >= {inst.name for inst in instances}

    wait_until(all_seen, timeout, "nginx to reach every instance")


@dataclass
class Operations:
    """What the test did to the instances, and when (time.monotonic(), as in the
    outcomes), and what went wrong in doing it."""

    timeline: list[str] = field(default_factory=list)
    killed: set[int] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    in_flight: list[InFlight] = field(default_factory=list)  # slow streams across a SIGHUP or SIGTERM

    def note(self, what: str) -> None:
        self.timeline.append(f"{time.monotonic():.2f} {what}")


def operate(lb: Balancer, a: Instance, b: Instance, steps: tuple[str, ...], ops: Operations) -> None:
    """Runs `steps` ("reload", "restart", "kill") with the load going."""
    time.sleep(1.5)
    if "reload" in steps:
        stream_on(lb, [a, b], "a", ops)
        ops.note("SIGHUP to a")
        a.srv.proc.send_signal(signal.SIGHUP)
        a.srv.wait_for_log(r"Reload complete", timeout=30)
        ops.note("a: reload complete")
        time.sleep(1.0)
    if "restart" in steps:
        stream_on(lb, [a, b], "b", ops)
        ops.note("SIGTERM to b")
        status = b.srv.stop(signal.SIGTERM, timeout=20)
        ops.note(f"b exited with status {status}")
        if status != 0:
            ops.problems.append(f"instance b exited with status {status} after SIGTERM")
        b.start()
        ops.note("b started again, its workers ready")
        wait_backends_up(lb, [a, b])
        ops.note("the balancer sees b again")
        time.sleep(1.0)
    if "kill" in steps:
        pid, held = kill_a_busy_worker(lb, [a, b], ops)
        ops.killed.add(pid)
        if not held.ok:
            ops.problems.append(f"the GET held by the SIGKILLed worker {pid} was not retried: {describe(held)}")
    time.sleep(1.5)
    for flight in ops.in_flight:
        outcome = flight.result()
        if not outcome.ok:
            ops.problems.append(f"a slow streamed GET in flight across a reload or a shutdown failed: {describe(outcome)}")
    ops.note("end")


def run_scenario(
    balancer: str, tmp: str, workers: int = WORKERS, steps: tuple[str, ...] = ("reload", "restart", "kill"), extra: tuple[str, ...] = ()
) -> None:
    """Two instances (options `extra`) behind `balancer` under load while `steps`
    happen; raises AssertionError with everything that went wrong."""
    a = Instance("a", os.path.join(tmp, "a.ledger"), workers, extra)
    b: Instance | None = None
    try:
        b = Instance("b", os.path.join(tmp, "b.ledger"), workers, extra)
        start = haproxy if balancer == "haproxy" else nginx
        with start([a.address, b.address]) as lb:
            wait_backends_up(lb, [a, b])
            ops = Operations()
            with Load(lb.address) as load:
                ops.note("load started")
                try:
                    operate(lb, a, b, steps, ops)
                finally:
                    load.stop()
            outcomes = load.outcomes
            report = check_outcomes(outcomes, ledger_entries(a.ledger) + ledger_entries(b.ledger), ops.killed)
            report.problems[:0] = ops.problems
            posts_ok = sum(1 for o in outcomes if o.method == "POST" and o.ok)
            gets_ok = sum(1 for o in outcomes if o.method == "GET" and o.ok)
            if posts_ok < 100 or gets_ok < 300:
                report.problems.append(f"too little load got through to prove anything: {gets_ok} GETs and {posts_ok} POSTs completed")
            served = {o.instance for o in outcomes if o.ok}
            if served != {"a", "b"}:
                report.problems.append(f"the balancer did not spread the load over both instances: {served}")
            assert not report.problems, (
                f"{balancer}: {summary(outcomes)}\n" + "\n".join(report.problems) + "\n--- what the test did\n" + "\n".join(ops.timeline)
                + f"\n{lb.log()}\n{a.log()}\n{b.log()}"
            )
    finally:
        a.stop()
        if b is not None:
            b.stop()


@pytest.mark.parametrize("sockets", [(), ("--reuse-port",)], ids=["shared-socket", "reuse-port"])
@pytest.mark.parametrize("balancer", ["haproxy", "nginx"])
def test_reload_restart_and_a_killed_worker_behind_a_balancer_lose_nothing(balancer: str, sockets: tuple[str, ...], tmp_path) -> None:
    run_scenario(balancer, str(tmp_path), extra=sockets)


# ----- PROXY protocol -----------------------------------------------------------------


def whoami_from(source: str, address: tuple[str, int], conn: RawConn | None) -> tuple[RawConn, dict[str, str], int]:
    """GET /whoami on `conn` (a new connection from `source` when None)."""
    if conn is None:
        sock = socket.socket()
        sock.settimeout(10)
        sock.bind((source, 0))
        sock.connect(address)
        conn = RawConn(sock)
    conn.send(b"GET /whoami HTTP/1.1\r\nHost: balanced\r\n\r\n")
    resp = conn.read(head_request=False, deadline=time.monotonic() + 10)
    assert resp is not None and resp.complete and resp.status == 200, resp
    return conn, json.loads(resp.body), int(conn.sock.getsockname()[1])


@pytest.fixture
def proxied_tapster(request: pytest.FixtureRequest, tmp_path) -> Iterator[ServerProcess]:
    workers: int = request.param
    args = ["--proxy-protocol", "--trusted-proxy=127.0.0.1"] + ([f"--workers={workers}"] if workers > 1 else [])
    srv = ServerProcess(APP, *args, env={"BALANCED_INSTANCE": "p", "BALANCED_LEDGER": str(tmp_path / "p.ledger")})
    try:
        if workers > 1:
            wait_until(lambda: sum(1 for line in srv.lines() if re.search(r"Worker \d+ ready", line)) >= workers, 20, lambda: f"workers ready:\n{srv.log()}")
        yield srv
    finally:
        srv.stop()


@pytest.mark.parametrize("proxied_tapster", [1, WORKERS], indirect=True, ids=["1-process", f"{WORKERS}-workers"])
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_haproxy_send_proxy_gives_the_app_the_client_address(version: str, proxied_tapster: ServerProcess) -> None:
    srv = proxied_tapster
    with haproxy([srv.address], proxy=version) as lb:
        # The health checks carry the PROXY header too: the server must come (and stay) up.
        wait_until(lambda: lb.server_states().get("s0") == 2, 5, lambda: f"the health check through {version} to pass:\n{lb.log()}\n{srv.log()}")
        time.sleep(0.5)
        assert lb.server_states().get("s0") == 2, lb.log()
        conns: dict[str, RawConn | None] = {"127.0.0.2": None, "127.0.0.3": None}
        try:
            for _ in range(3):  # interleaved on keep-alive connections: no mixing of clients
                for source in conns:
                    conn, seen, port = whoami_from(source, lb.address, conns[source])
                    conns[source] = conn
                    assert seen["REMOTE_ADDR"] == source, f"{version}: app saw {seen}, client is {source}:{port}\n{lb.log()}\n{srv.log()}"
                    assert str(seen["REMOTE_PORT"]) == str(port), f"{version}: app saw {seen}, client is {source}:{port}"
        finally:
            for c in conns.values():
                if c is not None:
                    c.close()

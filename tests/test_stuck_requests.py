"""Slow and stuck requests, end to end: `--dump-slow-requests-after` logs, once per
request, a WARNING naming the request with the Python stack of the thread running it
(the application's own function in it) and counts it, while the request completes
normally (and nothing is dumped without the option); `--request-timeout` with a
worker answers an overdue request 504 (or cuts its connection once its response has
begun), lets the worker's other requests finish, replaces the worker and counts the
timeout and the exit; in a single process it warns and counts, and the request still
gets its response when the application returns."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import Callable

from balancers import free_port
from prometheus import wait_listening, wait_total
from support import ConnectionClosed, RawConn, ServerProcess, http_get
from test_workers import Tapster, alive, tapster, wait_until  # noqa: F401 (tapster: the fixture)

APP = "apps.observed:app"
MakeServer = Callable[..., ServerProcess]
LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ \[\d+\] \[[A-Z]+\] ")
SLOW = r"\[WARNING\] tapster: Slow request: GET /sleep(\?s=[\d.]+)? has been running for (\d+\.\d) s"


@dataclass
class Outcome:
    """One request made on its own connection: when, what came back, and from whom."""

    started: float
    ended: float = 0.0
    status: int = 0
    pid: int = 0
    error: str = ""


def timed_get(srv: ServerProcess, path: str, timeout: float = 20.0) -> Outcome:
    outcome = Outcome(time.monotonic())
    try:
        with srv.connect(timeout=timeout) as conn:
            conn.send(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
            resp = conn.read_response()
        outcome.status = resp.status
        outcome.pid = int(resp.header("X-Pid") or 0)
    except (OSError, ConnectionClosed) as exc:
        outcome.error = repr(exc)
    outcome.ended = time.monotonic()
    return outcome


def in_background(srv: ServerProcess, path: str, into: list[Outcome]) -> threading.Thread:
    thread = threading.Thread(target=lambda: into.append(timed_get(srv, path)), daemon=True)
    thread.start()
    return thread


def record_after(lines: list[str], first: str) -> list[str]:
    """The lines of the log record that starts with line `first` (its message's
    continuation lines: a stack)."""
    start = lines.index(first)
    rest = []
    for line in lines[start + 1 :]:
        if LOG_RECORD.match(line):
            break
        rest.append(line)
    return rest


# --- dumping slow requests ----------------------------------------------------------------------


def test_a_slow_request_is_dumped_once_with_its_stack(make_server: MakeServer) -> None:
    port = free_port()
    srv = make_server("--dump-slow-requests-after=0.5", f"--metrics-listen=127.0.0.1:{port}", app=APP)
    metrics = ("127.0.0.1", port)
    wait_listening(metrics)
    assert http_get(srv.host, int(srv.port), "/hello")[0] == 200  # fast: never dumped
    outcome = timed_get(srv, "/sleep?s=2")
    assert (outcome.status, outcome.error) == (200, "")
    assert outcome.ended - outcome.started >= 2
    line = srv.wait_for_log(SLOW)
    m = re.search(SLOW, line)
    assert m and 0.5 <= float(m.group(2)) < 2, line
    stack = record_after(srv.lines(), line)
    frame = re.compile(r'File ".*observed\.py", line \d+, in sleeping_in_observed_app')
    assert any(frame.search(x) for x in stack), f"no frame of sleeping_in_observed_app in:\n" + "\n".join([line, *stack])
    wait_total(metrics, "tapster_slow_requests_total", lambda v: v == 1)
    assert http_get(srv.host, int(srv.port), "/hello")[0] == 200
    dumps = [x for x in srv.lines() if "Slow request:" in x]
    assert len(dumps) == 1, dumps  # once, though it ran four times the threshold


def test_no_dump_without_the_option(make_server: MakeServer) -> None:
    srv = make_server(app=APP)
    outcome = timed_get(srv, "/sleep?s=1.5")
    assert outcome.status == 200
    assert http_get(srv.host, int(srv.port), "/hello")[0] == 200
    assert srv.stop() == 0
    assert "Slow request" not in srv.log() and "sleeping_in_observed_app" not in srv.log(), srv.log()


# --- request_timeout with a worker -------------------------------------------------------------


def connections_by_worker(srv: ServerProcess, count: int) -> dict[int, list[RawConn]]:
    """`count` keep-alive connections, grouped by the worker that accepted each (a
    connection stays with its worker: asked with GET /pid on it)."""
    grouped: dict[int, list[RawConn]] = {}
    for _ in range(count):
        conn = srv.connect(timeout=20)
        conn.send(b"GET /pid HTTP/1.1\r\nHost: t\r\n\r\n")
        resp = conn.read_response()
        assert resp.status == 200
        grouped.setdefault(int(resp.body), []).append(conn)
    return grouped


def send_on(conn: RawConn, path: str, into: list[Outcome]) -> threading.Thread:
    """GET `path` on the open connection `conn`, in a thread; the outcome into `into`."""

    def run() -> None:
        outcome = Outcome(time.monotonic())
        try:
            conn.send(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            resp = conn.read_response()
            outcome.status, outcome.pid = resp.status, int(resp.header("X-Pid") or 0)
        except (OSError, ConnectionClosed) as exc:
            outcome.error = repr(exc)
        outcome.ended = time.monotonic()
        into.append(outcome)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_an_overdue_request_gets_504_and_its_worker_is_replaced(tapster: Callable[..., Tapster]) -> None:
    port = free_port()
    metrics = ("127.0.0.1", port)
    args = ["--workers=2", "--request-timeout=1", "--shutdown-timeout=2", "--threads=16", f"--metrics-listen=127.0.0.1:{port}"]
    srv = tapster(*args, app=APP)
    workers = srv.workers(2)
    wait_listening(metrics)
    grouped = connections_by_worker(srv, 40)
    victim = max(grouped, key=lambda pid: len(grouped[pid]))
    conns = grouped[victim]
    assert len(conns) >= 8, {pid: len(c) for pid, c in grouped.items()}
    stuck: list[Outcome] = []
    others: list[Outcome] = []
    try:
        sent = time.monotonic()
        threads = [send_on(conns[0], "/sleep?s=30", stuck)]
        # On the same worker, requests well within the timeout, sent before it strikes
        # (0.3 ... 0.9 s after the stuck one) and running past it: they complete normally.
        for i, conn in enumerate(conns[1:8]):
            time.sleep(max(0.0, sent + 0.3 + 0.1 * i - time.monotonic()))
            threads.append(send_on(conn, "/sleep?s=0.9", others))
        for thread in threads:
            thread.join(25)
    finally:
        for group in grouped.values():
            for conn in group:
                conn.close()
    [answer] = stuck
    assert (answer.status, answer.error) == (504, ""), (answer, srv.log())
    assert 1 <= answer.ended - answer.started < 5, answer
    assert [(o.status, o.pid, o.error) for o in others] == [(200, victim, "")] * 7, (others, srv.log())
    assert any(o.ended > answer.ended for o in others), f"none of the worker's other requests outlived the 504: {others}"
    srv.wait_for_log(r"\[WARNING\] .*exceeded request_timeout")
    srv.wait_for_log(rf"Replacing worker {victim} \(request_timeout")
    wait_until(lambda: not alive(victim), 10, f"worker {victim} to end")
    # It drained and exited on its own (without waiting for the stuck thread), not killed.
    srv.wait_for_log(rf"Worker {victim} exited with status 0")
    now = srv.workers(2)
    assert victim not in now and len(now & workers) == 1, (workers, now)
    [new] = now - workers
    assert new in serving_pids(srv, 2)
    wait_total(metrics, "tapster_request_timeouts_total", lambda v: v == 1)
    wait_total(metrics, "tapster_worker_exits_total", lambda v: v == 1, reason="request_timeout")


def serving_pids(srv: ServerProcess, want: int, limit: int = 300) -> set[int]:
    """The pids answering GET /pid on new connections, asked until `want` differ."""
    seen: set[int] = set()
    for _ in range(limit):
        status, _, body = http_get(srv.host, int(srv.port), "/pid")
        assert status == 200
        seen.add(int(body))
        if len(seen) >= want:
            break
    return seen


def test_an_overdue_response_already_begun_is_cut(tapster: Callable[..., Tapster]) -> None:
    srv = tapster("--workers=2", "--request-timeout=1", "--shutdown-timeout=2", app=APP)
    srv.workers(2)
    started = time.monotonic()
    with srv.connect(timeout=15) as conn:
        conn.send(b"GET /pid HTTP/1.1\r\nHost: t\r\n\r\n")
        victim = int(conn.read_response().body)
        conn.send(b"GET /drip?n=20&s=0.25 HTTP/1.1\r\nHost: t\r\n\r\n")  # 5 s of dripping
        resp = conn.read(head_request=False, deadline=started + 10)
    assert resp is not None and resp.status == 200, resp
    assert not resp.complete, "the whole body came: not cut"
    assert 0 < len(resp.body) < 20 * 1024
    assert time.monotonic() - started < 5
    srv.wait_for_log(rf"Replacing worker {victim} \(request_timeout")
    wait_until(lambda: not alive(victim), 10, f"worker {victim} to end")
    assert victim not in srv.workers(2)


# --- request_timeout in a single process ------------------------------------------------------


def test_in_a_single_process_the_overdue_request_is_reported_and_finishes(make_server: MakeServer) -> None:
    port = free_port()
    metrics = ("127.0.0.1", port)
    srv = make_server("--request-timeout=1", f"--metrics-listen=127.0.0.1:{port}", app=APP)
    wait_listening(metrics)
    outcomes: list[Outcome] = []
    thread = in_background(srv, "/sleep?s=2.5", outcomes)
    srv.wait_for_log(r"\[WARNING\] .*exceeded request_timeout", timeout=4)
    assert thread.is_alive(), "warned only after the response"
    thread.join(10)
    [outcome] = outcomes
    assert (outcome.status, outcome.error, outcome.pid) == (200, "", srv.proc.pid), outcome
    assert outcome.ended - outcome.started >= 2.5
    wait_total(metrics, "tapster_request_timeouts_total", lambda v: v == 1)
    assert http_get(srv.host, int(srv.port), "/hello")[0] == 200
    assert "Replacing worker" not in srv.log()
    assert srv.stop() == 0


def test_time_spent_receiving_the_body_is_not_the_applications(make_server: MakeServer) -> None:
    """The clock of both limits starts when the application gets the request: a body
    that takes 2 s to arrive (the server buffers it first) is neither slow nor overdue."""
    port = free_port()
    metrics = ("127.0.0.1", port)
    srv = make_server(
        "--request-timeout=1", "--dump-slow-requests-after=0.5", f"--metrics-listen=127.0.0.1:{port}", app=APP
    )
    wait_listening(metrics)
    body = b"x" * 40
    with srv.connect(timeout=10) as conn:
        conn.send(b"POST /hello HTTP/1.1\r\nHost: t\r\nContent-Length: 40\r\nConnection: close\r\n\r\n")
        for i in range(0, len(body), 4):  # 10 pieces over 2 s
            time.sleep(0.2)
            conn.send(body[i : i + 4])
        assert conn.read_response().status == 200
    assert http_get(srv.host, int(srv.port), "/hello")[0] == 200
    wait_total(metrics, "tapster_requests_total", lambda v: v == 2)
    assert "exceeded request_timeout" not in srv.log() and "Slow request" not in srv.log(), srv.log()
    wait_total(metrics, "tapster_request_timeouts_total", lambda v: v == 0)
    wait_total(metrics, "tapster_slow_requests_total", lambda v: v == 0)

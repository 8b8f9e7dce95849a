"""Review of the worker processes (commit cc7177e): defects found, each as a test that
fails until it is fixed. Real CLI, real sockets, bounded, in the style of
tests/test_workers.py (whose helpers it uses)."""

from __future__ import annotations

import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from support import TESTS_DIR
from support import tests_env as child_env  # not collected as a test
from test_workers import APP, Tapster, alive, live_children, tapster, wait_until  # noqa: F401

# --- 1. a SIGTERM that reaches a worker between its fork and its own handlers is lost -----------


def test_sigterm_right_after_a_fork_is_not_lost(tapster: Callable[..., Tapster]) -> None:
    # SIGTTIN forks a worker; a SIGTERM to the supervisor right after makes it SIGTERM
    # that worker within a millisecond of the fork, while the worker still runs the
    # supervisor's Python handler (Supervisor._on_signal), which queues the signal in the
    # child's copy of `signals`, read by nobody. The worker then imports the app and
    # serves until the SIGKILL at shutdown_timeout + 2 s. Expected: every round drains.
    lost = []
    for delay in [0.0001, 0.0002, 0.0003, 0.0005] * 3:
        srv = tapster("--workers=2", "--graceful-timeout=1")
        srv.workers(2)
        srv.proc.send_signal(signal.SIGTTIN)
        time.sleep(delay)
        srv.proc.send_signal(signal.SIGTERM)
        srv.wait_exit(10)
        srv._reader.join(5)
        if "did not stop in time" in srv.log():
            lost.append(srv.log())
        if lost:
            break
    assert not lost, "a worker forked just before the SIGTERM ignored it and was SIGKILLed:\n" + lost[0]


# --- 2. SIGTTOU during a reload: the old worker stays RETIRING, the reload never ends -----------


def test_sigttou_during_a_reload_does_not_wedge_the_reload(tapster: Callable[..., Tapster]) -> None:
    # SIGHUP marks both workers RETIRING and forks their replacements; SIGTTOU then
    # drains the highest (slot, pid): a replacement. Its predecessor stays RETIRING
    # forever (nobody replaces it, nothing drains it), `reloading` never empties, so
    # the reload never completes (no READY=1 for systemd's notify-reload) and every
    # later SIGHUP and --reload change is ignored; and 2 workers serve for a target of 1.
    srv = tapster("--workers=2", "--graceful-timeout=1")
    srv.workers(2)
    srv.proc.send_signal(signal.SIGHUP)
    srv.proc.send_signal(signal.SIGTTOU)  # handled after SIGHUP (lower number first)
    srv.wait_for_log(r"Removing a worker: 1 now")
    wait_until(lambda: len(live_children(srv.pid)) == 1, 8, lambda: f"one worker (target 1); children {live_children(srv.pid)}:\n{srv.log()}")
    srv.wait_for_log(r"Reload complete", timeout=3)
    before = len(srv.logged_pids(r"Worker (\d+) started"))
    srv.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: len(srv.logged_pids(r"Worker (\d+) started")) > before, 3, lambda: f"a second SIGHUP to reload:\n{srv.log()}")


# --- 3. --reuse-port with --user: the other slots' sockets are bound after the switch -------------


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch user")
def test_reuse_port_with_user(tapster: Callable[..., Tapster]) -> None:
    # serve_workers() drops privileges (after_bind) before SlotSockets.for_slot binds
    # the other slots' SO_REUSEPORT twins; Linux only lets sockets of the same
    # effective uid share a port, so the bind fails: "Error: [Errno 98] Address already
    # in use" after "Serving on" has been logged. (A later SIGTTIN could never bind
    # either, and raises `target` without a worker.)
    # --preload: the application (and what it imports) is read before the switch, as
    # this machine's Python lives where nobody cannot read it.
    srv = tapster("--workers=2", "--reuse-port", "--user=nobody", "--preload", "--graceful-timeout=1", wait=False)
    try:
        status = srv.proc.wait(3)
    except subprocess.TimeoutExpired:
        status = None
    assert status is None, f"exited with {status}:\n{srv.log()}"
    srv.workers(2)


# --- 4. a worker whose engine fails to start exits 3 and nobody says why ------------------------


def test_a_worker_whose_engine_fails_says_why(tmp_path: Path) -> None:
    # run_worker() only catches exceptions from the import and server_for(); an
    # exception from server.run() (or watch_imported_files()) goes through
    # _become_worker's `finally: os._exit(3)` and its traceback is never printed. With
    # a low open-file limit the engine raises OSError EMFILE ("Too many open files")
    # in each worker; the log says only "Worker N exited with status 3".
    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (12, 12))

    logfile = tmp_path / "log"
    with open(logfile, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tapster", "--listen=127.0.0.1:0", "--workers=2", APP],
            cwd=TESTS_DIR, env=child_env(), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            preexec_fn=low_limit, start_new_session=True,
        )  # fmt: skip
    try:
        wait_until(lambda: "exited with status 3" in logfile.read_text() or proc.poll() is not None, 10, "a worker to fail")
        time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the supervisor and its workers
        proc.wait()
    log = logfile.read_text()
    if "exited with status 3" not in log:
        pytest.skip("the engine started with 12 descriptors here")
    assert "Too many open files" in log, log


# --- 5. serve(app, workers=N) leaves the supervisor's signal handlers behind -------------------

SERVE_THEN_SIGINT = """\
import os, signal, sys, time
sys.path.insert(0, {tests_dir!r})
from apps.workers_app import app
import logging, tapster
logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s")
tapster.serve(app, listen="127.0.0.1:0", workers=2, shutdown_timeout=1)
print("RETURNED", signal.getsignal(signal.SIGINT), flush=True)
try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(1)
    print("SIGINT IGNORED", flush=True)
except KeyboardInterrupt:
    print("KEYBOARD INTERRUPT", flush=True)
"""


def test_serve_with_workers_restores_the_signal_handlers(tapster: Callable[..., Tapster], tmp_path: Path) -> None:
    # Supervisor._install_signals() replaces the handlers of SIGTERM, SIGINT, SIGHUP,
    # SIGTTIN, SIGTTOU and SIGCHLD and the wake-up fd, and nothing restores them (nor
    # closes the wake-up pipe or the listening sockets): after serve() returns, the
    # program's Ctrl-C is swallowed by Supervisor._on_signal.
    script = tmp_path / "serve_then_sigint.py"
    script.write_text(SERVE_THEN_SIGINT.format(tests_dir=str(TESTS_DIR)))
    srv = tapster(cmd=[sys.executable, str(script)])
    srv.workers(2)
    srv.proc.send_signal(signal.SIGTERM)
    srv.wait_exit(10)
    srv._reader.join(5)
    assert "KEYBOARD INTERRUPT" in srv.log(), srv.log()


# --- 6. fd:// of an unbound socket listens on a random port on every interface ------------------


def test_fd_of_an_unbound_socket_is_refused(tapster: Callable[..., Tapster]) -> None:
    # _adopt() calls listen() on an inherited socket that is not listening; for an
    # unbound TCP socket the kernel then binds it to 0.0.0.0 and an ephemeral port:
    # "Serving on http://0.0.0.0:48299". Expected: refused, like a UDP socket is.
    sock = socket.socket()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "tapster", f"--listen=fd://{sock.fileno()}", APP],
            cwd=TESTS_DIR, env=child_env(), stdin=subprocess.DEVNULL, capture_output=True,
            text=True, timeout=3, pass_fds=(sock.fileno(),),
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        out = (exc.stderr or b"").decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        raise AssertionError(f"served an unbound socket:\n{out}") from None
    finally:
        sock.close()
    assert result.returncode == 1 and result.stderr.startswith("Error:"), result.stderr


# --- 7. the second SIGINT: tests/test_workers.py's test_a_second_sigint_stops_at_once also
# checks that the workers end without the supervisor's SIGKILL (they were SIGKILLed before).


# --- 8. --preload with an application that starts threads ----------------------------------------

THREADED_APP = """\
import threading, time
threading.Thread(target=lambda: time.sleep(3600), daemon=True, name="app-bg").start()
def app(environ, start_response):
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]
"""


def test_preload_of_an_app_with_threads_is_reported(tapster: Callable[..., Tapster], tmp_path: Path) -> None:
    # The README says the supervisor "runs no engine and no threads, so a fork copies
    # one thread". With --preload an application that starts a thread at import makes
    # the supervisor fork with two threads: the thread silently does not exist in the
    # workers (and a lock it held at the fork stays held there). Nothing warns.
    (tmp_path / "threaded_app.py").write_text(THREADED_APP)
    srv = tapster("--workers=2", "--preload", "--graceful-timeout=1", app="threaded_app:app",
                  env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{TESTS_DIR}"})  # fmt: skip
    srv.workers(2)
    assert len(os.listdir(f"/proc/{srv.pid}/task")) > 1  # the precondition: it has a thread
    assert re.search(r"WARNING.*thread", srv.log()), srv.log()


# --- 9. --reuse-port: a removed worker's socket keeps taking connections while it drains --------


def test_reuse_port_sigttou_routes_no_new_connection_to_the_draining_worker(tapster: Callable[..., Tapster]) -> None:
    # SIGTTOU closes the supervisor's copy of the victim's SO_REUSEPORT socket, but the
    # draining worker keeps its own (Python's listener object, closed by
    # BaseWSGIServer.close() after the drain): the kernel goes on hashing new
    # connections to it for the whole drain; nobody accepts them, and they are reset
    # when the worker exits. The README speaks only of the queue at the moment of the
    # removal.
    srv = tapster("--workers=2", "--reuse-port", "--threads=16", "--graceful-timeout=5")
    srv.workers(2)
    slow = []
    for _ in range(10):  # both workers busy, so the victim drains for ~3 s
        conn = srv.connect(timeout=10)
        conn.send(b"GET /sleep?s=3 HTTP/1.1\r\nHost: t\r\n\r\n")
        slow.append(conn)
    time.sleep(0.3)
    srv.proc.send_signal(signal.SIGTTOU)
    srv.wait_for_log(r"Removing a worker: 1 now")
    time.sleep(0.2)
    failures: list[str] = []

    def one() -> None:
        try:
            with socket.create_connection(srv.address, timeout=1.5) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                if not s.recv(12).startswith(b"HTTP/1.1 200"):
                    failures.append("not 200")
        except OSError as exc:
            failures.append(repr(exc))

    threads = [threading.Thread(target=one) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    for conn in slow:
        conn.close()
    assert not failures, f"{len(failures)} of 16 new connections failed during the drain: {failures[:3]}"

"""Worker processes and their supervisor (`workers` > 1, or `max_requests`,
`max_worker_memory` or `reload`).

The supervisor binds every listener once, then forks the workers, which inherit them
and run the engine. It replaces a worker that dies (backing off when they keep failing
at start-up, and giving up when none serves), recycles one past `max_requests` or
`max_worker_memory` (the replacement is accepting before the old one drains), reloads
them all on SIGHUP or a changed file (new ones up before the old ones drain), adds and
removes one on SIGTTIN/SIGTTOU, and drains them all on SIGTERM or SIGINT.

It is outside the request path and holds no engine and no threads, so a fork copies a
single thread; it imports the application only with `preload`. Workers tell it things
over a pipe, one line each: `ready`, `retire N` (max_requests), `changed PATH`, and
`timeout` (request_timeout; written by the engine itself, without the GIL).
"""

from __future__ import annotations

import enum
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any, Callable, NoReturn

from tapster import _tapster
from tapster.adjustments import Adjustments
from tapster.process import Notifier, flush_std_streams, pidfile
from tapster.server import (
    WSGIApp,
    _Listener,
    bind_listeners,
    bind_metrics,
    engine_config,
    raise_fd_limit,
    server_for,
)

logger = logging.getLogger("tapster")

#: A worker's exit status when the application or the server could not start.
BOOT_FAILED = 3
#: Start-up failures in a row after which the supervisor gives up, when no worker serves.
MAX_BOOT_FAILURES = 5
#: The wait before retrying after a start-up failure, doubled each time up to BACKOFF_MAX.
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 8.0
#: How often worker memory is checked.
MEMORY_EVERY = 1.0
#: How long past `shutdown_timeout` a draining worker has before it is killed.
KILL_GRACE = 2.0
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
#: A worker that dies sooner than this after it became ready counts as failing to
#: start (for the back-off), so a worker that crashes on its first request cannot
#: make the supervisor fork in a tight loop.
SHORT_LIFE = 1.0
#: The signals the supervisor handles.
SUPERVISOR_SIGNALS = frozenset(
    (
        signal.SIGTERM,
        signal.SIGINT,
        signal.SIGHUP,
        signal.SIGTTIN,
        signal.SIGTTOU,
        signal.SIGUSR1,
        signal.SIGCHLD,
    )
)


class State(enum.Enum):
    STARTING = "starting"  # forked, not accepting yet
    SERVING = "serving"
    RETIRING = "retiring"  # serving while its replacement starts
    DRAINING = "draining"  # told to stop


class Phase(enum.Enum):
    RUNNING = "running"
    DRAINING = "draining"  # SIGTERM or a first SIGINT
    STOPPING = "stopping"  # a second SIGINT


@dataclass
class Worker:
    pid: int
    pipe: int
    slot: int
    #: The worker this one takes over from once it is ready.
    replaces: int | None
    state: State = State.STARTING
    ready_at: float = 0.0
    kill_at: float = 0.0
    pending: bytes = b""
    #: Its slot in the metrics region (None: no metrics).
    metrics_slot: int | None = None
    #: Why the supervisor ended it, for `tapster_worker_exits_total{reason}`.
    exit_reason: str = "crashed"


@dataclass
class Spawn:
    """A worker to start once `at` has come."""

    at: float
    slot: int
    replaces: int | None


class SlotSockets:
    """With `reuse_port`, each worker slot's own SO_REUSEPORT socket per TCP address
    (slot 0 has the ones first bound); every other listener is shared by all workers."""

    def __init__(self, adj: Adjustments, listeners: list[_Listener]) -> None:
        self.adj = adj
        self.first = listeners
        self.extra: dict[int, list[_Listener]] = {}

    def _spread(self, lst: _Listener) -> bool:
        return self.adj.reuse_port and lst.kind == "tcp" and lst.sharing == "owned"

    def for_slot(self, slot: int) -> list[_Listener]:
        """The listeners the worker in `slot` serves, as it should treat them."""
        if slot and slot not in self.extra:
            self.extra[slot] = [
                _reuse_port_twin(lst, self.adj.backlog) for lst in self.first if self._spread(lst)
            ]
        own = iter(self.extra.get(slot, []))
        result = []
        for lst in self.first:
            if self._spread(lst):
                chosen = lst if slot == 0 else next(own)
                result.append(_Listener(chosen.socket, "tcp", "inherited", lst.security))
            else:
                result.append(_Listener(lst.socket, lst.kind, "workers", lst.security))
        return result

    def close_others(self, kept: list[_Listener]) -> None:
        """In a worker: closes the other slots' sockets, so that a slot the supervisor
        closes stops receiving connections."""
        mine = {lst.socket.fileno() for lst in kept}
        for group in self.extra.values():
            for lst in group:
                if lst.socket.fileno() not in mine:
                    lst.socket.close()
        for lst in self.first:
            if self._spread(lst) and lst.socket.fileno() not in mine:
                lst.socket.close()

    def close_slot(self, slot: int) -> None:
        for lst in self.extra.pop(slot, []):
            lst.socket.close()

    def stop_listening(self) -> None:
        """New connections are refused from now on (sockets others own are left)."""
        for lst in self.first + [x for group in self.extra.values() for x in group]:
            if lst.sharing == "owned":
                try:
                    lst.socket.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def _reuse_port_twin(lst: _Listener, backlog: int) -> _Listener:
    """Another SO_REUSEPORT socket bound to `lst`'s address."""
    sock = socket.socket(lst.socket.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(lst.socket.getsockname())
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return _Listener(sock, "tcp", security=lst.security)


class Supervisor:
    def __init__(
        self,
        adj: Adjustments,
        config: _tapster.EngineConfig,
        listeners: list[_Listener],
        app: WSGIApp | None,
        load: Callable[[], WSGIApp],
        metrics: socket.socket | None = None,
    ) -> None:
        self.adj = adj
        self.config = config
        self.sockets = SlotSockets(adj, listeners)
        #: The metrics listener, shared by every worker; its counters live in a region
        #: shared with them, made now, before any fork.
        self.metrics = metrics
        if metrics is not None:
            _tapster.metrics_create(os.getpid())
        self.app = app
        self.load = load
        self.notifier = Notifier.from_environment()
        self.target = adj.workers
        self.workers: dict[int, Worker] = {}
        self.spawns: list[Spawn] = []
        self.phase = Phase.RUNNING
        self.boot_failures = 0
        #: Workers in a row that died within SHORT_LIFE of becoming ready.
        self.quick_deaths = 0
        #: The workers a reload still has to replace, while one runs.
        self.reloading: set[int] = set()
        self.reload_active = False
        #: A SIGHUP came during a reload: another one follows it.
        self.reload_again = False
        #: Workers SIGTTOU removed that still have to be drained.
        self.removals = 0
        self.announced = False
        self.exit_status = 0
        self.signals: list[int] = []
        self.pid = os.getpid()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.next_memory_check = 0.0

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> int:
        """Supervises until the workers have drained; returns the exit status."""
        self._install_signals()
        try:
            with pidfile(self.adj.pidfile):
                return self._supervise()
        finally:
            self._restore_signals()

    def _supervise(self) -> int:
        logger.info("Supervisor %d: starting %d worker(s)", self.pid, self.target)
        if self.app is not None and threading.active_count() > 1:
            logger.warning(
                "%d thread(s) besides the main one are running in the supervisor (started "
                "when the application was imported?); they will not exist in the workers, "
                "and a lock one of them holds at a fork stays held there: start them "
                "per worker, or do not preload",
                threading.active_count() - 1,
            )
        for slot in range(self.target):
            self._spawn(slot, None)
        while self.workers or self.phase is Phase.RUNNING:
            self._wait()
            self._handle_signals()
            self._reap()
            if self.phase is Phase.RUNNING:
                self._start_due_spawns()
                self._apply_removals()
                self._note_survivors()
                self._check_memory()
            self._kill_overdue()
        logger.info("Server stopped")
        return self.exit_status

    def _wait(self) -> None:
        timeout = 0.2 if self.spawns or self.phase is not Phase.RUNNING else MEMORY_EVERY
        pipes = [w.pipe for w in self.workers.values()]
        try:
            readable, _, _ = select.select([self.wake_r, *pipes], [], [], timeout)
        except InterruptedError:  # pragma: no cover - PEP 475 retries
            return
        for fd in readable:
            if fd == self.wake_r:
                _drain_pipe(fd)
            else:
                self._read_worker(fd)

    # --- signals ----------------------------------------------------------------------------

    def _install_signals(self) -> None:
        self.previous_wakeup = signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        self.previous_handlers = {sig: signal.signal(sig, self._on_signal) for sig in SUPERVISOR_SIGNALS}

    def _restore_signals(self) -> None:
        """Leaves the process as it was (serve() returns to its caller)."""
        for sig, handler in self.previous_handlers.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(self.previous_wakeup)
        os.close(self.wake_r)
        os.close(self.wake_w)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals.append(signum)

    def _handle_signals(self) -> None:
        while self.signals:
            sig = self.signals.pop(0)
            if sig in (signal.SIGTERM, signal.SIGINT):
                self._begin_drain(sig)
            elif self.phase is not Phase.RUNNING:
                continue
            elif sig == signal.SIGHUP:
                self._reload("SIGHUP")
            elif sig == signal.SIGTTIN:
                self._add_worker()
            elif sig == signal.SIGTTOU:
                self._remove_worker()
            elif sig == signal.SIGUSR1:
                logger.info("SIGUSR1: the workers reopen their access log")
                for worker in self.workers.values():
                    _kill(worker.pid, signal.SIGUSR1)

    def _begin_drain(self, sig: int) -> None:
        if self.phase is Phase.RUNNING:
            self.phase = Phase.DRAINING
            logger.info("Shutting down: no longer accepting connections")
            self.notifier.send("STOPPING=1", "STATUS=Stopping")
            self.spawns.clear()
            for worker in list(self.workers.values()):
                self._drain(worker, "shutdown")
            self.sockets.stop_listening()
        elif self.phase is Phase.DRAINING and sig == signal.SIGINT:
            self.phase = Phase.STOPPING
            logger.info("Second interrupt: stopping the workers at once")
            for worker in self.workers.values():
                _kill(worker.pid, signal.SIGINT)
                worker.kill_at = min(worker.kill_at, time.monotonic() + KILL_GRACE)

    # --- workers ----------------------------------------------------------------------------

    def _spawn(self, slot: int, replaces: int | None, retry: bool = True) -> bool:
        """Forks a worker for `slot`; false (logged, and with `retry` tried again
        later) if it could not."""
        metrics_slot = self._metrics_slot()
        try:
            listeners = self.sockets.for_slot(slot)
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
        except OSError as exc:
            logger.error("Could not start a worker: %s", exc)
            if retry:
                self.spawns.append(Spawn(time.monotonic() + BACKOFF_MAX, slot, replaces))
            return False
        _flush_output()
        # The supervisor's signals wait until the child has its own handlers: one sent
        # to it right after the fork is not taken by the supervisor's handler there.
        signal.pthread_sigmask(signal.SIG_BLOCK, SUPERVISOR_SIGNALS)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SUPERVISOR_SIGNALS)
            os.close(read_end)
            os.close(write_end)
            logger.error("Could not start a worker: %s", exc)
            if retry:
                self.spawns.append(Spawn(time.monotonic() + BACKOFF_MAX, slot, replaces))
            return False
        if pid == 0:
            self._become_worker(read_end, write_end, listeners, metrics_slot)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SUPERVISOR_SIGNALS)
        os.close(write_end)
        os.set_blocking(read_end, False)
        self.workers[pid] = Worker(pid, read_end, slot, replaces, metrics_slot=metrics_slot)
        if self.metrics is not None:
            _tapster.metrics_worker_started()
        logger.info("Worker %d started", pid)
        return True

    def _metrics_slot(self) -> int | None:
        """A free slot of the metrics region for a new worker (None: no metrics, or
        all slots in use, which is logged)."""
        if self.metrics is None:
            return None
        taken = [w.metrics_slot for w in self.workers.values() if w.metrics_slot is not None]
        slot = _tapster.metrics_free_slot(taken)
        if slot is None:
            logger.warning("Every metrics slot is in use: the new worker serves without metrics")
        return slot

    def _become_worker(
        self, read_end: int, pipe: int, listeners: list[_Listener], metrics_slot: int | None
    ) -> NoReturn:
        """The child's side of `_spawn` (signals blocked on entry). Never returns:
        nothing of the supervisor's may run in a worker, whatever happens."""
        status = BOOT_FAILED
        try:
            draining = Draining()
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGTERM, draining)
            signal.signal(signal.SIGINT, draining)
            # SIGUSR1 (reopen the access log) is the server's once it runs.
            for sig in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1):
                signal.signal(sig, signal.SIG_IGN)
            if metrics_slot is not None:
                _tapster.metrics_attach(metrics_slot)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SUPERVISOR_SIGNALS)
            for fd in [read_end, self.wake_r, self.wake_w] + [w.pipe for w in self.workers.values()]:
                os.close(fd)
            self.sockets.close_others(listeners)
            status = run_worker(self, pipe, listeners, draining)
        except SystemExit:
            # Told to stop (a drain) the moment its signals were unblocked.
            status = 0
        finally:
            signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
            _flush_output()
            os._exit(status)

    def _start_due_spawns(self) -> None:
        """Starts the spawns whose time has come."""
        now = time.monotonic()
        for spawn in [s for s in self.spawns if s.at <= now]:
            self.spawns.remove(spawn)
            replaces = spawn.replaces if spawn.replaces in self.workers else None
            self._spawn(spawn.slot, replaces)

    def _read_worker(self, fd: int) -> None:
        worker = next((w for w in self.workers.values() if w.pipe == fd), None)
        if worker is None:
            return
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        if not data:
            return
        worker.pending += data
        *lines, worker.pending = worker.pending.split(b"\n")
        for line in lines:
            self._message(worker, line.decode("utf-8", "replace"))

    def _message(self, worker: Worker, line: str) -> None:
        word, _, rest = line.partition(" ")
        if word == "ready":
            self._ready(worker)
        elif word == "retire" and self.phase is Phase.RUNNING:
            self._replace(worker, f"max_requests: {rest} requests served", "max_requests")
        elif word == "timeout" and self.phase is Phase.RUNNING:
            self._replace(worker, "request_timeout: a request is stuck", "request_timeout")
        elif word == "changed" and self.phase is Phase.RUNNING and not self.reload_active:
            self._reload(f"{rest} changed")

    def _ready(self, worker: Worker) -> None:
        if worker.state is not State.STARTING:
            return
        worker.state = State.SERVING
        worker.ready_at = time.monotonic()
        logger.info("Worker %d ready", worker.pid)
        if self.phase is not Phase.RUNNING:
            self._drain(worker, "shutdown")
            return
        old = self.workers.get(worker.replaces) if worker.replaces else None
        if old is not None and old.state is State.RETIRING:
            self._drain(old, old.exit_reason)
        self._reload_done()
        # Ready for systemd once every worker serves, or once one does while another
        # keeps failing to start (the service does serve).
        if not self.announced and (self._serving() >= self.target or self.spawns):
            self.announced = True
            self.notifier.send("READY=1", f"STATUS={self._status()}", f"MAINPID={self.pid}")

    def _replace(self, worker: Worker, reason: str, kind: str, overlap: bool = False) -> None:
        """Starts `worker`'s replacement (`kind`: the exit reason the metrics count).
        `worker` drains at once when other workers serve meanwhile (so a limit is kept
        closely), else, or with `overlap`, once its replacement accepts (so there is
        never a moment with no worker accepting)."""
        if worker.state is not State.SERVING:
            return
        logger.info("Replacing worker %d (%s)", worker.pid, reason)
        worker.exit_reason = kind
        others = self._serving() - 1
        if others > 0 and not overlap and not self.adj.reuse_port:
            self._drain(worker, kind)
            self._spawn(worker.slot, None)
            return
        worker.state = State.RETIRING
        self._spawn(worker.slot, worker.pid)

    def _drain(self, worker: Worker, reason: str) -> None:
        if worker.state is State.DRAINING:
            return
        worker.exit_reason = reason
        worker.state = State.DRAINING
        worker.kill_at = time.monotonic() + self.adj.shutdown_timeout + KILL_GRACE
        _kill(worker.pid, signal.SIGTERM)

    def _serving(self) -> int:
        return sum(w.state in (State.SERVING, State.RETIRING) for w in self.workers.values())

    def _status(self) -> str:
        return f"{self._serving()} worker(s) serving"

    # --- deaths -------------------------------------------------------------------------------

    def _reap(self) -> None:
        """Collects the workers that exited (only those: a preloaded application's own
        subprocesses are its to wait for)."""
        for pid in list(self.workers):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # pragma: no cover - reaped elsewhere
                done, status = pid, 0
            if done:
                worker = self.workers.pop(pid)
                os.close(worker.pipe)
                self._count_exit(worker, status)
                self._died(worker, status)

    def _count_exit(self, worker: Worker, status: int) -> None:
        """The metrics of a reaped worker: its slot freed, its end counted."""
        if worker.metrics_slot is None:
            return
        _tapster.metrics_release(worker.metrics_slot)
        expected = worker.state in (State.DRAINING, State.RETIRING) and status == 0
        if worker.state is State.STARTING:
            reason = "boot_failure"
        elif expected or worker.state is State.DRAINING:
            reason = worker.exit_reason
        else:
            reason = "crashed"
        _tapster.metrics_worker_exited(reason)

    def _died(self, worker: Worker, status: int) -> None:
        how = _describe(status)
        expected = worker.state in (State.DRAINING, State.RETIRING) and status == 0
        logger.log(logging.INFO if expected else logging.WARNING, "Worker %d %s", worker.pid, how)
        if worker.slot >= self.target and worker.state is State.DRAINING:
            self.sockets.close_slot(worker.slot)
        if self.phase is not Phase.RUNNING or worker.state is State.DRAINING:
            self._reload_done()
            return
        if worker.state is State.STARTING:
            self._boot_failed(worker, how)
            return
        # It was serving: a replacement may be starting already.
        successors = [w for w in self.workers.values() if w.replaces == worker.pid]
        for successor in successors:
            successor.replaces = None
        if successors:
            self._reload_done()
            return
        logger.info("Replacing worker %d (it exited)", worker.pid)
        if time.monotonic() - worker.ready_at >= SHORT_LIFE:
            self._spawn(worker.slot, None)
            return
        # Dead soon after it started serving: again and again means a worker that
        # crashes on its first requests, so each replacement waits longer.
        self.quick_deaths += 1
        delay = 0.0 if self.quick_deaths == 1 else min(BACKOFF_FIRST * 2 ** (self.quick_deaths - 2), BACKOFF_MAX)
        self.spawns.append(Spawn(time.monotonic() + delay, worker.slot, None))

    def _boot_failed(self, worker: Worker, how: str) -> None:
        self.boot_failures += 1
        if self.boot_failures >= MAX_BOOT_FAILURES:
            if not self._serving():
                logger.error(
                    "Workers failed at start-up %d times in a row (the last %s); giving up",
                    self.boot_failures, how,
                )
                self.phase = Phase.DRAINING
                self.exit_status = 1
                return
            if worker.replaces is not None:
                self._abandon_replacement(worker)
                return
        delay = min(BACKOFF_FIRST * 2 ** (self.boot_failures - 1), BACKOFF_MAX)
        logger.warning("Worker %d failed at start-up; starting another in %.1f s", worker.pid, delay)
        self.spawns.append(Spawn(time.monotonic() + delay, worker.slot, worker.replaces))

    def _abandon_replacement(self, worker: Worker) -> None:
        old = self.workers.get(worker.replaces) if worker.replaces else None
        if old is not None and old.state is State.RETIRING:
            old.state = State.SERVING
            logger.error(
                "Could not start a replacement for worker %d (failed at start-up %d times); "
                "it keeps serving", old.pid, self.boot_failures,
            )
            self._reload_done()
        self.boot_failures = 0

    # --- reload, more and fewer workers, memory -------------------------------------------------

    def _reload(self, why: str) -> None:
        if self.reload_active:
            self.reload_again = True
            return
        current = [w for w in self.workers.values() if w.state is State.SERVING]
        logger.info("Reloading (%s): starting %d new worker(s)", why, len(current))
        if self.announced:
            self.notifier.send(
                "RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}", "STATUS=Reloading"
            )
        self.reloading = {w.pid for w in current}
        self.reload_active = True
        for worker in current:
            self._replace(worker, f"reload: {why}", "reload", overlap=True)
        self._reload_done()

    def _reload_done(self) -> None:
        """Ends the reload once every old worker has been replaced (it drains) or kept
        (its replacement could not start)."""
        self.reloading = {
            pid for pid in self.reloading
            if pid in self.workers and self.workers[pid].state is State.RETIRING
        }
        if self.reload_active and not self.reloading:
            self.reload_active = False
            logger.info("Reload complete: %s", self._status())
            if self.announced:
                self.notifier.send("READY=1", f"STATUS={self._status()}")
            if self.reload_again and self.phase is Phase.RUNNING:
                self.reload_again = False
                self._reload("SIGHUP during the previous reload")

    def _add_worker(self) -> None:
        if self.removals:
            self.removals -= 1
            self.target += 1
            logger.info("Adding a worker: %d now", self.target)
            return
        if self._spawn(self._free_slot(), None, retry=False):
            self.target += 1
            logger.info("Adding a worker: %d now", self.target)

    def _remove_worker(self) -> None:
        if self.target <= 1:
            logger.info("Not removing a worker: %d is the least", self.target)
            return
        self.target -= 1
        self.removals += 1
        logger.info("Removing a worker: %d now", self.target)
        self._apply_removals()

    def _apply_removals(self) -> None:
        """Drains the workers SIGTTOU removed, once no reload or replacement is under
        way (a worker starting in place of another is never the one removed)."""
        busy = any(w.state in (State.STARTING, State.RETIRING) for w in self.workers.values())
        while self.removals and not busy:
            live = [w for w in self.workers.values() if w.state is State.SERVING]
            if len(live) <= 1:
                self.removals = 0
                return
            victim = max(live, key=lambda w: (w.slot, w.pid))
            self.removals -= 1
            self._drain(victim, "scale_down")
            if victim.slot >= self.target:
                self.sockets.close_slot(victim.slot)

    def _free_slot(self) -> int:
        used = {w.slot for w in self.workers.values() if w.state is not State.DRAINING}
        return next(slot for slot in range(len(used) + 1) if slot not in used)

    def _note_survivors(self) -> None:
        """A worker serving for SHORT_LIFE ends a run of start-up failures."""
        now = time.monotonic()
        if (self.boot_failures or self.quick_deaths) and any(
            w.state is State.SERVING and now - w.ready_at >= SHORT_LIFE for w in self.workers.values()
        ):
            self.boot_failures = 0
            self.quick_deaths = 0

    def _check_memory(self) -> None:
        limit = self.adj.max_worker_memory
        now = time.monotonic()
        if not limit or now < self.next_memory_check:
            return
        self.next_memory_check = now + MEMORY_EVERY
        for worker in list(self.workers.values()):
            rss = rss_mib(worker.pid)
            if worker.state is State.SERVING and rss > limit:
                self._replace(worker, f"max_worker_memory: {rss:.0f} MiB over {limit} MiB", "max_worker_memory")

    def _kill_overdue(self) -> None:
        now = time.monotonic()
        for worker in self.workers.values():
            if worker.state is State.DRAINING and worker.kill_at and now >= worker.kill_at:
                logger.warning("Worker %d did not stop in time; killing it", worker.pid)
                _kill(worker.pid, signal.SIGKILL)
                worker.kill_at = 0.0


# --- the worker's side ------------------------------------------------------------------------


class Draining:
    """A worker's SIGTERM and SIGINT: the first starts the drain; later SIGTERMs are
    ignored, and a later SIGINT stops it at once. Once the server runs, the first asks
    it to close instead of raising: an exception raised into whatever Python code runs
    at that moment (a log line being written, say) would lose it."""

    def __init__(self) -> None:
        self.started = False
        #: The server's request_stop(), once it exists.
        self.close: Callable[[], None] | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if not self.started:
            self.started = True
            if self.close is None:
                raise SystemExit(0)
            self.close()
            return
        if signum == signal.SIGINT:
            raise KeyboardInterrupt


class WorkerTick:
    """Called by the engine once the worker accepts, then about every 100 ms: tells the
    supervisor it is ready, that it reached `max_requests`, or that a file changed;
    stops the worker when the supervisor has gone."""

    def __init__(self, pipe: int, parent: int, max_requests: int, watcher: Any) -> None:
        self.pipe = pipe
        self.parent = parent
        self.limit = max_requests
        self.watcher = watcher
        self.said_ready = False
        self.said_retire = False

    def __call__(self) -> None:
        if not self.said_ready:
            self.said_ready = self._tell("ready")
        if os.getppid() != self.parent:
            logger.warning("Worker %d: the supervisor has gone; stopping", os.getpid())
            raise SystemExit(0)
        if self.limit and not self.said_retire:
            served = _tapster.stats()["requests"]
            if served >= self.limit:
                self.said_retire = self._tell(f"retire {served}")
        if self.watcher is not None:
            for path in self.watcher.changed():
                self._tell(f"changed {path}")
                break

    def _tell(self, line: str) -> bool:
        try:
            os.write(self.pipe, line.encode("utf-8", "replace") + b"\n")
        except OSError:
            return False
        return True


def run_worker(sup: Supervisor, pipe: int, listeners: list[_Listener], draining: Draining) -> int:
    """A worker's life after the fork: the application (imported now unless
    preloaded), the engine on the inherited listeners, until drained. Returns the exit
    status."""
    try:
        app = sup.app if sup.app is not None else sup.load()
        server = server_for(app, sup.adj, sup.config, listeners, sup.metrics)
        watcher = watch_imported_files() if sup.adj.reload else None
    except SystemExit as exc:
        if draining.started:  # told to stop while starting
            return 0
        return exc.code if isinstance(exc.code, int) and exc.code else BOOT_FAILED
    except BaseException as exc:  # noqa: BLE001 - whatever the import raised
        logger.error("Worker %d could not start: %s", os.getpid(), _one_line(exc), exc_info=exc)
        return BOOT_FAILED
    # The engine holds its own duplicates: the worker's copies go now, so that a
    # socket it stops accepting on (a removed reuse_port slot) closes with the engine's.
    for lst in listeners:
        lst.socket.close()
    limit = sup.adj.max_requests
    if limit and sup.adj.max_requests_jitter:
        import random  # reseeded by CPython in each forked worker

        limit += random.randint(0, sup.adj.max_requests_jitter)
    tick = WorkerTick(pipe, sup.pid, limit, watcher)
    draining.close = server.request_stop
    try:
        server.run(tick=tick, max_requests=limit, report_fd=pipe)
    except (SystemExit, KeyboardInterrupt):
        pass
    except BaseException as exc:  # noqa: BLE001 - the engine could not start or run
        logger.error("Worker %d failed: %s", os.getpid(), _one_line(exc), exc_info=exc)
        return 1 if tick.said_ready else BOOT_FAILED
    return 0


def watch_imported_files() -> Any:
    """An inotify watch on the Python files the worker has imported, outside the
    standard library and site-packages."""
    import sysconfig

    skipped = tuple(
        os.path.realpath(p) + os.sep
        for key in ("stdlib", "platstdlib", "purelib", "platlib")
        if (p := sysconfig.get_paths().get(key))
    )
    files = set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and path.endswith(".py"):
            real = os.path.realpath(path)
            if not real.startswith(skipped) and os.path.exists(real):
                files.add(real)
    return _tapster.FileWatcher(sorted(files))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


# --- small things -----------------------------------------------------------------------------


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"was killed by {name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def rss_mib(pid: int) -> float:
    """A process's resident memory in MiB (0 if it has gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_SIZE / 2**20
    except (OSError, IndexError, ValueError):
        return 0.0


def _drain_pipe(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _flush_output() -> None:
    """Flushes what a fork would otherwise copy into the child's buffers too."""
    for handler in logging.getLogger().handlers + logger.handlers:
        handler.flush()
    flush_std_streams()


def serve_workers(
    kw: dict[str, Any],
    app: WSGIApp | None,
    load: Callable[[], WSGIApp],
    after_bind: Callable[[Adjustments], None] | None = None,
) -> int:
    """Binds the listeners, then supervises the workers until they have drained.
    `app` is the application when it exists already (`serve(app, ...)`, preload),
    else each worker calls `load`. Returns the exit status (1: workers kept failing
    at start-up)."""
    adj = Adjustments(**kw)
    config = engine_config(adj)  # a bad value is refused before anything is bound
    raise_fd_limit(2 * adj.connection_limit + 256, adj.connection_limit)
    listeners = bind_listeners(adj)
    metrics: socket.socket | None = None
    try:
        metrics = bind_metrics(adj)
        supervisor = Supervisor(adj, config, listeners, None, load, metrics)
        for slot in range(adj.workers):
            supervisor.sockets.for_slot(slot)  # with reuse_port: bound before privileges go
        if app is None and adj.preload:
            app = load()  # before the user switch, as in the single process
        supervisor.app = app
        if after_bind is not None:
            after_bind(adj)
        for lst in listeners:
            host = f"[{lst.effective_host}]" if ":" in lst.effective_host else lst.effective_host
            logger.info(lst.scheme_of("Serving on http://%s:%s"), host, lst.effective_port)
        return supervisor.run()
    finally:
        supervisor_sockets_close(listeners, adj)
        if metrics is not None:
            metrics.close()


def supervisor_sockets_close(listeners: list[_Listener], adj: Adjustments) -> None:
    """The supervisor's listeners, closed when it is done (a caller's `sockets` are the
    caller's; inherited ones are let go without closing what systemd owns twice)."""
    for lst in listeners:
        if lst.socket in adj.sockets:
            continue
        try:
            lst.socket.close()
        except OSError:  # pragma: no cover
            pass

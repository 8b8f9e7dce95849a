"""Waitress and Tapster side by side: each in its own process, serving the same app
(tests/apps/parity_app.py) with the same options, told where to listen in the same
form (`ListenForm`); `PairPool` keeps one pair running at a time."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterable

from support import CapturedProcess, ServerProcess, tests_env

APP = "apps.parity_app:app"


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class WaitressProcess(CapturedProcess):
    """`python -m waitress [args] APP` on a port picked here; waits until it accepts."""

    def __init__(self, args: list[str], connect_host: str, port: int, app: str = APP) -> None:
        super().__init__([sys.executable, "-m", "waitress", *args, app], tests_env())
        self.host = connect_host
        self.port = port

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                socket.create_connection(self.address, timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.03)
        self.proc.kill()
        raise RuntimeError(f"waitress did not start: {self.cmd}\n{self.log()}")

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)


@dataclass
class ListenForm:
    """How both servers are told where to listen; {port} is filled in for Waitress
    (a free port picked here) and with 0 for Tapster (which reports its port)."""

    args: tuple[str, ...] = ("--listen=127.0.0.1:{port}",)
    connect_host: str = "127.0.0.1"
    port_host: str = "127.0.0.1"
    #: The host in Tapster's "Serving on http://HOST:PORT" line to take the port from.
    serving_host: str = "127.0.0.1"


DEFAULT_LISTEN = ListenForm()


class ServerPair:
    """Waitress and Tapster with the same app and options, started side by side."""

    def __init__(self, name: str, options: Iterable[str], listen: ListenForm = DEFAULT_LISTEN, app: str = APP) -> None:
        self.name = name
        self.options = list(options)
        self.listen = listen
        port = free_port(listen.port_host)
        w_args = [a.format(port=port) for a in listen.args] + self.options
        t_args = [a.format(port=0) for a in listen.args] + self.options
        self.waitress = WaitressProcess(w_args, listen.connect_host, port, app)
        try:
            self.tapster = ServerProcess(app, *t_args, listen=None)
            self.waitress.wait_ready()
        except BaseException:
            self.waitress.stop()
            raise
        line = self.wait_for_log("tapster", rf"Serving on http://{re.escape(listen.serving_host)}:\d+$")
        self.tapster_address = (listen.connect_host, int(line.rsplit(":", 1)[1]))

    def option(self, name: str) -> str | None:
        """The value given for --name=VALUE (or "" for a bare --name), else None."""
        flag = "--" + name.replace("_", "-")
        for arg in self.options:
            if arg == flag:
                return ""
            if arg.startswith(flag + "="):
                return arg[len(flag) + 1 :]
        return None

    def address(self, side: str) -> tuple[str, int]:
        return self.waitress.address if side == "waitress" else self.tapster_address

    def process(self, side: str) -> CapturedProcess:
        return self.waitress if side == "waitress" else self.tapster

    def log(self, side: str) -> str:
        return self.process(side).log()

    def wait_for_log(self, side: str, pattern: str, timeout: float = 5.0) -> str:
        try:
            return self.process(side).wait_for_log(pattern, timeout)
        except AssertionError as exc:
            raise AssertionError(f"{side}: {exc}") from None

    def stop(self) -> None:
        try:
            self.tapster.stop()
        finally:
            self.waitress.stop()


class PairPool:
    """Keeps one pair running at a time; tests are grouped by pair, so each pair is
    normally started once."""

    def __init__(self, specs: dict[str, dict[str, Any]]) -> None:
        self.specs = specs
        self.current: ServerPair | None = None

    def get(self, name: str) -> ServerPair:
        if self.current is not None and self.current.name == name:
            return self.current
        self.close()
        spec = self.specs[name]
        self.current = ServerPair(name, spec.get("options", []), spec.get("listen", DEFAULT_LISTEN))
        return self.current

    def close(self) -> None:
        if self.current is not None:
            self.current.stop()
            self.current = None

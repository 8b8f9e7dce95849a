"""What the serving process tells its environment: systemd's notification socket
(`NOTIFY_SOCKET`: READY, RELOADING, STOPPING, STATUS) and the pid file."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from typing import Iterator

logger = logging.getLogger("tapster")


class Notifier:
    """Sends sd_notify(3) datagrams when NOTIFY_SOCKET names a socket; else nothing."""

    def __init__(self, address: str | None) -> None:
        self.address: str | bytes | None = None
        if address:
            # An abstract socket is written with a leading @.
            self.address = b"\0" + address[1:].encode() if address.startswith("@") else address
        self.sock: socket.socket | None = None

    @classmethod
    def from_environment(cls) -> Notifier:
        """From NOTIFY_SOCKET, which is then removed, so that the application's own
        children (and the workers' applications) do not speak for this service."""
        return cls(os.environ.pop("NOTIFY_SOCKET", None))

    def send(self, *fields: str) -> None:
        if self.address is None:
            return
        try:
            if self.sock is None:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self.sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            logger.warning("could not notify systemd at %r: %s", self.address, exc)


@contextlib.contextmanager
def pidfile(path: str | None) -> Iterator[None]:
    """Writes this process's pid to `path` (atomically) for the duration; removes the
    file after, unless another process has written its own since."""
    if not path:
        yield
        return
    pid = str(os.getpid())
    tmp = f"{path}.{pid}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(pid + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise ValueError(f"pidfile {path}: {exc.strerror or exc}") from None
    try:
        yield
    finally:
        try:
            with open(path) as f:
                mine = f.read().strip() == pid
            if mine:
                os.remove(path)
        except OSError:
            pass


def flush_std_streams() -> None:
    """Flushes stdout and stderr (before a fork or an `os._exit`), ignoring a closed or
    broken stream."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass

"""What a crowd of clients costs the server in memory and temporary files.

Starts Tapster (the behaviours test app) with default options, opens N connections of
one kind, waits for them to settle, and reports the server's RSS growth and the bytes
of its (unlinked) temporary files, per connection and in total:

- idle: connected keep-alive clients that sent nothing;
- stalled upload: `Content-Length: 524287` and all but one byte of the body sent;
- stalled reader: a 100 MiB stream requested and never read.

Run: `.venv/bin/python bench/memory.py [N]` (default 1000). Results go to stdout as a
Markdown table (quoted in the README)."""

from __future__ import annotations

import os
import socket
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from support import ServerProcess, deleted_file_bytes, rss_kib  # noqa: E402


def settle(pid: int, seconds: float = 3.0) -> int:
    """RSS once it stops moving (or after `seconds`)."""
    last, deadline = rss_kib(pid), time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = rss_kib(pid)
        if abs(now - last) < 64:
            return now
        last = now
    return last


def open_clients(address: tuple[str, int], n: int, first: bytes, rcvbuf: int | None = None) -> list[socket.socket]:
    clients = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.connect(address)
        if first:
            s.sendall(first)
        clients.append(s)
    return clients


def measure(kind: str, n: int) -> tuple[str, int, int]:
    srv = ServerProcess("apps.behaviors:app", "--connection-limit=5000")
    try:
        pid = srv.proc.pid
        time.sleep(0.5)
        before = settle(pid)
        if kind == "idle":
            clients = open_clients(srv.address, n, b"")
        elif kind == "stalled upload":
            head = b"POST /echo HTTP/1.1\r\nHost: m\r\nContent-Length: 524287\r\n\r\n"
            clients = open_clients(srv.address, n, head + b"u" * 524286)
        else:
            clients = open_clients(srv.address, n, b"GET /stream?n=100&size=1048576 HTTP/1.1\r\nHost: m\r\n\r\n", 16384)
        after = settle(pid, 6.0)
        files = deleted_file_bytes(pid)
        for c in clients:
            c.close()
        return kind, (after - before) * 1024, files
    finally:
        srv.stop()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    print(f"| {n} connections, default options | RSS growth | per connection | temporary files |")
    print("|---|---|---|---|")
    for kind in ("idle", "stalled upload", "stalled reader"):
        name, grown, files = measure(kind, n)
        print(f"| {name} | {grown / 2**20:.1f} MiB | {grown / n / 1024:.1f} KiB | {files / 2**20:.0f} MiB |")


if __name__ == "__main__":
    main()

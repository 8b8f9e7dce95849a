"""A bounded soak: a few minutes of mixed traffic against one server, with its memory
(RSS) and open descriptors sampled. After a warm-up both must stay flat, and the
descriptors must come back to where they started once the clients stop.

The mix: keep-alive clients, one-request connections, uploads large enough to spill to
a temporary file, chunked streams, wsgi.file_wrapper downloads (sendfile), and clients
that disconnect in the middle of a stream or a file, some with a reset.

`SOAK_SECONDS` sets the length (default 150); `make soak` runs it."""

from __future__ import annotations

import os
import random
import socket
import statistics
import struct
import sys
import threading
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from support import ServerProcess, fd_count  # noqa: E402

DURATION = float(os.environ.get("SOAK_SECONDS", "150"))
#: Anonymous memory keeps growing for the first 30-60 s (allocator arenas of the
#: threads, buffers reaching their working sizes); only what follows is judged.
WARM_UP = min(45.0, DURATION / 3)
SAMPLE_EVERY = 2.0
CLIENTS = 6
#: After the warm-up, anonymous memory may not rise more than this above its level
#: (the median of the first third of the measured samples): allocator noise, caches...
RSS_SLACK_KIB = 6 * 1024
#: ...and the level of the last third may not exceed that of the first by more than
#: this. Samples swing by +-2 MiB with the uploads and files in flight, so levels are
#: medians of a third each, not a least-squares line through every swing (which a
#: late plateau alone could push past 3 MiB).
TREND_SLACK_KIB = 3 * 1024
#: glibc raises its mmap threshold each time a large (mmapped) block is freed, so the
#: next uploads' and streams' buffers come from the heap, which keeps what it grew to:
#: anonymous memory then steps up by megabytes whenever a few large buffers happen to
#: be live at once (CI saw 15.6 -> 22 MiB in 150 s; the same traffic with the threshold
#: fixed stays within 0.1 MiB outside the spikes, and the steps are gone). A fixed
#: threshold makes the measurement sharp enough to see a leak; the README's operations
#: section tells operators the same.
STEADY_MALLOC = "glibc.malloc.mmap_threshold=131072"
UPLOAD = b"u" * (600 << 10)  # over inbuf_overflow (512 KiB): spills to a file


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def ok(self, kind: str) -> None:
        with self.lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1

    def fail(self, kind: str, err: object) -> None:
        with self.lock:
            self.failures.append(f"{kind}: {err!r}")


def read_response(sock: socket.socket, buf: bytearray) -> tuple[int, int]:
    """Reads one response (Content-Length, chunked, or to EOF); returns (status, body
    bytes) and leaves what follows in `buf`."""

    def fill() -> None:
        data = sock.recv(262144)
        if not data:
            raise ConnectionError("closed mid-response")
        buf.extend(data)

    while b"\r\n\r\n" not in buf:
        fill()
    end = buf.index(b"\r\n\r\n")
    head = bytes(buf[:end]).decode("latin-1").split("\r\n")
    del buf[: end + 4]
    status = int(head[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
    if "content-length" in headers:
        want = int(headers["content-length"])
        while len(buf) < want:
            fill()
        del buf[:want]
        return status, want
    if headers.get("transfer-encoding", "").lower() == "chunked":
        total = 0
        while True:
            while b"\r\n" not in buf:
                fill()
            line_end = buf.index(b"\r\n")
            size = int(bytes(buf[:line_end]).split(b";")[0], 16)
            del buf[: line_end + 2]
            while len(buf) < size + 2:
                fill()
            del buf[: size + 2]
            if size == 0:
                return status, total
            total += size
    total = len(buf)
    buf.clear()
    while True:
        data = sock.recv(262144)
        if not data:
            return status, total
        total += len(data)


def request(path: str, method: str = "GET", body: bytes = b"", close: bool = False) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: soak\r\n"
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    if close:
        head += "Connection: close\r\n"
    return head.encode() + b"\r\n" + body


def one(address: tuple[str, int], raw: bytes, expect_bytes: int | None = None) -> None:
    with socket.create_connection(address, timeout=10) as s:
        s.sendall(raw)
        status, size = read_response(s, bytearray())
        assert status == 200, status
        if expect_bytes is not None:
            assert size == expect_bytes, (size, expect_bytes)


def keep_alive(address: tuple[str, int]) -> None:
    with socket.create_connection(address, timeout=10) as s:
        buf = bytearray()
        for _ in range(100):
            s.sendall(request("/list"))
            status, _ = read_response(s, buf)
            assert status == 200, status


def walk_away(address: tuple[str, int], path: str, reset: bool) -> None:
    s = socket.create_connection(address, timeout=10)
    try:
        s.sendall(request(path))
        got = 0
        while got < 100_000:
            data = s.recv(65536)
            if not data:
                break
            got += len(data)
        if reset:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        s.close()


def client(address: tuple[str, int], seed: int, stop: threading.Event, tally: Tally) -> None:
    rnd = random.Random(seed)
    actions = {
        "keep-alive": lambda: keep_alive(address),
        "one-shot": lambda: one(address, request("/list", close=True)),
        "upload": lambda: one(address, request("/upload", "POST", UPLOAD), len(str(len(UPLOAD)))),
        "stream": lambda: one(address, request("/stream?n=64&size=16384"), 64 * 16384),
        "file": lambda: one(address, request("/file"), 2 << 20),
        "walk-away-stream": lambda: walk_away(address, "/stream?n=100000&size=65536", rnd.random() < 0.5),
        "walk-away-file": lambda: walk_away(address, "/file", rnd.random() < 0.5),
    }
    weights = [3, 6, 1, 2, 2, 1, 1]
    names = list(actions)
    while not stop.is_set():
        kind = rnd.choices(names, weights)[0]
        try:
            actions[kind]()
            tally.ok(kind)
        except (OSError, AssertionError, ValueError) as err:
            tally.fail(kind, err)


def anon_kib(pid: int) -> int:
    """The process's resident anonymous memory (heap, stacks, buffers) in KiB: what a
    leak grows. (VmRSS adds file-backed pages, which grow as code paths are first run.)"""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError("no RssAnon")


def thirds(samples: list[int]) -> tuple[float, float]:
    """The medians of the first and the last third of `samples`."""
    third = max(1, len(samples) // 3)
    return statistics.median(samples[:third]), statistics.median(samples[-third:])


def test_mixed_traffic_keeps_memory_and_descriptors_flat() -> None:
    path = os.pathsep.join([HERE, os.path.join(os.path.dirname(HERE), "tests"), os.environ.get("PYTHONPATH", "")])
    srv = ServerProcess("soak_app:app", "--threads=4", env={"PYTHONPATH": path, "GLIBC_TUNABLES": STEADY_MALLOC})
    pid = srv.proc.pid
    try:
        time.sleep(0.5)
        fds_before = fd_count(pid)
        stop = threading.Event()
        tally = Tally()
        threads = [
            threading.Thread(target=client, args=(srv.address, seed, stop, tally), daemon=True)
            for seed in range(CLIENTS)
        ]
        started = time.monotonic()
        for t in threads:
            t.start()
        samples: list[tuple[float, int, int]] = []
        while (elapsed := time.monotonic() - started) < DURATION:
            time.sleep(SAMPLE_EVERY)
            samples.append((elapsed, anon_kib(pid), fd_count(pid)))
        stop.set()
        for t in threads:
            t.join(timeout=30)
        deadline = time.monotonic() + 10
        while fd_count(pid) != fds_before and time.monotonic() < deadline:
            time.sleep(0.2)
        fds_after = fd_count(pid)

        measured = [r for t, r, _ in samples if t >= WARM_UP]
        level, final_level = thirds(measured)
        report = (
            f"requests {tally.counts}, failures {len(tally.failures)} {tally.failures[:5]}; "
            f"anonymous RSS KiB: median of the first third after warm-up {level:.0f}, of the "
            f"last third {final_level:.0f}, max {max(measured)}; fds before {fds_before}, "
            f"during max {max(f for _, _, f in samples)}, after {fds_after}"
        )
        print(report)
        print("timeline (s, anonymous RSS KiB, fds):", [(round(t), r, f) for t, r, f in samples[::5]])
        assert not srv.proc.poll(), f"server died: {srv.log()[-2000:]}"
        assert sum(tally.counts.values()) > 200 * DURATION / 150, report
        # A few failures are real races (a reset racing the server's reply); many are not.
        assert len(tally.failures) <= sum(tally.counts.values()) // 100, report
        assert "bug in Tapster" not in srv.log(), srv.log()[-2000:]
        assert max(measured) - level < RSS_SLACK_KIB, report
        assert final_level - level < TREND_SLACK_KIB, f"RSS grew; {report}"
        assert fds_after == fds_before, report
    finally:
        assert srv.stop() == 0, srv.log()[-2000:]

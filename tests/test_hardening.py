"""Slow clients, client faults and stuck applications: the server answers what it can,
cuts what it must, and keeps serving everyone else."""

from __future__ import annotations

import re
import socket
import struct
import time

from support import ServerProcess, exchange, rss_kib


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode()


def served_quickly(srv: ServerProcess, within: float = 1.0) -> bool:
    started = time.monotonic()
    resp, _ = exchange(srv, get("/list"))
    return resp.status == 200 and time.monotonic() - started < within


def test_head_deadline_gives_408(make_server) -> None:
    srv = make_server("--header-timeout=1")
    with srv.connect(timeout=5) as conn:
        started = time.monotonic()
        conn.send(b"GET / HTTP/1.1\r\nHost: t\r\n")
        for _ in range(8):  # trickle a header byte every 0.25 s: never idle, never done
            time.sleep(0.25)
            try:
                conn.send(b"X")
            except OSError:
                break
        resp = conn.read_response()
        assert resp.status == 408
        assert resp.header("Connection") == "close"
        assert 0.8 < time.monotonic() - started < 3
        assert conn.is_closed()
    assert srv.calls() == 0


def test_slow_body_gives_408(make_server) -> None:
    srv = make_server("--header-timeout=1", "--min-body-rate=1000")
    with srv.connect(timeout=5) as conn:
        conn.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n")
        started = time.monotonic()
        status = None
        while time.monotonic() - started < 4:
            try:
                conn.send(b"x" * 10)
            except OSError:
                pass
            conn.sock.settimeout(0.1)
            try:
                data = conn.sock.recv(100)
            except socket.timeout:
                continue
            status = data.split(b" ")[1]
            break
        assert status == b"408"
        assert time.monotonic() - started < 3
    assert srv.calls() == 0


def test_slowloris_clients_do_not_stop_others(make_server) -> None:
    srv = make_server("--threads=1")
    trickling = []
    for _ in range(50):
        s = socket.create_connection(srv.address)
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        trickling.append(s)
    try:
        for _ in range(5):
            assert served_quickly(srv)
    finally:
        for s in trickling:
            s.close()


def test_slow_reader_of_a_big_stream_does_not_hold_the_worker(make_server) -> None:
    # 100 MiB streamed in 1 MiB chunks; the client reads a little, slowly. The only
    # worker must stay free for others: the stream is parked above the watermark.
    srv = make_server("--threads=1", "--outbuf-high-watermark=4194304")
    with srv.connect(timeout=10) as slow:
        slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        slow.send(get("/stream?n=100&size=1048576"))
        received = 0
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            received += len(slow.sock.recv(10240))
            time.sleep(0.05)  # about 200 KiB/s
            assert served_quickly(srv, within=1.5)
        assert 0 < received < 100 * 1048576
    # Dropping the slow client closes the stream's iterator; the server stays healthy.
    srv.wait_for_log(r"EVENT stream closed after \d+ chunks", timeout=10)
    assert served_quickly(srv)


def test_disconnect_during_upload(make_server) -> None:
    srv = make_server()
    with srv.connect() as conn:
        conn.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000)
    time.sleep(0.2)
    assert srv.calls() == 0
    assert served_quickly(srv)


def test_disconnect_while_the_app_runs_is_noticed(make_server) -> None:
    srv = make_server()
    conn = srv.connect()
    conn.send(get("/disconnect?wait=5"))
    time.sleep(0.2)
    conn.close()
    srv.wait_for_log(r"EVENT client_disconnected=True", timeout=5)
    assert served_quickly(srv)


def test_reset_instead_of_close_while_streaming(make_server) -> None:
    srv = make_server()
    conn = srv.connect()
    conn.send(get("/stream?n=100000&size=65536"))
    conn.sock.recv(65536)
    # SO_LINGER 0: close sends RST instead of FIN.
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    srv.wait_for_log(r"EVENT stream closed after \d+ chunks", timeout=10)
    srv.wait_for_log(r"Client disconnected while serving /stream", timeout=5)
    assert served_quickly(srv)


def test_half_close_still_gets_the_response(make_server) -> None:
    srv = make_server()
    with srv.connect() as conn:
        conn.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
        conn.sock.shutdown(socket.SHUT_WR)
        resp = conn.read_response()
        assert resp.status == 200
        assert b'"body": "hello"' in resp.body
        assert conn.is_closed()


def test_half_close_with_a_slow_app_still_gets_the_response(make_server) -> None:
    srv = make_server()
    with srv.connect(timeout=5) as conn:
        conn.send(get("/sleep?s=0.3"))
        conn.sock.shutdown(socket.SHUT_WR)
        resp = conn.read_response()
        assert resp.status == 200 and resp.body == b"slept"


def test_blocked_workers_do_not_stop_the_others_and_the_queue_warning_fires(make_server) -> None:
    srv = make_server("--threads=2")
    blockers = [srv.connect(timeout=10) for _ in range(2)]
    try:
        blockers[0].send(get("/sleep?s=4"))
        time.sleep(0.2)
        # One worker is stuck: the other serves.
        assert served_quickly(srv)
        blockers[1].send(get("/sleep?s=4"))
        time.sleep(0.2)
        # Both stuck: a request waits, and the queue-depth warning fires.
        waiting = srv.connect(timeout=10)
        waiting.send(get("/list"))
        srv.wait_for_log(r"\[WARNING\] tapster\.queue: Task queue depth is \d+", timeout=3)
        resp = waiting.read_response()
        assert resp.status == 200
        waiting.close()
    finally:
        for b in blockers:
            b.close()


def test_huge_chunked_upload_gets_413_with_bounded_memory(make_server) -> None:
    # Default limits: the body spills to a temporary file past 512 KiB and is refused
    # at 1 GiB. The server's memory must not follow the upload.
    srv = make_server()
    before = rss_kib(srv.proc.pid)
    chunk = b"%X\r\n" % (1 << 20) + b"u" * (1 << 20) + b"\r\n"
    status = None
    peak = before
    with srv.connect(timeout=30) as conn:
        conn.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        sent = 0
        try:
            while sent < 2 << 30:
                conn.sock.sendall(chunk)
                sent += len(chunk)
                if sent % (64 << 20) < len(chunk):
                    peak = max(peak, rss_kib(srv.proc.pid))
        except OSError:
            pass
        resp = conn.read_response()
        status = resp.status
    assert status == 413
    assert 1 << 30 <= sent <= (1 << 30) + (64 << 20)
    assert peak - before < 100 * 1024, f"RSS grew by {(peak - before) // 1024} MiB"
    assert srv.calls() == 0
    assert served_quickly(srv)


def test_shutdown_closes_a_stream_parked_for_a_stalled_client(make_server) -> None:
    # The client never reads: the stream parks above the watermark. At shutdown the
    # connection is dropped after shutdown_timeout, and the iterator is still closed.
    srv = make_server("--shutdown-timeout=1", "--outbuf-high-watermark=1048576")
    stalled = srv.connect(timeout=10)
    stalled.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    stalled.send(get("/stream?n=100000&size=65536"))
    time.sleep(0.5)
    assert "stream closed" not in srv.log()
    assert srv.stop() == 0
    assert re.search(r"EVENT stream closed after \d+ chunks", srv.log()), srv.log()
    stalled.close()

"""The client side of the parity harness: raw requests (`request`), client scripts of
steps (Send, ShutWr, ReadInterim, ReadFinal; `script` for the usual
pipelined one), and running a script against one server (`run_script`) or both at
once (`run_both`) into an `Outcome`: what that server did, read with the shared raw
reader of http_reader.py."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable

from http_reader import RawConn, Response

from .servers import ServerPair

#: How long to wait, after the expected responses, for the server to close (or to
#: send anything more). Both servers close at once when they mean to.
CLOSE_WAIT = 0.35
#: How long to wait for a response that should come.
RESPONSE_WAIT = 4.0


@dataclass
class Outcome:
    """Everything one server did with one script."""

    side: str
    responses: list[Response] = field(default_factory=list)
    interim: list[list[int]] = field(default_factory=list)  # 1xx statuses before each final
    closed: bool = False
    leftover: bytes = b""
    problem: str | None = None  # a response that did not come, or came garbled
    client_ports: list[int] = field(default_factory=list)
    server_port: int = 0


class Step:
    """One action of a client script."""


@dataclass
class Send(Step):
    data: bytes


@dataclass
class ShutWr(Step):
    pass


@dataclass
class ReadInterim(Step):
    """Waits (up to `wait` s) for a 1xx response and records it."""

    wait: float = 2.0


@dataclass
class ReadFinal(Step):
    """Reads one final response. `head` is True for a HEAD request: per side, because
    Waitress sends a body after a HEAD response (README) and Tapster does not."""

    head: bool = False
    req: bytes = b""  # the request this answers (for the normalisations)
    #: How long to wait for it. Shorter only where one server is documented never to
    #: answer (README), so that the wait does not cost the full RESPONSE_WAIT.
    wait: float = RESPONSE_WAIT


def run_script(side: str, address: tuple[str, int], steps: list[Step]) -> Outcome:
    out = Outcome(side, server_port=address[1])
    conn = _connect(out, address)
    pending_interim: list[int] = []
    try:
        for step in steps:
            if isinstance(step, Send):
                try:
                    conn.send(step.data)
                except (BrokenPipeError, ConnectionResetError):
                    pass
            elif isinstance(step, ShutWr):
                conn.sock.shutdown(socket.SHUT_WR)
            elif isinstance(step, ReadInterim):
                try:
                    resp = conn.read(False, time.monotonic() + step.wait)
                except TimeoutError:
                    resp = None
                if resp is None:
                    pending_interim.append(0)  # 0: no interim response came
                elif resp.interim:
                    pending_interim.append(resp.status)
                else:
                    out.responses.append(resp)
                    out.interim.append(pending_interim)
                    pending_interim = []
            elif isinstance(step, ReadFinal):
                if out.problem:
                    continue
                head = step.head and side == "tapster"
                body_wait = CLOSE_WAIT if step.head and side == "waitress" else None
                deadline = time.monotonic() + step.wait
                try:
                    while True:
                        resp = conn.read(head, deadline, body_wait)
                        if resp is not None and resp.interim:
                            pending_interim.append(resp.status)
                            continue
                        break
                except TimeoutError:
                    resp = None
                    out.problem = f"no response #{len(out.responses) + 1} within {step.wait}s"
                    continue
                except ValueError as exc:
                    out.problem = f"garbled response #{len(out.responses) + 1}: {exc}"
                    continue
                if resp is None:
                    out.problem = f"connection closed before response #{len(out.responses) + 1}"
                    out.closed = True
                    continue
                out.responses.append(resp)
                out.interim.append(pending_interim)
                pending_interim = []
        if pending_interim:
            out.interim.append(pending_interim)  # 1xx (or 0: none) with no final response
        _finish(out, conn)
    finally:
        conn.close()
    return out


def _connect(out: Outcome, address: tuple[str, int]) -> RawConn:
    conn = RawConn(socket.create_connection(address, timeout=RESPONSE_WAIT))
    out.client_ports.append(conn.sock.getsockname()[1])
    return conn


def _finish(out: Outcome, conn: RawConn) -> None:
    """Records whether the server closed, and anything it sent after the responses."""
    out.leftover += conn.drain(CLOSE_WAIT)
    out.closed = conn.eof


def run_both(pair: ServerPair, steps: list[Step]) -> tuple[Outcome, Outcome]:
    with ThreadPoolExecutor(2) as pool:
        w = pool.submit(run_script, "waitress", pair.address("waitress"), steps)
        t = pool.submit(run_script, "tapster", pair.address("tapster"), steps)
        return w.result(), t.result()


def script(*requests: bytes, head: Iterable[bool] = ()) -> list[Step]:
    """Sends all `requests` at once (pipelined) and reads one response for each."""
    heads = list(head) or [r.startswith(b"HEAD ") for r in requests]
    return [Send(b"".join(requests))] + [ReadFinal(h, r) for h, r in zip(heads, requests)]


def request(
    target: str,
    method: str = "GET",
    version: str = "1.1",
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> bytes:
    """A raw request; Host first unless given, Content-Length when there is a body."""
    fields = list(headers)
    if not any(k.lower() == "host" for k, _ in fields):
        fields.insert(0, ("Host", "parity.test"))
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in fields):
        fields.append(("Content-Length", str(len(body))))
    line = f"{method} {target} HTTP/{version}\r\n" if version else f"{method} {target}\r\n"
    head = line + "".join(f"{k}: {v}\r\n" for k, v in fields) + "\r\n"
    return head.encode("latin-1") + body

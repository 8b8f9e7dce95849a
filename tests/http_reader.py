"""The raw HTTP/1.1 client every end-to-end test reads responses with (support.py
re-exports it): `RawConn`, a client socket and its read buffer, and `Response`, one
response exactly as it was framed on the wire.

It reads a status line and headers; then a body by Content-Length, chunked (each
chunk kept as it was sent) or up to the close; no body for HEAD, 204 and 304; an
interim 1xx response on its own (the final one is the next read); and it tells
whether the server closed the connection.

Two ways to read a response:
- `read_response()` (most tests) waits as long as the socket's timeout for each read
  and raises `ConnectionClosed` when the connection ends before the response is
  complete;
- `read()` (the parity scenarios, where a response cut short is itself part of the
  outcome) waits until a deadline (TimeoutError after it), returns None when the
  connection ends before a full head, and marks a body it ended inside
  `complete=False`, with what came of it as the body.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field


@dataclass
class Response:
    """One response as it came over the wire."""

    version: str
    status: int  # -1 when the status line has no numeric code
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    framing: str = "none"  # how the body was delimited: "content-length", "chunked", "eof" or "none"
    complete: bool = True  # False: the connection ended (or `read` timed out) inside the body
    raw_head: bytes = b""  # the status line and headers as sent, blank line included
    chunks: list[bytes] = field(default_factory=list)  # a chunked body's chunks, as sent

    @property
    def chunked(self) -> bool:
        return self.framing == "chunked"

    @property
    def interim(self) -> bool:
        """A 1xx response other than 101: the final response to the request follows."""
        return 100 <= self.status < 200 and self.status != 101

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


class ConnectionClosed(Exception):
    """The server closed the connection before a complete response."""


class FramingError(ValueError):
    """A response that cannot be read as HTTP/1.1 framing."""


def _parse_head(raw_head: bytes) -> Response:
    """The status line and header fields of `raw_head` (which ends with the blank line);
    values have their surrounding spaces and tabs removed."""
    lines = raw_head[:-4].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1
    reason = parts[2] if len(parts) > 2 else ""
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name, value.strip(" \t")))
    return Response(parts[0], status, reason, headers, raw_head=raw_head)


class RawConn:
    """A client socket with a buffer, reading responses exactly as framed."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.eof = False  # the server closed the connection (or reset it)

    def __enter__(self) -> "RawConn":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float | None = None) -> bool:
        """Adds what arrives to the buffer; False once the connection has ended. Waits
        up to the socket's timeout, or until `deadline` (time.monotonic()); past either,
        TimeoutError."""
        if self.eof:
            return False
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _read_until(self, marker: bytes, deadline: float | None = None) -> bytes:
        while marker not in self.buf:
            if not self._fill(deadline):
                raise ConnectionClosed(f"closed while waiting for {marker!r}; got {self.buf!r}")
        head, self.buf = self.buf.split(marker, 1)
        return head

    def _read_exact(self, n: int, deadline: float | None = None) -> bytes:
        while len(self.buf) < n:
            if not self._fill(deadline):
                raise ConnectionClosed(f"closed with {len(self.buf)} of {n} bytes")
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def _read_head(self, deadline: float | None = None) -> Response:
        return _parse_head(self._read_until(b"\r\n\r\n", deadline) + b"\r\n\r\n")

    def _read_body(self, resp: Response, deadline: float | None = None) -> None:
        """The body as the headers frame it, into `resp` as it arrives."""
        te = (resp.header("Transfer-Encoding") or "").lower()
        cl = resp.header("Content-Length")
        if te == "chunked":
            resp.framing = "chunked"
            while True:
                size = int(self._read_until(b"\r\n", deadline).split(b";")[0], 16)
                if size == 0:
                    self._read_until(b"\r\n", deadline)  # empty trailer section
                    return
                chunk = self._read_exact(size, deadline)
                resp.chunks.append(chunk)
                resp.body += chunk
                if self._read_exact(2, deadline) != b"\r\n":
                    raise FramingError("chunk not terminated by CRLF")
        elif cl is not None and cl.isdigit():
            resp.framing = "content-length"
            resp.body = self._read_exact(int(cl), deadline)
        else:
            resp.framing = "eof"
            while self._fill(deadline):
                pass
            resp.body, self.buf = self.buf, b""

    def _read_body_or_cut(self, resp: Response, deadline: float) -> None:
        """`_read_body`, where a connection that ends inside the body makes it
        incomplete: what had come (up to the framing) is the body."""
        try:
            self._read_body(resp, deadline)
        except ConnectionClosed:
            self._cut(resp)

    def _cut(self, resp: Response) -> None:
        resp.complete = False
        resp.body += self.buf
        self.buf = b""

    def read_response(self, head_request: bool = False) -> Response:
        """The next response, waiting up to the socket's timeout for each read (an
        interim 1xx comes on its own: read again for the final one)."""
        resp = self._read_head()
        if not (resp.interim or head_request or resp.status in (204, 304)):
            self._read_body(resp)
        return resp

    def read(self, head_request: bool, deadline: float, body_wait: float | None = None) -> Response | None:
        """The next response as framed, by `deadline`; None if the connection ended
        before a full head. With `body_wait`, the body (even for HEAD) is whatever
        arrives within that many seconds, at most what the framing says: for
        Waitress's answers to HEAD, whose body may be shorter than their
        Content-Length."""
        try:
            resp = self._read_head(deadline)
        except ConnectionClosed:
            return None
        if resp.interim:
            return resp
        if body_wait is not None:
            try:
                self._read_body_or_cut(resp, time.monotonic() + body_wait)
            except TimeoutError:
                self._cut(resp)
        elif not (head_request or resp.status in (204, 304)):
            self._read_body_or_cut(resp, deadline)
        return resp

    def drain(self, seconds: float) -> bytes:
        """Reads for up to `seconds`, or until the server closes (then `eof` is set);
        returns everything not read as a response."""
        deadline = time.monotonic() + seconds
        try:
            while self._fill(deadline):
                pass
        except TimeoutError:
            pass
        except OSError:
            self.eof = True
        data, self.buf = self.buf, b""
        return data

    def is_closed(self, timeout: float = 2.0) -> bool:
        """True if the server closed the connection (EOF or reset) with nothing more
        to read; False if it is still open after `timeout`."""
        if self.buf:
            return False
        self.sock.settimeout(timeout)
        try:
            return not self._fill()
        except socket.timeout:
            return False

    def read_all(self, timeout: float = 5.0) -> bytes:
        """Everything until the server closes."""
        self.sock.settimeout(timeout)
        try:
            while self._fill():
                pass
        except socket.timeout:
            raise AssertionError(f"server did not close; got {self.buf!r}") from None
        data, self.buf = self.buf, b""
        return data

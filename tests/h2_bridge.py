"""A socket-like object that speaks HTTP/2 to the server and HTTP/1.1 to the test, so
the WSGI behaviour suites, written against raw HTTP/1.1 bytes (`RawConn`), run
unchanged over HTTP/2 (`TAPSTER_TEST_TRANSPORT=h2`).

Requests the test writes are parsed as they arrive and sent as streams on one h2c
connection (prior knowledge): each head as HEADERS at once (so `expect: 100-continue`
works as over HTTP/1.1), its body (Content-Length or chunked) as DATA within the
server's windows. Responses come back as HTTP/1.1 bytes in request order: the status
line, the fields, the body framed by its content-length or else chunked; an interim
100 on its own; a stream the server reset, or a GOAWAY, ends the bytes as a closed
connection would. A request with `Connection: close` (or HTTP/1.0 without keep-alive)
ends them after its response, as the server would close an HTTP/1.1 connection.

What cannot be said in HTTP/2 (malformed HTTP/1.1, hop-by-hop fields, the exact bytes
of a head) is not for these suites: the tests that need it are marked `http1_only`."""

from __future__ import annotations

import socket
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus

import h2.config
import h2.connection
import h2.events
import h2.exceptions

#: Fields that belong to one HTTP/1.1 connection (RFC 9113 section 8.2.2).
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host"}


class NotTranslatable(ValueError):
    """HTTP/1.1 bytes that have no HTTP/2 equivalent."""


@dataclass
class _Reply:
    """One stream's response, as HTTP/1.1 bytes so far."""

    head_request: bool
    close_after: bool
    data: bytearray = field(default_factory=bytearray)
    chunked: bool = False
    done: bool = False
    cut: bool = False  # reset by the server: the HTTP/1.1 connection would have closed


@dataclass
class _Upload:
    """The body of the request being translated."""

    stream: int
    remaining: int = 0  # Content-Length bytes still to come
    chunked: bool = False
    chunk_left: int = 0  # bytes of the current chunk still to come
    chunk_state: str = "size"  # size, data, crlf, trailer


def _title(name: str) -> str:
    return "-".join(part[:1].upper() + part[1:] for part in name.split("-"))


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class H2Bridge:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        config = h2.config.H2Configuration(client_side=True, header_encoding=None, validate_inbound_headers=False)
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        self.inbuf = b""
        self.upload: _Upload | None = None
        self.pending: dict[int, bytearray] = {}  # body bytes waiting for window
        self.ending: set[int] = set()  # streams to end once their pending bytes are out
        self.order: deque[int] = deque()
        self.replies: dict[int, _Reply] = {}
        self.out = bytearray()
        self.ended = False  # no more response bytes will come
        self.goaway = False  # the server is ending the connection once its streams are done
        self.broken = False  # the connection is gone
        self._flush()

    # ----- the socket interface RawConn uses ----------------------------------------

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def sendall(self, data: bytes) -> None:
        self.inbuf += data
        self._translate()
        self._flush()

    def recv(self, n: int) -> bytes:
        while not self.out and not self.ended:
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                data = b""
            if not data:
                self.broken = True
            else:
                self._receive(data)
            self._collect()
        taken, self.out = bytes(self.out[:n]), self.out[n:]
        return taken

    def shutdown(self, how: int) -> None:
        pass  # HTTP/2 has no half-close of a connection: the streams end themselves

    def close(self) -> None:
        self.sock.close()

    def __getattr__(self, name: str) -> object:
        return getattr(self.sock, name)  # getsockname, fileno...

    # ----- requests -----------------------------------------------------------------

    def _translate(self) -> None:
        while self.inbuf:
            if self.upload is not None:
                if not self._body():
                    return
                continue
            end = self.inbuf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.inbuf = self.inbuf[:end], self.inbuf[end + 4 :]
            self._start(head)

    def _start(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise NotTranslatable(f"not an HTTP/1.x request line: {lines[0]!r}")
        method, target, version = parts
        fields: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise NotTranslatable(f"not a field line: {line!r}")
            fields.append((name.strip().lower(), value.strip(" \t")))
        connection = ",".join(v for n, v in fields if n == "connection").lower()
        close_after = "close" in connection or (version == "HTTP/1.0" and "keep-alive" not in connection)
        authority = next((v for n, v in fields if n == "host"), "tapster.test")
        length = next((v for n, v in fields if n == "content-length"), None)
        chunked = any(n == "transfer-encoding" and "chunked" in v.lower() for n, v in fields)
        headers = [(":method", method), (":scheme", "http"), (":authority", authority), (":path", target)]
        headers += [(n, v) for n, v in fields if n not in HOP_BY_HOP and not (n == "te" and v.lower() != "trailers")]
        if chunked:
            headers = [(n, v) for n, v in headers if n != "content-length"]
        stream = self.conn.get_next_available_stream_id()
        has_body = chunked or (length is not None and length.isdigit() and int(length) > 0)
        self.conn.send_headers(stream, [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers], end_stream=not has_body)
        self.order.append(stream)
        self.replies[stream] = _Reply(head_request=method == "HEAD", close_after=close_after)
        if has_body:
            self.upload = _Upload(stream, remaining=0 if chunked else int(length or 0), chunked=chunked)

    def _body(self) -> bool:
        """Translates body bytes of the current upload; False when more are needed."""
        up = self.upload
        assert up is not None
        if not up.chunked:
            take, self.inbuf = self.inbuf[: up.remaining], self.inbuf[up.remaining :]
            up.remaining -= len(take)
            self._data(up.stream, take, end=up.remaining == 0)
            if up.remaining == 0:
                self.upload = None
            return up.remaining == 0 or bool(self.inbuf)
        if up.chunk_state == "size":
            line_end = self.inbuf.find(b"\r\n")
            if line_end < 0:
                return False
            size = int(self.inbuf[:line_end].split(b";")[0], 16)
            self.inbuf = self.inbuf[line_end + 2 :]
            up.chunk_left, up.chunk_state = size, ("data" if size else "trailer")
        elif up.chunk_state == "data":
            take, self.inbuf = self.inbuf[: up.chunk_left], self.inbuf[up.chunk_left :]
            up.chunk_left -= len(take)
            self._data(up.stream, take, end=False)
            if up.chunk_left:
                return False
            up.chunk_state = "crlf"
        elif up.chunk_state == "crlf":
            if len(self.inbuf) < 2:
                return False
            self.inbuf, up.chunk_state = self.inbuf[2:], "size"
        else:  # the trailer section: lines up to an empty one (trailers are not sent)
            line_end = self.inbuf.find(b"\r\n")
            if line_end < 0:
                return False
            line, self.inbuf = self.inbuf[:line_end], self.inbuf[line_end + 2 :]
            if not line:
                self._data(up.stream, b"", end=True)
                self.upload = None
        return True

    def _data(self, stream: int, data: bytes, end: bool) -> None:
        self.pending.setdefault(stream, bytearray()).extend(data)
        if end:
            self.ending.add(stream)
        self._send_pending()

    def _send_pending(self) -> None:
        for stream in list(self.pending):
            buf = self.pending[stream]
            try:
                while buf:
                    room = min(self.conn.local_flow_control_window(stream), self.conn.max_outbound_frame_size)
                    if room <= 0:
                        break
                    self.conn.send_data(stream, bytes(buf[:room]))
                    del buf[:room]
                if not buf and stream in self.ending:
                    self.conn.end_stream(stream)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                buf.clear()  # the server answered and closed the stream early
            if not buf:
                del self.pending[stream]
                self.ending.discard(stream)

    # ----- responses ----------------------------------------------------------------

    def _receive(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            # The Python h2 library refuses frames after a GOAWAY (the server's PING):
            # the connection is ending either way.
            self.goaway = True
            return
        for event in events:
            self._event(event)
        self._send_pending()
        self._flush()

    def _event(self, event: object) -> None:
        stream = getattr(event, "stream_id", None)
        reply = self.replies.get(stream) if stream is not None else None
        if isinstance(event, h2.events.InformationalResponseReceived) and reply:
            status = int(dict(event.headers)[b":status"])
            reply.data += f"HTTP/1.1 {status} {_reason(status)}\r\n\r\n".encode()
        elif isinstance(event, h2.events.ResponseReceived) and reply:
            self._head(reply, event.headers)
        elif isinstance(event, h2.events.DataReceived) and reply:
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if event.data:
                reply.data += b"%X\r\n%s\r\n" % (len(event.data), event.data) if reply.chunked else event.data
        elif isinstance(event, h2.events.StreamEnded) and reply:
            if reply.chunked:
                reply.data += b"0\r\n\r\n"
            reply.done = True
        elif isinstance(event, h2.events.StreamReset) and reply:
            reply.done = reply.cut = True
            self.pending.pop(event.stream_id, None)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = True

    def _head(self, reply: _Reply, headers: list[tuple[bytes, bytes]]) -> None:
        status = int(dict(headers)[b":status"])
        # Names as HTTP/1.1 servers usually write them (HTTP/2 sends them lower-case).
        fields = [(_title(n.decode("latin-1")), v.decode("latin-1")) for n, v in headers if not n.startswith(b":")]
        has_length = any(n == "Content-Length" for n, _ in fields)
        bodiless = reply.head_request or status in (204, 304) or status < 200
        reply.chunked = not has_length and not bodiless
        head = f"HTTP/1.1 {status} {_reason(status)}\r\n"
        head += "".join(f"{n}: {v}\r\n" for n, v in fields)
        if reply.chunked:
            head += "Transfer-Encoding: chunked\r\n"
        reply.data += (head + "\r\n").encode("latin-1")

    def _collect(self) -> None:
        """Moves the responses' bytes to `out` in request order; ends the bytes where an
        HTTP/1.1 connection would close."""
        while self.order:
            reply = self.replies[self.order[0]]
            self.out += reply.data
            reply.data.clear()
            if not reply.done:
                break
            self.order.popleft()
            if reply.cut or reply.close_after:
                self.ended = True
                return
        if self.broken or (self.goaway and not self.order):
            self.ended = True

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            try:
                self.sock.sendall(data)
            except OSError:
                self.broken = True

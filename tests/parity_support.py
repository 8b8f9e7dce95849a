"""Side-by-side harness for tests/test_parity.py: real Waitress 3.0.2 and Tapster, each
in its own process, serving the same app (tests/apps/parity_app.py) with the same
options; the same raw bytes are sent to both, and what the client got (and what the
app saw) is reduced to a comparable `Outcome`.

Differences are allowed only where README.md's "Differences from Waitress" table
documents them. Each one is a `Normalisation` below that names its README row (the
exact text of the row's Waitress column, checked against README.md by a test) and
turns what Waitress did into what Tapster is documented to do instead (and only when
Waitress did what the row's Waitress column says). Everything else must be equal. A few things that can never be equal between two processes
(the Date, the ports, the type names of wsgi.* objects) are `HARNESS` exclusions,
listed separately; they are not differences in behaviour.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from support import TESTS_DIR, CapturedProcess, ServerProcess, tests_env

APP = "apps.parity_app:app"
README = os.path.join(os.path.dirname(TESTS_DIR), "README.md")

#: How long to wait, after the expected responses, for the server to close (or to
#: send anything more). Both servers close at once when they mean to.
CLOSE_WAIT = 0.35
#: How long to wait for a response that should come.
RESPONSE_WAIT = 4.0


# ---------------------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------------------


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


def _tapster_log(srv: ServerProcess) -> str:
    return srv.log()


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

    def log(self, side: str) -> str:
        return self.waitress.log() if side == "waitress" else _tapster_log(self.tapster)

    def wait_for_log(self, side: str, pattern: str, timeout: float = 5.0) -> str:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log(side).splitlines():
                if regex.search(line):
                    return line
            time.sleep(0.02)
        raise AssertionError(f"{side}: no log line matching {pattern!r}:\n{self.log(side)}")

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


# ---------------------------------------------------------------------------------------
# The client side: scripts and what came back
# ---------------------------------------------------------------------------------------


@dataclass
class Resp:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    framing: str = "none"  # "content-length", "chunked", "eof" or "none"
    complete: bool = True

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


@dataclass
class Outcome:
    """Everything one server did with one script."""

    side: str
    responses: list[Resp] = field(default_factory=list)
    interim: list[list[int]] = field(default_factory=list)  # 1xx statuses before each final
    closed: bool = False
    leftover: bytes = b""
    problem: str | None = None  # a response that did not come, or came garbled
    client_ports: list[int] = field(default_factory=list)
    server_port: int = 0


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.eof = False

    def fill(self, deadline: float) -> bool:
        if self.eof:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError from None
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def until(self, marker: bytes, deadline: float) -> bytes | None:
        while marker not in self.buf:
            if not self.fill(deadline):
                return None
        head, self.buf = self.buf.split(marker, 1)
        return head

    def exact(self, n: int, deadline: float) -> bytes | None:
        while len(self.buf) < n:
            if not self.fill(deadline):
                return None
        data, self.buf = self.buf[:n], self.buf[n:]
        return data


def _parse_head(raw: bytes) -> Resp:
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    version = parts[0]
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1
    reason = parts[2] if len(parts) > 2 else ""
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name, value.strip(" \t")))
    return Resp(version, status, reason, headers)


def read_response(
    reader: _Reader, head_request: bool, deadline: float, body_wait: float | None = None
) -> Resp | None:
    """One response (not 1xx) as framed; None if nothing (or no full head) came.
    With `body_wait`, the body is whatever arrives within that many seconds (at most
    what the framing says): for Waitress's answers to HEAD, whose body may be shorter
    than their Content-Length."""
    raw = reader.until(b"\r\n\r\n", deadline)
    if raw is None:
        return None
    resp = _parse_head(raw)
    if body_wait is not None and not (100 <= resp.status < 200):
        try:
            _read_body(reader, resp, time.monotonic() + body_wait)
        except TimeoutError:
            resp.complete = False
            resp.body += reader.buf
            reader.buf = b""
        return resp
    if 100 <= resp.status < 200:
        return resp
    if head_request or resp.status in (204, 304):
        return resp
    _read_body(reader, resp, deadline)
    return resp


def _read_body(reader: _Reader, resp: Resp, deadline: float) -> None:
    te = (resp.header("Transfer-Encoding") or "").lower()
    cl = resp.header("Content-Length")
    if te == "chunked":
        resp.framing = "chunked"
        body = b""
        while True:
            line = reader.until(b"\r\n", deadline)
            if line is None:
                resp.complete = False
                break
            size = int(line.split(b";")[0], 16)
            if size == 0:
                if reader.until(b"\r\n", deadline) is None:
                    resp.complete = False
                break
            chunk = reader.exact(size + 2, deadline)
            if chunk is None:
                resp.complete = False
                body += reader.buf
                reader.buf = b""
                break
            body += chunk[:-2]
        resp.body = body
    elif cl is not None and cl.isdigit():
        resp.framing = "content-length"
        data = reader.exact(int(cl), deadline)
        if data is None:
            resp.complete = False
            data, reader.buf = reader.buf, b""
        resp.body = data
    else:
        resp.framing = "eof"
        while reader.fill(deadline):
            pass
        resp.body, reader.buf = reader.buf, b""


class Step:
    """One action of a client script."""


@dataclass
class Send(Step):
    data: bytes


@dataclass
class Pause(Step):
    seconds: float


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


@dataclass
class NewConnection(Step):
    """Closes the current connection (after the close check) and opens another."""


def run_script(side: str, address: tuple[str, int], steps: list[Step]) -> Outcome:
    out = Outcome(side, server_port=address[1])
    sock = socket.create_connection(address, timeout=RESPONSE_WAIT)
    out.client_ports.append(sock.getsockname()[1])
    reader = _Reader(sock)
    pending_interim: list[int] = []
    try:
        for step in steps:
            if isinstance(step, Send):
                try:
                    sock.sendall(step.data)
                except (BrokenPipeError, ConnectionResetError):
                    pass
            elif isinstance(step, Pause):
                time.sleep(step.seconds)
            elif isinstance(step, ShutWr):
                sock.shutdown(socket.SHUT_WR)
            elif isinstance(step, ReadInterim):
                try:
                    resp = read_response(reader, False, time.monotonic() + step.wait)
                except TimeoutError:
                    resp = None
                if resp is None:
                    pending_interim.append(0)  # 0: no interim response came
                elif 100 <= resp.status < 200:
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
                        resp = read_response(reader, head, deadline, body_wait)
                        if resp is not None and 100 <= resp.status < 200:
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
            elif isinstance(step, NewConnection):
                _finish(out, reader)
                sock.close()
                sock = socket.create_connection(address, timeout=RESPONSE_WAIT)
                out.client_ports.append(sock.getsockname()[1])
                reader = _Reader(sock)
        if pending_interim:
            out.interim.append(pending_interim)  # 1xx (or 0: none) with no final response
        _finish(out, reader)
    finally:
        sock.close()
    return out


def _finish(out: Outcome, reader: _Reader) -> None:
    """Records whether the server closed, and anything it sent after the responses."""
    deadline = time.monotonic() + CLOSE_WAIT
    try:
        while reader.fill(deadline):
            pass
    except TimeoutError:
        pass
    except OSError:
        reader.eof = True
    out.leftover += reader.buf
    reader.buf = b""
    out.closed = reader.eof


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


# ---------------------------------------------------------------------------------------
# Comparable views
# ---------------------------------------------------------------------------------------


@dataclass
class RequestInfo:
    method: str
    version: str  # "1.0", "1.1" or whatever the request line said
    connection_tokens: list[str]
    connection_raw: str | None
    target: str = ""
    request_line: str = ""  # as sent, without its line ending
    header_lines: list[str] = field(default_factory=list)  # as sent, CRLF-separated
    raw: bytes = b""

    def header(self, name: str) -> str | None:
        """The first field `name` (OWS-trimmed), else None."""
        for line in self.header_lines:
            key, sep, value = line.partition(":")
            if sep and key.lower() == name.lower():
                return value.strip(" \t")
        return None


def parse_request(raw: bytes) -> RequestInfo:
    """The method, target, version and Connection header of one raw request."""
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    lines = head.split("\r\n")
    parts = lines[0].split(" ")
    method = parts[0] if parts else ""
    target = parts[1] if len(parts) > 1 else ""
    version = parts[2][len("HTTP/") :] if len(parts) > 2 and parts[2].startswith("HTTP/") else ""
    conn = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.lower() == "connection":
            conn = value.strip() if conn is None else conn + ", " + value.strip()
    tokens = [t.strip().lower() for t in (conn or "").split(",") if t.strip()]
    return RequestInfo(method, version, tokens, conn, target, lines[0], lines[1:], raw)


def parse_requests(steps: list[Step]) -> list[RequestInfo]:
    """One RequestInfo per response the script reads (from ReadFinal.req)."""
    return [parse_request(s.req) for s in steps if isinstance(s, ReadFinal)]


@dataclass
class View:
    """What is compared: one per side, after normalisation."""

    responses: list[dict[str, Any]]
    interim: list[list[int]]
    closed: bool
    leftover: bytes
    problem: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "responses": self.responses,
            "interim": self.interim,
            "closed": self.closed,
            "leftover": self.leftover,
            "problem": self.problem,
        }


def _environ_of(resp: Resp) -> dict[str, Any] | None:
    if resp.status != 200 or (resp.header("Content-Type") or "") != "application/json":
        return None
    try:
        data = json.loads(resp.body)
    except ValueError:
        return None
    return data if isinstance(data, dict) and "environ" in data else None


def view_of(out: Outcome) -> View:
    responses = []
    for resp in out.responses:
        responses.append(
            {
                "version": resp.version,
                "status": resp.status,
                "reason": resp.reason,
                # HARNESS: Date differs by the clock; compared only for presence.
                "headers": [(k, "<date>" if k.lower() == "date" else v) for k, v in resp.headers],
                "body": resp.body,
                "framing": resp.framing,
                "complete": resp.complete,
                "app": _environ_of(resp),
            }
        )
    return View(responses, [list(i) for i in out.interim], out.closed, out.leftover, out.problem)


# ---------------------------------------------------------------------------------------
# Normalisations: each one is a README row
# ---------------------------------------------------------------------------------------


@dataclass
class Normalisation:
    """One row of README.md's "Differences from Waitress" table, as code: `apply`
    rewrites the Waitress view into what the row says Tapster does instead."""

    name: str
    readme_row: str  # the exact text of the row's Waitress column
    apply: Callable[..., None] | None = None


@dataclass
class Context:
    pair: ServerPair
    requests: list[RequestInfo]
    applied: list[str] = field(default_factory=list)


def _drop_header(resp: dict[str, Any], name: str, value: str | None = None) -> bool:
    name = name.lower()
    before = len(resp["headers"])
    resp["headers"] = [
        (k, v)
        for k, v in resp["headers"]
        if not (k.lower() == name and (value is None or v.lower() == value.lower()))
    ]
    return len(resp["headers"]) != before


def _set_header(resp: dict[str, Any], name: str, value: str) -> None:
    _drop_header(resp, name)
    resp["headers"].append((name, value))


def _header(resp: dict[str, Any], name: str) -> str | None:
    for k, v in resp["headers"]:
        if k.lower() == name:
            return v
    return None


def _lower_names(view: View, ctx: Context) -> None:
    for resp in view.responses:
        resp["headers"] = sorted((k.lower(), v) for k, v in resp["headers"])


HEADER_CASE = Normalisation(
    "header-case-and-order",
    "Header names in responses are capitalised and sorted",
    _lower_names,
)


def _default_ident(view: View, ctx: Context) -> None:
    ident = ctx.pair.option("ident")
    for resp in view.responses:
        if ident is None:
            resp["headers"] = [
                (k, "tapster" if k.lower() in ("server", "via") and v == "waitress" else v)
                for k, v in resp["headers"]
            ]
            old, new = b"(generated by waitress)", b"(generated by tapster)"
            if resp["body"].endswith(old):
                resp["body"] = resp["body"][: -len(old)] + new
                if _header(resp, "content-length") is not None:
                    _set_header(resp, "Content-Length", str(len(resp["body"])))
        app = resp["app"]
        if app is not None:
            env = app["environ"]
            if ident is None and env.get("SERVER_SOFTWARE") == "waitress":
                env["SERVER_SOFTWARE"] = "tapster"
            if ctx.pair.option("server_name") is None and env.get("SERVER_NAME") == "waitress.invalid":
                env["SERVER_NAME"] = "tapster.invalid"


DEFAULT_IDENT = Normalisation(
    "default-ident-and-server-name",
    "`ident` default `waitress`, `server_name` default `waitress.invalid`",
    _default_ident,
)


def _empty_ident_no_via(view: View, ctx: Context) -> None:
    """Scenario-declared (an empty ident and an app that sets Server): Waitress adds
    `Via: waitress` all the same; Tapster adds no Via."""
    if ctx.pair.option("ident") != "":
        return
    for resp in view.responses:
        if _header(resp, "server") is not None and _drop_header(resp, "via", "waitress"):
            ctx.applied.append(EMPTY_IDENT_NO_VIA.name)


EMPTY_IDENT_NO_VIA = Normalisation(
    "empty-ident-no-via",
    "With an empty `ident`, an application's own Server header still gets `Via: waitress`",
    _empty_ident_no_via,
)


def _tapster_disconnected(view: View, ctx: Context) -> None:
    """Always: wherever Waitress offers `waitress.client_disconnected`, Tapster also
    offers `tapster.client_disconnected`, the same callable (the app reports whether
    it is the same object; see parity_app.describe)."""
    for resp in view.responses:
        app = resp["app"]
        if app is None:
            continue
        env = app["environ"]
        if "waitress.client_disconnected" in env and "tapster.client_disconnected" not in env:
            env["tapster.client_disconnected"] = env["waitress.client_disconnected"]
            app["facts"][SAME_CHECK_FACT] = True
            ctx.applied.append(TAPSTER_DISCONNECTED.name)


#: The fact parity_app.describe reports when the environ has tapster.client_disconnected.
SAME_CHECK_FACT = "tapster.client_disconnected is waitress.client_disconnected"

TAPSTER_DISCONNECTED = Normalisation(
    "tapster-client-disconnected-too",
    "The environ offers `waitress.client_disconnected`",
    _tapster_disconnected,
)


def _wants_close(info: RequestInfo) -> bool:
    """Tapster's reading of the request's Connection header (a token list)."""
    if info.version == "1.0":
        return "keep-alive" not in info.connection_tokens
    return "close" in info.connection_tokens


def _keepalive_chunked(view: View, ctx: Context) -> None:
    """Waitress announces `Connection: close` on every HTTP/1.1 chunked, 204 and 304
    response and closes after it; Tapster does neither. (If the response was cut short
    by an error, both still close.)"""
    for index, resp in enumerate(view.responses):
        if index >= len(ctx.requests):
            break
        info = ctx.requests[index]
        if info.version != "1.1" or _wants_close(info):
            continue
        chunked = resp["framing"] == "chunked" or (_header(resp, "transfer-encoding") or "").lower() == "chunked"
        if not (resp["status"] in (204, 304) or chunked):
            continue
        if _drop_header(resp, "connection", "close"):
            ctx.applied.append(KEEPALIVE_CHUNKED.name)
        if index == len(view.responses) - 1 and resp["complete"] and view.closed:
            view.closed = False
            ctx.applied.append(KEEPALIVE_CHUNKED.name)


KEEPALIVE_CHUNKED = Normalisation(
    "keep-alive-after-chunked-204-304",
    "Closes the connection after every response without a Content-Length (chunked), and after 204 and 304",
    _keepalive_chunked,
)


def _head_body(view: View, ctx: Context) -> None:
    for index, resp in enumerate(view.responses):
        if index < len(ctx.requests) and ctx.requests[index].method == "HEAD":
            if resp["body"] or resp["framing"] != "none":
                ctx.applied.append(HEAD_BODY.name)
            resp["body"] = b""
            resp["app"] = None
            resp["framing"] = "none"
            resp["complete"] = True


HEAD_BODY = Normalisation(
    "head-never-carries-a-body",
    "HEAD responses carry whatever body the application returns",
    _head_body,
)


def _with_content_length(view: View, ctx: Context, index: int) -> None:
    """Response `index`, which Waitress sent chunked (or, on HTTP/1.0, up to the
    close), as Tapster sends a body it knows whole: with a Content-Length, and so kept
    alive unless the request asked for a close (`Connection: Keep-Alive` on HTTP/1.0)."""
    resp = view.responses[index]
    info = ctx.requests[index]
    _drop_header(resp, "transfer-encoding", "chunked")
    _set_header(resp, "Content-Length", str(len(resp["body"])))
    resp["framing"] = "none" if info.method == "HEAD" else "content-length"
    if not _wants_close(info) and index == len(view.responses) - 1:
        _drop_header(resp, "connection", "close")
        if info.version == "1.0":
            _set_header(resp, "Connection", "Keep-Alive")
        view.closed = False


def _lengths_where(view: View, ctx: Context, name: str, wanted: Callable[[dict[str, Any]], bool]) -> None:
    """Every response without a Content-Length that `wanted` picks, as Tapster sends
    it (see `_with_content_length`); records normalisation `name` for each."""
    for index, resp in enumerate(view.responses):
        if _header(resp, "content-length") is None and wanted(resp):
            _with_content_length(view, ctx, index)
            ctx.applied.append(name)


def _list_content_length(view: View, ctx: Context) -> None:
    """Scenario-declared: the app returned a list/tuple of more than one item."""
    _lengths_where(view, ctx, LIST_CONTENT_LENGTH.name, lambda resp: resp["status"] == 200)


LIST_CONTENT_LENGTH = Normalisation(
    "list-or-tuple-gets-content-length",
    "A list or tuple app_iter gets a Content-Length only when it has one item",
    _list_content_length,
)


def _empty_body(view: View, ctx: Context) -> None:
    """Scenario-declared: the app_iter produced no bytes at all (and the app set no
    Content-Length): Waitress frames the nothing chunked, Tapster sends
    `Content-Length: 0`."""
    _lengths_where(
        view,
        ctx,
        EMPTY_BODY_CL0.name,
        lambda resp: resp["status"] == 200 and resp["body"] == b"" and resp["complete"],
    )


EMPTY_BODY_CL0 = Normalisation(
    "empty-body-content-length-0",
    "An app_iter that produces no bytes at all is sent chunked",
    _empty_body,
)


_PROXY_ERROR = re.compile(rb'Bad Request\r\n\r\nHeader "[^"]+" malformed\.\r\n')


def _proxy_error_length(view: View, ctx: Context) -> None:
    """Scenario-declared: Waitress's 400 for a malformed trusted proxy header goes
    through its WSGI path (chunked on HTTP/1.1, up to the close on HTTP/1.0, and the
    connection closed); Tapster sends it with a Content-Length and keeps the
    connection as for any response it knows whole."""
    _lengths_where(
        view,
        ctx,
        PROXY_ERROR_LENGTH.name,
        lambda resp: resp["status"] == 400 and _PROXY_ERROR.match(resp["body"]) is not None,
    )


PROXY_ERROR_LENGTH = Normalisation(
    "malformed-proxy-header-400-has-content-length",
    "The 400 for a malformed trusted proxy header is sent chunked (and the connection closed)",
    _proxy_error_length,
)


def _early_continue(view: View, ctx: Context) -> None:
    """Scenario-declared: the body was sent with the head, so Tapster sends no 100."""
    for interim in view.interim:
        if 100 in interim:
            interim.remove(100)
            ctx.applied.append(EARLY_CONTINUE.name)


EARLY_CONTINUE = Normalisation(
    "no-100-continue-once-the-body-is-there",
    "`100 Continue` is sent even when the body has already arrived",
    _early_continue,
)


def _connection_tokens(view: View, ctx: Context) -> None:
    """Scenario-declared: a Connection list containing `close` (not exactly `close`)."""
    resp = view.responses[-1]
    if not view.closed:
        _set_header(resp, "Connection", "close")
        view.closed = True
        ctx.applied.append(CONNECTION_TOKENS.name)


CONNECTION_TOKENS = Normalisation(
    "connection-is-a-token-list",
    "`Connection: close, TE` is not recognised as close (exact match only)",
    _connection_tokens,
)


def _http1x(view: View, ctx: Context) -> None:
    """Scenario-declared: an HTTP/1.x (x > 1) request, served by Tapster as HTTP/1.1."""
    for resp in view.responses:
        if resp["version"] == "HTTP/1.0":
            resp["version"] = "HTTP/1.1"
            _drop_header(resp, "connection", "close")
            view.closed = False
            ctx.applied.append(HTTP1X.name)
        if resp["app"] is not None:
            resp["app"]["environ"]["SERVER_PROTOCOL"] = "HTTP/1.1"


HTTP1X = Normalisation(
    "http-1.x-served-as-1.1",
    "HTTP/2 (and any other version) request lines are served as HTTP/1.0",
    _http1x,
)


def _absolute_form_host(view: View, ctx: Context) -> None:
    """Scenario-declared: for an absolute-form target Waitress's HTTP_HOST is the Host
    header (absent without one); Tapster's is the target's authority."""
    for index, resp in enumerate(view.responses):
        if index >= len(ctx.requests) or resp["app"] is None:
            continue
        info = ctx.requests[index]
        m = re.match(r"(?i)https?://([^/?#]+)", info.target)
        env = resp["app"]["environ"]
        if m and env.get("HTTP_HOST") == info.header("host"):
            env["HTTP_HOST"] = m.group(1)
            ctx.applied.append(ABSOLUTE_FORM_HOST.name)


ABSOLUTE_FORM_HOST = Normalisation(
    "absolute-form-target-gives-http-host",
    "With an absolute-form target (`GET http://h/p`), HTTP_HOST stays the Host header",
    _absolute_form_host,
)


def _root_prefix(view: View, ctx: Context) -> None:
    """Scenario-declared (url_prefix="/"): Waitress's SCRIPT_NAME is "/" (and the path
    "/" becomes PATH_INFO ""); Tapster's SCRIPT_NAME is "" and PATH_INFO is the path."""
    if ctx.pair.option("url_prefix") != "/":
        return
    for resp in view.responses:
        app = resp["app"]
        if app is None or app["environ"].get("SCRIPT_NAME") != "/":
            continue
        env = app["environ"]
        env["SCRIPT_NAME"] = ""
        if env.get("PATH_INFO") == "":
            env["PATH_INFO"] = "/"
        ctx.applied.append(ROOT_PREFIX.name)


ROOT_PREFIX = Normalisation(
    "url-prefix-root-is-empty-script-name",
    '`url_prefix="/"` gives SCRIPT_NAME `/`',
    _root_prefix,
)


_WAITRESS_DIR = os.path.dirname(importlib.util.find_spec("waitress").origin or "")  # type: ignore[union-attr]
_TRACEBACK_HEAD = "Traceback (most recent call last):\n"


def _app_frames_only(view: View, ctx: Context) -> None:
    """Scenario-declared (expose_tracebacks): the traceback in Waitress's 500 page
    starts with Waitress's own frames (channel.py, task.py) above the application's;
    Tapster's starts at the application call. The leading frames from files in the
    waitress package are dropped (and the Content-Length follows)."""
    for resp in view.responses:
        if resp["status"] != 500 or _TRACEBACK_HEAD.encode() not in resp["body"]:
            continue
        text = resp["body"].decode("utf-8")
        before, after = text.split(_TRACEBACK_HEAD, 1)
        lines = after.split("\n")
        frames: list[list[str]] = []
        rest = 0
        for i, line in enumerate(lines):
            if line.startswith("  File "):
                frames.append([line])
            elif line.startswith("    ") and frames:
                frames[-1].append(line)
            else:
                rest = i
                break
        own = 0
        while own < len(frames) and frames[own][0].startswith(f'  File "{_WAITRESS_DIR}{os.sep}'):
            own += 1
        if own == 0 or own == len(frames):
            continue
        kept = [line for frame in frames[own:] for line in frame] + lines[rest:]
        resp["body"] = (before + _TRACEBACK_HEAD + "\n".join(kept)).encode("utf-8")
        if _header(resp, "content-length") is not None:
            _set_header(resp, "Content-Length", str(len(resp["body"])))
        ctx.applied.append(APP_FRAMES_ONLY.name)


APP_FRAMES_ONLY = Normalisation(
    "traceback-has-only-the-apps-frames",
    "The traceback in a 500 page (`expose_tracebacks`) includes Waitress's own frames",
    _app_frames_only,
)


# --- Rows where Tapster answers with an error page what Waitress serves (or never
# answers): the Waitress view becomes the page Tapster documents instead, built the way
# Waitress builds its own error pages (so DEFAULT_IDENT and HEADER_CASE still apply).
# The status is the README's; the detail line is Waitress's wording where Waitress has
# one for the same fault, else Tapster's (Waitress never produces this error).


def _error_page(ctx: Context, status: int, reason: str, detail: str, version: str) -> dict[str, Any]:
    """Waitress's error page (utilities.Error.to_response and ErrorTask): text/plain,
    a Content-Length, `Connection: close`, Server: ident (none if empty)."""
    ident = ctx.pair.option("ident")
    ident = "waitress" if ident is None else ident
    body = f"{reason}\r\n\r\n{detail}\r\n\r\n(generated by {ident or 'server'})".encode("utf-8")
    headers = [
        ("Connection", "close"),
        ("Content-Length", str(len(body))),
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Date", "<date>"),
    ]
    if ident:
        headers.append(("Server", ident))
    return {
        "version": version,
        "status": status,
        "reason": reason,
        "headers": headers,
        "body": body,
        "framing": "content-length",
        "complete": True,
        "app": None,
    }


def _reject(view: View, ctx: Context, index: int, page: dict[str, Any], norm: Normalisation) -> None:
    """From response `index` on, the error page and the close (nothing after it)."""
    view.responses[index:] = [page]
    view.interim[index:] = [[]]
    view.closed = True
    view.leftover = b""
    view.problem = None
    ctx.applied.append(norm.name)


def _served(resp: dict[str, Any]) -> bool:
    """Waitress passed the request to the application (the environ dump came back)."""
    return resp["status"] == 200 and resp["app"] is not None


def _lf_only_head(view: View, ctx: Context) -> None:
    """Scenario-declared: a head whose lines end in LF only. Waitress sends nothing and
    keeps the connection open; Tapster answers 400 at once, with Waitress's wording for a
    bare LF in the request line, in HTTP/1.0 (the request line was never parsed)."""
    info = ctx.requests[0]
    if b"\r" in info.raw or b"\n" not in info.raw:
        return
    if view.responses or view.closed or not (view.problem or "").startswith("no response #1 "):
        return
    page = _error_page(ctx, 400, "Bad Request", "Bare CR or LF found in HTTP message", "HTTP/1.0")
    _reject(view, ctx, 0, page, LF_ONLY_400)


LF_ONLY_400 = Normalisation(
    "lf-only-head-400",
    "A head with LF-only line endings is never answered (the connection waits for a CRLF)",
    _lf_only_head,
)


def _obs_fold(view: View, ctx: Context) -> None:
    """Scenario-declared: a continuation line (obs-fold) after a header field. Waitress
    appends it to that field's value and serves the request; Tapster answers 400 in
    HTTP/1.0 (as Waitress answers a malformed header line) and closes."""
    for index, resp in enumerate(view.responses):
        info = ctx.requests[index]
        lines = info.header_lines
        for i in range(1, len(lines)):
            if lines[i][:1] in (" ", "\t") and ":" in lines[i - 1] and lines[i - 1][:1] not in (" ", "\t"):
                name = lines[i - 1].split(":", 1)[0]
                break
        else:
            continue
        if not _served(resp):
            return
        key = "HTTP_" + name.upper().replace("-", "_")
        value = resp["app"]["environ"].get(key)
        if not (isinstance(value, str) and value.endswith(lines[i].strip(" \t"))):
            return
        detail = f'Obsolete line folding is not accepted: "{lines[i]}"'
        _reject(view, ctx, index, _error_page(ctx, 400, "Bad Request", detail, "HTTP/1.0"), OBS_FOLD_400)
        return


OBS_FOLD_400 = Normalisation(
    "obs-fold-400",
    "A folded header line (obs-fold) is appended to the previous one",
    _obs_fold,
)


def _version_trailing_space(view: View, ctx: Context) -> None:
    """Scenario-declared: whitespace after the HTTP version. Waitress strips it and
    serves the request; Tapster answers 400 with Waitress's wording for an invalid
    request line ("Start line is invalid"), in HTTP/1.0, and closes."""
    for index, resp in enumerate(view.responses):
        info = ctx.requests[index]
        if not re.fullmatch(r"\S+ \S+ HTTP/\d\.\d[ \t]+", info.request_line):
            continue
        if not _served(resp):
            return
        page = _error_page(ctx, 400, "Bad Request", "Start line is invalid", "HTTP/1.0")
        _reject(view, ctx, index, page, VERSION_TRAILING_SPACE_400)
        return


VERSION_TRAILING_SPACE_400 = Normalisation(
    "trailing-whitespace-after-version-400",
    "Trailing whitespace after the HTTP version is stripped",
    _version_trailing_space,
)

#: RFC 3986 `host [ ":" port ]`, character by character: reg-name (unreserved,
#: pct-encoded, sub-delims), IPv4, or a bracketed IP literal.
HOST_CHARS = re.compile(r"[A-Za-z0-9\-._~%!$&'()*+,;=:\[\]]*")


def _host_value(view: View, ctx: Context) -> None:
    """Scenario-declared: a Host value with a character outside RFC 3986 host[:port].
    Waitress serves it as HTTP_HOST; Tapster answers 400 in the request's version (the
    request line was parsed) and closes."""
    for index, resp in enumerate(view.responses):
        info = ctx.requests[index]
        host = info.header("host")
        if host is None or HOST_CHARS.fullmatch(host):
            continue
        if not (_served(resp) and resp["app"]["environ"].get("HTTP_HOST") == host):
            return
        page = _error_page(ctx, 400, "Bad Request", "Invalid Host header", resp["version"])
        _reject(view, ctx, index, page, HOST_VALUE_400)
        return


HOST_VALUE_400 = Normalisation(
    "host-value-outside-rfc3986-400",
    "Any Host value is accepted",
    _host_value,
)

#: Rows that a scenario asserts directly (Tapster's documented status against what
#: Waitress does), rather than by rewriting Waitress's view.
HTTP2_505 = Normalisation("other-major-versions-505", "HTTP/2 (and any other version) request lines are served as HTTP/1.0")
HTTP09_400 = Normalisation("http-0.9-400", "Requests without an HTTP version (HTTP/0.9) are served as HTTP/1.0")
TE_AND_CL_400 = Normalisation("te-with-cl-400", "Transfer-Encoding with Content-Length: chunked wins")
TE_HTTP10_400 = Normalisation("te-on-http-1.0-400", "Transfer-Encoding on an HTTP/1.0 request is ignored")
REPEATED_SINGLETON_400 = Normalisation(
    "repeated-cl-host-ct-400", "Repeated Content-Length, Host or Content-Type headers are joined"
)
CHUNKED_TWICE_501 = Normalisation("chunked-chunked-501", "`chunked, chunked` accepted")
EMPTY_CHUNK_LINE_400 = Normalisation(
    "empty-chunk-size-line-400", "Empty lines where a chunk size is expected are skipped"
)
CHUNK_EXT_SKIPPED = Normalisation(
    "chunk-extensions-skipped",
    "Chunk extensions must match `;name[=value]` exactly: `5; name` or `5;=v` gets 400",
)
HUGE_CHUNK_413 = Normalisation(
    "huge-chunk-size-413",
    "A chunk size larger than `max_request_body_size` allows is read, and the 413 comes only when that much data has arrived",
)
NON_ASCII_TARGET_400 = Normalisation(
    "non-ascii-target-400", "A non-ASCII request target starting with `//` is accepted"
)
TARGET_FORMS_400 = Normalisation(
    "target-forms-by-method", "`*` accepted with any method; any target form with any method"
)
REQUEST_LINE_414 = Normalisation(
    "request-line-414", "Long request lines are limited only by `max_request_header_size`"
)
HEADER_COUNT_431 = Normalisation("header-count-431", "No limit on the number of header fields")
STATUS_FORMAT_500 = Normalisation("status-format-checked", "A status string's format is not checked")
HEADER_CHECKS_500 = Normalisation(
    "response-header-checks", "Header names are not checked beyond CR/LF; control characters in values are sent"
)
EXPECT_NO_BODY = Normalisation(
    "expect-100-without-body-served", "`Expect: 100-continue` with no body hangs the connection"
)
HALF_CLOSE = Normalisation(
    "half-close-still-answered",
    "A client that half-closes after its request can lose the response when lookahead > 0 (if the application is still running when the close arrives)",
)
CONNECTION_LIMIT = Normalisation(
    "connection-limit-counts-clients", "`connection_limit` defaults to 100 and counts listeners too"
)
DISCONNECT_NOTICED = Normalisation(
    "disconnects-noticed-while-running",
    "Client disconnects are noticed only when writing (unless `channel_request_lookahead` > 0)",
)

#: Applied to the Waitress view in every comparison, after the scenario's own (and
#: HEADER_CASE to both views, last).
ALWAYS = [HEADER_CASE, DEFAULT_IDENT, TAPSTER_DISCONNECTED, HEAD_BODY, KEEPALIVE_CHUNKED]

ALL_NORMALISATIONS = [
    HEADER_CASE,
    DEFAULT_IDENT,
    TAPSTER_DISCONNECTED,
    HEAD_BODY,
    KEEPALIVE_CHUNKED,
    LIST_CONTENT_LENGTH,
    EMPTY_BODY_CL0,
    PROXY_ERROR_LENGTH,
    EARLY_CONTINUE,
    CONNECTION_TOKENS,
    HTTP1X,
    ABSOLUTE_FORM_HOST,
    ROOT_PREFIX,
    APP_FRAMES_ONLY,
    EMPTY_IDENT_NO_VIA,
    LF_ONLY_400,
    OBS_FOLD_400,
    VERSION_TRAILING_SPACE_400,
    HOST_VALUE_400,
    HTTP2_505,
    HTTP09_400,
    TE_AND_CL_400,
    TE_HTTP10_400,
    REPEATED_SINGLETON_400,
    CHUNKED_TWICE_501,
    EMPTY_CHUNK_LINE_400,
    CHUNK_EXT_SKIPPED,
    HUGE_CHUNK_413,
    NON_ASCII_TARGET_400,
    TARGET_FORMS_400,
    REQUEST_LINE_414,
    HEADER_COUNT_431,
    STATUS_FORMAT_500,
    HEADER_CHECKS_500,
    EXPECT_NO_BODY,
    HALF_CLOSE,
    CONNECTION_LIMIT,
    DISCONNECT_NOTICED,
]

#: README rows this suite does not compare (no Normalisation), and why. A test checks
#: that every README row is either cited by a Normalisation or listed here.
NOT_COMPARED = {
    "A request head has no deadline (only `channel_timeout` idle)": "header_timeout is 30 s, too slow for this suite",
    "Output above `outbuf_high_watermark` blocks the worker thread": "the worker pool's internals, not the wire",
    "SIGTERM kills the process at once; Ctrl-C stops after the running tasks (5 s)": "process lifecycle: tests/test_cli.py",
    "`python -m waitress` always exits 0": "process lifecycle: tests/test_cli.py",
    '"Task queue depth is N" is logged on every queued request while threads are busy': "a timing-dependent log line",
    "An application that writes or yields `str` gets a `200` head sent, then the connection closed": "Tapster's 500: tests/test_wsgi.py (non-bytes-list, non-bytes-gen, write-str)",
    "Memory and temporary files are bounded per connection only (1,000 stalled uploads of 512 KiB pin 512 MB)": "server-wide resource use, not the wire: tests/test_reliability.py",
}


def readme_rows() -> list[str]:
    """The Waitress column of every row of README's "Differences from Waitress" table."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    section = text.split("## Differences from Waitress", 1)[1]
    rows = []
    for line in section.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells and cells[0] != "Waitress":
                rows.append(cells[0])
    return rows


# ---------------------------------------------------------------------------------------
# Harness exclusions (not behaviour): ports and object identities
# ---------------------------------------------------------------------------------------

#: wsgi.* (and waitress.*) values that are Python objects: only their presence and the
#: facts the app reports about them (callable, is sys.stderr, seekable...) compare.
OBJECT_KEYS = (
    "wsgi.input",
    "wsgi.errors",
    "wsgi.file_wrapper",
    "waitress.client_disconnected",
    "tapster.client_disconnected",
)


def _harness(view: View, out: Outcome) -> None:
    for resp in view.responses:
        if resp["status"] == 200 and _header(resp, "content-type") == "application/json":
            # The echo route's body names the ports, so its length varies; the body
            # itself is compared as the parsed "app" below.
            for i, (k, v) in enumerate(resp["headers"]):
                if k.lower() == "content-length":
                    resp["headers"][i] = (k, "<length of environ dump>")
        app = resp["app"]
        if app is None:
            continue
        env = app["environ"]
        for key in OBJECT_KEYS:
            if isinstance(env.get(key), str) and env[key].startswith("<object "):
                env[key] = "<object>"
        # The client's own port and the server's bound port are per process; anything
        # else in these keys (a port a trusted proxy sent) is compared as it is.
        if env.get("REMOTE_PORT") in {str(p) for p in out.client_ports}:
            env["REMOTE_PORT"] = "<client port>"
        if env.get("SERVER_PORT") == str(out.server_port):
            env["SERVER_PORT"] = "<bound port>"
        resp["body"] = b"<environ dump, compared as 'app'>"


def compare(
    pair: ServerPair,
    steps: list[Step],
    w_out: Outcome,
    t_out: Outcome,
    declared: Iterable[Normalisation] = (),
) -> tuple[View, View, list[str]]:
    """The two views after the harness exclusions, the always-on README normalisations
    and the scenario's declared ones (applied to the Waitress view)."""
    ctx = Context(pair, parse_requests(steps))
    w, t = view_of(w_out), view_of(t_out)
    _harness(w, w_out)
    _harness(t, t_out)
    for norm in [*declared, *(n for n in ALWAYS if n is not HEADER_CASE)]:
        if norm.apply is not None:
            norm.apply(w, ctx)
    HEADER_CASE.apply(w, ctx)  # type: ignore[misc]
    HEADER_CASE.apply(t, ctx)  # type: ignore[misc]
    return w, t, ctx.applied


def diff(w: Any, t: Any, path: str = "") -> list[str]:
    """Human-readable differences between two nested structures."""
    out: list[str] = []
    if isinstance(w, dict) and isinstance(t, dict):
        for key in sorted(set(w) | set(t), key=str):
            sub = f"{path}[{key!r}]"
            if key not in w:
                out.append(f"{sub}: waitress=<absent> tapster={t[key]!r}")
            elif key not in t:
                out.append(f"{sub}: waitress={w[key]!r} tapster=<absent>")
            else:
                out.extend(diff(w[key], t[key], sub))
    elif isinstance(w, list) and isinstance(t, list) and path.endswith("['headers']"):
        if w != t:
            wo = [h for h in w if h not in t]
            to = [h for h in t if h not in w]
            out.append(f"{path}: only waitress={wo!r} only tapster={to!r}")
    elif isinstance(w, list) and isinstance(t, list) and len(w) == len(t):
        for i, (a, b) in enumerate(zip(w, t)):
            out.extend(diff(a, b, f"{path}[{i}]"))
    elif w != t:
        wr, tr = repr(w), repr(t)
        if len(wr) > 600:
            wr = wr[:600] + "..."
        if len(tr) > 600:
            tr = tr[:600] + "..."
        out.append(f"{path}: waitress={wr} tapster={tr}")
    return out


def mismatches(
    pair: ServerPair,
    steps: list[Step],
    declared: Iterable[Normalisation] = (),
) -> tuple[list[str], list[str], Outcome, Outcome]:
    """Runs `steps` against both servers; returns the differences left after the
    normalisations, the normalisations that applied, and both raw outcomes."""
    w_out, t_out = run_both(pair, steps)
    w, t, applied = compare(pair, steps, w_out, t_out, declared)
    return diff(w.as_dict(), t.as_dict()), applied, w_out, t_out


def mismatch_report(pair: ServerPair, problems: list[str], applied: list[str]) -> str:
    return (
        f"parity mismatch [{pair.name}: {' '.join(pair.options)}]"
        + (f" (normalised: {', '.join(sorted(set(applied)))})" if applied else "")
        + "\n  "
        + "\n  ".join(problems)
    )


def assert_same(
    pair: ServerPair,
    steps: list[Step],
    declared: Iterable[Normalisation] = (),
) -> tuple[Outcome, Outcome]:
    """Runs `steps` against both servers and asserts the normalised views are equal."""
    problems, applied, w_out, t_out = mismatches(pair, steps, declared)
    if problems:
        raise AssertionError(mismatch_report(pair, problems, applied))
    return w_out, t_out


def log_problems(pair: ServerPair, present: Iterable[str], absent: Iterable[str]) -> list[str]:
    """Log lines (regexes) both servers must have written, or must not have."""
    out = []
    for pattern in present:
        for side in ("waitress", "tapster"):
            try:
                pair.wait_for_log(side, pattern, timeout=3)
            except AssertionError:
                out.append(f"log: {side} wrote no line matching {pattern!r}")
    absent = list(absent)
    if absent:
        time.sleep(0.2)
    for pattern in absent:
        for side in ("waitress", "tapster"):
            lines = [line for line in pair.log(side).splitlines() if re.search(pattern, line)]
            if lines:
                out.append(f"log: {side} wrote {lines[0]!r}, matching {pattern!r}")
    return out

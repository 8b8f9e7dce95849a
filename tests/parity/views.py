"""What the parity harness compares: each request of a script as it was sent
(`RequestInfo`), and each server's `Outcome` reduced to a `View` (status lines,
headers, bodies, the close, what came after, and the environ the app saw), with the
helpers the normalisations edit a view's responses with.

A few things can never be equal between two processes: the Date, the ports, the type
names of wsgi.* objects. Those are HARNESS exclusions, made here when a view is taken;
they are not differences in behaviour (those are normalisations.py's).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from http_reader import Response

from .scripts import Outcome, ReadFinal, Step


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


def _environ_of(resp: Response) -> dict[str, Any] | None:
    if resp.status != 200 or (resp.header("Content-Type") or "") != "application/json":
        return None
    try:
        data = json.loads(resp.body)
    except ValueError:
        return None
    return data if isinstance(data, dict) and "environ" in data else None


def view_of(out: Outcome) -> View:
    """What is compared of `out`, after the harness exclusions."""
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
    view = View(responses, [list(i) for i in out.interim], out.closed, out.leftover, out.problem)
    _harness(view, out)
    return view


def drop_header(resp: dict[str, Any], name: str, value: str | None = None) -> bool:
    """Removes field `name` (only where its value is `value`, if given) from a view's
    response; whether there was one."""
    name = name.lower()
    before = len(resp["headers"])
    resp["headers"] = [
        (k, v)
        for k, v in resp["headers"]
        if not (k.lower() == name and (value is None or v.lower() == value.lower()))
    ]
    return len(resp["headers"]) != before


def set_header(resp: dict[str, Any], name: str, value: str) -> None:
    """Replaces field `name` of a view's response by `name: value` (put last)."""
    drop_header(resp, name)
    resp["headers"].append((name, value))


def view_header(resp: dict[str, Any], name: str) -> str | None:
    """The first field `name` (given in lower case) of a view's response, else None."""
    for k, v in resp["headers"]:
        if k.lower() == name:
            return v
    return None


# Harness exclusions (not behaviour): ports and object identities

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
        if resp["status"] == 200 and view_header(resp, "content-type") == "application/json":
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

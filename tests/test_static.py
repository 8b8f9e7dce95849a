"""Static file mounts (`--static /prefix=DIRECTORY` and the `--static-*` options), end to
end through the real command line, raw sockets and curl.

A request under a mount's prefix (matched byte for byte on the raw path, at a segment
boundary, the longest prefix winning) is answered by the server from its I/O thread
with sendfile(2): the application (apps.static_probe, which records every request it
sees) never sees it. Covered: the response head (types, length, validators, caching,
Vary), 404 and 405 pages on a kept-alive connection, HEAD, HTTP/1.0, keep-alive and
pipelining, single ranges (and what is not one), If-Range, If-None-Match and
If-Modified-Since, precompressed variants chosen by Accept-Encoding, index.html and
its redirect, fallthrough to the application, dotfiles, symlinks (inside, outside,
followed on request), a corpus of traversal attempts aimed at a secret outside the
root whose opening is watched with inotify, clients that leave mid-file, a file
truncated while it is sent, static files served while the only application thread
is busy, workers, the metrics and the JSON access log's `handler` (and `aborted`),
bad option values, and the same options given to create_server().
"""

from __future__ import annotations

import ctypes
import email.utils
import gzip
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from balancers import on_a_free_port
from prometheus import metrics_text, total, wait_listening, wait_total
from support import TESTS_DIR, RawConn, Response, ServerProcess, fd_count
from support import tests_env as child_env  # not collected as a test

APP = "apps.static_probe:app"
SECRET = b"TOP-SECRET: the bytes no static request may ever return\n"
OUTSIDE_SECRET = b"OUTSIDE-SECRET: beside the root, never under it\n"
PASSWD_MARK = b"root:x:0:0"
IMMUTABLE = "public, max-age=31536000, immutable"
JS_TYPE = "text/javascript; charset=utf-8"


# --- the directory tree ---------------------------------------------------------------------


@dataclass
class Tree:
    """base/public (the root of /static), base/admin area (of /static/admin),
    base/secret.txt and base/outside/secret.txt (outside both)."""

    base: Path
    public: Path
    admin: Path
    outside: Path
    secret: Path  # base/secret.txt
    outside_secret: Path  # base/outside/secret.txt

    def bytes(self, relative: str) -> bytes:
        return (self.public / relative).read_bytes()


def build_tree(base: Path) -> Tree:
    public = base / "public"
    admin = base / "admin area"  # a space in the directory: --static keeps it
    outside = base / "outside"
    for d in (public, admin, outside, public / "sub", public / "docs", public / "emptydir", public / ".git", public / "admin"):
        d.mkdir(parents=True)
    secret = base / "secret.txt"
    secret.write_bytes(SECRET)
    outside_secret = outside / "secret.txt"
    outside_secret.write_bytes(OUTSIDE_SECRET)

    files: dict[str, bytes] = {
        "app.css": b"body { color: #123456; }\n",
        "app.js": b"console.log('tapster static');\n",
        "logo.png": b"\x89PNG\r\n\x1a\n" + os.urandom(300),
        "blob.qqq": os.urandom(777),
        "empty.txt": b"",
        "with space.txt": b"a name with a space\n",
        "café.txt": "a UTF-8 name: café\n".encode(),
        "hashed.3f9c2e1b7a.css": b".hashed { }\n",
        "sub/hashed.3f9c2e1b7a.css": b".sub-hashed { }\n",
        "administrator.css": b"/* public, beside the admin prefix */\n",
        "admin/only_public.txt": b"only in public/admin\n",
        "range.bin": os.urandom(100_000),
        "big.bin": os.urandom(1_000_003),
        "docs/index.html": b"<!doctype html><title>docs</title>\n",
        "docs/guide.txt": b"the guide\n",
        "emptydir/listing-would-show-me.txt": b"x\n",
        "sub/page.txt": b"sub page\n",
        ".env": b"SECRET_KEY=dotenv\n",
        ".git/config": b"[core] dotgit\n",
        "sub/.hidden": b"hidden file\n",
        # Precompressed variants: fake ones (each recognisable), all three codings.
        "bundle.js": b"/* identity bundle */ " + b"x" * 500 + b"\n",
        "bundle.js.br": b"BROTLI-VARIANT" * 3,
        "bundle.js.zst": b"ZSTD-VARIANT" * 5,
        "bundle.js.gz": b"GZIP-VARIANT" * 7,
        # Only a gzip variant.
        "only_gz.txt": b"only gzip beside me " * 20 + b"\n",
        "only_gz.txt.gz": b"ONLY-GZ-VARIANT",
    }
    for name, data in files.items():
        (public / name).write_bytes(data)
    # Real compressed variants (no .br) for curl --compressed.
    site = b"body { margin: 0 }\n" * 200
    (public / "site.css").write_bytes(site)
    (public / "site.css.gz").write_bytes(gzip.compress(site))
    subprocess.run(["zstd", "-q", "-19", str(public / "site.css"), "-o", str(public / "site.css.zst")], check=True)

    (admin / "app.css").write_bytes(b"/* the admin mount's app.css */\n")
    (admin / "panel.txt").write_bytes(b"admin panel\n")

    # Symlinks: inside (relative, one through ..), a directory, and three ways out.
    os.symlink("app.css", public / "in_link.css")
    os.symlink("../app.css", public / "sub" / "up.css")
    os.symlink("sub", public / "linkdir")
    os.symlink("../outside/secret.txt", public / "out_rel")
    os.symlink(str(outside_secret), public / "out_abs")
    os.symlink("../outside", public / "out_dir")
    os.symlink("../secret.txt", public / "out_parent")
    os.mkfifo(public / "fifo")
    return Tree(base, public, admin, outside, secret, outside_secret)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    return build_tree(tmp_path_factory.mktemp("static"))


def start(*args: str) -> ServerProcess:
    return ServerProcess(APP, *args)


@pytest.fixture(scope="module")
def srv(tree: Tree) -> Iterator[ServerProcess]:
    """The default mounts: /static and /static/admin (given in that order), and an
    immutable pattern anchored at the path below the prefix."""
    server = start(
        f"--static=/static={tree.public}",
        f"--static=/static/admin={tree.admin}",
        r"--static-immutable-pattern=^hashed\.[0-9a-f]{8,}\.css$",
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def index_srv(tree: Tree) -> Iterator[ServerProcess]:
    server = start(f"--static=/static={tree.public}", f"--static=/manual={tree.public / 'docs'}", "--static-index")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fallthrough_srv(tree: Tree) -> Iterator[ServerProcess]:
    server = start(f"--static=/static={tree.public}", "--static-fallthrough")
    yield server
    server.stop()


@dataclass
class Observed:
    """A server with a metrics listener and a JSON access log."""

    srv: ServerProcess
    metrics: tuple[str, int]
    log: Path


@pytest.fixture
def observed(tree: Tree, tmp_path: Path) -> Iterator[Observed]:
    log = tmp_path / "access.json"

    def start_on(port: int) -> Observed:
        server = start(
            f"--static=/static={tree.public}",
            f"--metrics-listen=127.0.0.1:{port}",
            f"--access-log={log}",
            "--access-log-format=json",
        )
        return Observed(server, ("127.0.0.1", port), log)

    obs = on_a_free_port(start_on)
    wait_listening(obs.metrics)
    yield obs
    obs.srv.stop()


# --- helpers ---------------------------------------------------------------------------------


def build(method: str, target: str | bytes, *headers: str, version: str = "HTTP/1.1", close: bool = True) -> bytes:
    """A raw request; `target` goes on the wire exactly as given."""
    if isinstance(target, str):
        target = target.encode("latin-1")
    lines = [f"{method} ".encode() + target + f" {version}".encode()]
    if version == "HTTP/1.1":
        lines.append(b"Host: t")
    lines += [h.encode("latin-1") for h in headers]
    if close and version == "HTTP/1.1":
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def fetch(server: ServerProcess, target: str | bytes, *headers: str, method: str = "GET", version: str = "HTTP/1.1") -> Response:
    """One request on a new connection (Connection: close); the response, checked to be
    followed by nothing but the server's close."""
    with server.connect() as conn:
        conn.send(build(method, target, *headers, version=version))
        resp = conn.read_response(head_request=method == "HEAD")
        rest = conn.read_all()
    assert rest == b"", f"bytes after the {resp.status} response to {method} {target!r}: {rest[:200]!r}"
    return resp


def seen(server: ServerProcess) -> list[list[str]]:
    """Every request the application has seen: [method, PATH_INFO, QUERY_STRING]."""
    resp = fetch(server, "/__seen__")
    assert resp.status == 200
    return json.loads(resp.body)


def etag_of(path: Path) -> str:
    st = os.stat(path)
    return f'"{st.st_size:x}-{st.st_mtime_ns:x}-{st.st_ino:x}"'


def http_date(secs: float) -> str:
    return email.utils.formatdate(int(secs), usegmt=True)


def last_modified(path: Path) -> str:
    return http_date(os.stat(path).st_mtime)


DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def rfc850_date(secs: float) -> str:
    """The obsolete RFC 850 form, `Sunday, 06-Nov-94 08:49:37 GMT`."""
    t = time.gmtime(int(secs))
    return f"{DAYS[t.tm_wday]}, {t.tm_mday:02d}-{MONTHS[t.tm_mon - 1]}-{t.tm_year % 100:02d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"


def asctime_date(secs: float) -> str:
    """The obsolete asctime() form, `Sun Nov  6 08:49:37 1994`."""
    t = time.gmtime(int(secs))
    return f"{DAYS[t.tm_wday][:3]} {MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {t.tm_year}"


def assert_not_found(resp: Response) -> None:
    assert resp.status == 404, (resp.status, resp.body[:200])
    assert resp.body == b"Not Found\r\n"
    assert resp.header("Content-Type") == "text/plain; charset=utf-8"
    assert resp.header("Content-Length") == "11"


def app_answer(method: str, path: str) -> bytes:
    return f"app saw {method} {path}".encode("latin-1")


def wait_until(cond: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(what())
        time.sleep(0.02)


class Inotify:
    """inotify(7) through libc: IN_OPEN and IN_ACCESS events of the watched paths."""

    IN_ACCESS = 0x1
    IN_OPEN = 0x20

    def __init__(self) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.names: dict[int, str] = {}

    def watch(self, path: Path) -> None:
        wd = self.libc.inotify_add_watch(self.fd, os.fsencode(path), self.IN_ACCESS | self.IN_OPEN)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")
        self.names[wd] = str(path)

    def events(self) -> list[tuple[str, str, int]]:
        """(watched path, name inside it or "", mask) of every event so far."""
        found: list[tuple[str, str, int]] = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return found
            offset = 0
            while offset < len(data):
                wd, mask, _cookie, length = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16 : offset + 16 + length].rstrip(b"\0").decode(errors="replace")
                found.append((self.names.get(wd, "?"), name, mask))
                offset += 16 + length

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def secret_watch(tree: Tree) -> Iterator[Callable[[], list[tuple[str, str, int]]]]:
    """Watches both secrets and the directories holding them; yields a function
    returning the events that concern a secret (opened or read, by anyone)."""
    ino = Inotify()
    for path in (tree.secret, tree.outside_secret, tree.base, tree.outside):
        ino.watch(path)

    def secret_events() -> list[tuple[str, str, int]]:
        events = ino.events()
        return [
            e
            for e in events
            if e[0] in (str(tree.secret), str(tree.outside_secret), str(tree.outside)) or (e[0] == str(tree.base) and e[1] == "secret.txt")
        ]

    try:
        yield secret_events
    finally:
        ino.close()


def assert_watch_works(tree: Tree, secret_events: Callable[[], list[tuple[str, str, int]]]) -> None:
    """The control: reading the secrets ourselves shows up as events."""
    assert tree.secret.read_bytes() == SECRET
    assert tree.outside_secret.read_bytes() == OUTSIDE_SECRET
    events = secret_events()
    masks: dict[tuple[str, str], int] = {}
    for path, name, mask in events:
        masks[(path, name)] = masks.get((path, name), 0) | mask
    assert any(m & Inotify.IN_OPEN for m in masks.values()), events
    assert any(m & Inotify.IN_ACCESS for m in masks.values()), events
    assert (str(tree.secret), "") in masks and (str(tree.outside_secret), "") in masks, events


# --- the response head ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "relative", "content_type"),
    [
        ("/static/app.css", "app.css", "text/css; charset=utf-8"),
        ("/static/app.js", "app.js", JS_TYPE),
        ("/static/logo.png", "logo.png", "image/png"),
        ("/static/blob.qqq", "blob.qqq", "application/octet-stream"),
        ("/static/docs/guide.txt", "docs/guide.txt", "text/plain; charset=utf-8"),
        ("/static/docs/index.html", "docs/index.html", "text/html; charset=utf-8"),
        ("/static/with%20space.txt", "with space.txt", "text/plain; charset=utf-8"),
        ("/static/empty.txt", "empty.txt", "text/plain; charset=utf-8"),
        ("/static/app.css?v=3", "app.css", "text/css; charset=utf-8"),
        ("http://t/static/app.css", "app.css", "text/css; charset=utf-8"),  # absolute-form
        ("/static/caf%C3%A9.txt", "café.txt", "text/plain; charset=utf-8"),
    ],
)
def test_a_file_is_served_with_its_head(srv: ServerProcess, tree: Tree, target: str, relative: str, content_type: str) -> None:
    path = tree.public / relative
    resp = fetch(srv, target)
    assert resp.status == 200
    assert resp.body == path.read_bytes()
    assert resp.framing == "content-length"
    assert resp.header("Content-Type") == content_type
    assert resp.header("Content-Length") == str(path.stat().st_size)
    assert resp.header("Last-Modified") == last_modified(path)
    assert resp.header("ETag") == etag_of(path)
    assert resp.header("Accept-Ranges") == "bytes"
    assert resp.header("Vary") == "Accept-Encoding"
    assert resp.header("Cache-Control") == "public, max-age=60"
    assert resp.header("Content-Encoding") is None
    assert resp.header("Transfer-Encoding") is None
    assert resp.header("Server") == "tapster"


def test_the_etag_is_strong_and_changes_with_the_file(srv: ServerProcess, tree: Tree) -> None:
    path = tree.public / "changing.txt"
    path.write_bytes(b"version 1\n")
    first = fetch(srv, "/static/changing.txt")
    first_tag = first.header("ETag")
    assert first_tag is not None and first_tag == etag_of(path) and not first_tag.startswith("W/")
    # Same size, new contents and a new (earlier: a rollback) modification time.
    path.write_bytes(b"version 2\n")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - 5_000_000_000))
    second = fetch(srv, "/static/changing.txt", f"If-None-Match: {first_tag}")
    assert second.status == 200 and second.body == b"version 2\n"
    assert second.header("ETag") == etag_of(path) != first_tag
    assert second.header("Last-Modified") == last_modified(path)


def test_last_modified_is_never_in_the_future(srv: ServerProcess, tree: Tree) -> None:
    path = tree.public / "future.txt"
    path.write_bytes(b"from a fast clock\n")
    os.utime(path, (time.time() + 86_400, time.time() + 86_400))
    resp = fetch(srv, "/static/future.txt")
    assert resp.status == 200
    served = email.utils.parsedate_to_datetime(resp.header("Last-Modified") or "")
    sent = email.utils.parsedate_to_datetime(resp.header("Date") or "")
    assert served <= sent, (served, sent)
    # Redeployed a little later with a true clock, the file is newer than what the
    # client was told: a revalidation by date gets it (with the future date it had
    # been told, it would be 304 for a day).
    time.sleep(1.1)
    path.write_bytes(b"from a true clock\n")
    again = fetch(srv, "/static/future.txt", f"If-Modified-Since: {resp.header('Last-Modified')}")
    assert again.status == 200 and again.body == b"from a true clock\n", again.raw_head


# --- who answers: prefixes and the application -------------------------------------------------


def test_the_application_never_sees_a_request_under_a_prefix(srv: ServerProcess, tree: Tree) -> None:
    before = seen(srv)
    etag = etag_of(tree.public / "app.css")
    answers = [
        (fetch(srv, "/static/app.css"), 200),
        (fetch(srv, "/static/app.css", method="HEAD"), 200),
        (fetch(srv, "/static/nope.css"), 404),
        (fetch(srv, "/static/app.css", method="POST"), 405),
        (fetch(srv, "/static/app.css", f"If-None-Match: {etag}"), 304),
        (fetch(srv, "/static/range.bin", "Range: bytes=0-9"), 206),
        (fetch(srv, "/static/range.bin", "Range: bytes=100000-"), 416),
        (fetch(srv, "/static/.env"), 404),
        (fetch(srv, "/static/docs/"), 404),
        (fetch(srv, "/static"), 404),
        (fetch(srv, "/static/"), 404),
        (fetch(srv, "/static/../secret.txt"), 404),
        (fetch(srv, "/static/admin/panel.txt"), 200),
    ]
    assert [r.status for r, _ in answers] == [want for _, want in answers]
    assert seen(srv) == before


@pytest.mark.parametrize(
    ("target", "path_info"),
    [
        ("/staticfoo/app.css", "/staticfoo/app.css"),
        ("/staticfoo", "/staticfoo"),
        ("/Static/app.css", "/Static/app.css"),
        # Matched on the raw path: an escaped letter is not the prefix (the app sees it decoded).
        ("/stat%69c/app.css", "/static/app.css"),
        ("/%73tatic/app.css", "/static/app.css"),
        ("/", "/"),
        ("/app.css", "/app.css"),
    ],
)
def test_a_path_not_under_a_prefix_reaches_the_application(srv: ServerProcess, target: str, path_info: str) -> None:
    before = seen(srv)
    resp = fetch(srv, target)
    assert resp.status == 200
    assert resp.body == app_answer("GET", path_info)
    assert seen(srv) == before + [["GET", path_info, ""]]


def test_the_longest_prefix_wins(srv: ServerProcess, tree: Tree) -> None:
    # /static/admin was given after /static, and still wins for its paths.
    resp = fetch(srv, "/static/admin/app.css")
    assert resp.status == 200 and resp.body == (tree.admin / "app.css").read_bytes()
    assert resp.header("ETag") == etag_of(tree.admin / "app.css")
    assert fetch(srv, "/static/admin/panel.txt").body == b"admin panel\n"
    # public/admin/ is hidden behind the admin mount: no falling back to /static.
    assert_not_found(fetch(srv, "/static/admin/only_public.txt"))
    # A prefix ends at a segment boundary: /static/administrator.css is /static's.
    resp = fetch(srv, "/static/administrator.css")
    assert resp.status == 200 and resp.body == tree.bytes("administrator.css")
    assert fetch(srv, "/static/app.css").body == tree.bytes("app.css")


def test_a_missing_file_is_a_404_on_a_connection_kept_alive(srv: ServerProcess, tree: Tree) -> None:
    with srv.connect() as conn:
        conn.send(build("GET", "/static/missing.css", close=False))
        resp = conn.read_response()
        assert_not_found(resp)
        assert (resp.header("Connection") or "").lower() != "close"
        conn.send(build("GET", "/static/app.css", close=False))
        resp = conn.read_response()
        assert resp.status == 200 and resp.body == tree.bytes("app.css")
        assert not conn.is_closed(0.2)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_are_405_with_allow(srv: ServerProcess, tree: Tree, method: str) -> None:
    before = seen(srv)
    with srv.connect() as conn:
        conn.send(build(method, "/static/app.css", close=False))
        resp = conn.read_response()
        assert resp.status == 405
        assert resp.header("Allow") == "GET, HEAD"
        assert resp.body == b"Method Not Allowed\r\n"
        assert resp.header("Content-Length") == str(len(resp.body))
        conn.send(build("GET", "/static/app.css", close=False))
        again = conn.read_response()
        assert again.status == 200 and again.body == tree.bytes("app.css")
    assert seen(srv) == before


def test_a_refused_request_body_is_read_not_taken_for_a_request(srv: ServerProcess, tree: Tree) -> None:
    before = seen(srv)
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"
    with srv.connect() as conn:
        conn.send(build("POST", "/static/app.css", f"Content-Length: {len(smuggled)}", close=False) + smuggled)
        assert conn.read_response().status == 405
        conn.send(build("GET", "/static/app.css", close=False))
        resp = conn.read_response()
        assert resp.status == 200 and resp.body == tree.bytes("app.css")
        assert not conn.is_closed(0.3)
    assert seen(srv) == before


# --- HEAD, HTTP/1.0, keep-alive, pipelining -----------------------------------------------------


def test_head_has_the_heads_of_get_and_no_body(srv: ServerProcess, tree: Tree) -> None:
    for target in ("/static/big.bin", "/static/app.css", "/static/missing.css"):
        with srv.connect() as conn:
            conn.send(build("HEAD", target, close=False) + build("GET", target, close=True))
            head = conn.read_response(head_request=True)
            get = conn.read_response()  # a body after the HEAD would break this one
            assert get.version == "HTTP/1.1" and get.status == head.status, (head.raw_head, get.raw_head)
            assert conn.read_all() == b""
        assert head.body == b""
        strip = lambda r: [(k, v) for k, v in r.headers if k.lower() not in ("date", "connection")]  # noqa: E731
        assert strip(head) == strip(get), (head.raw_head, get.raw_head)
    # HEAD with a Range is not ranged (Range applies to GET only).
    resp = fetch(srv, "/static/range.bin", "Range: bytes=0-9", method="HEAD")
    assert resp.status == 200 and resp.header("Content-Length") == "100000" and resp.header("Content-Range") is None


def test_http_1_0_is_answered_and_kept_alive_only_when_asked(srv: ServerProcess, tree: Tree) -> None:
    with srv.connect() as conn:
        conn.send(b"GET /static/app.css HTTP/1.0\r\n\r\n")
        resp = conn.read_response()
        assert resp.status == 200 and resp.body == tree.bytes("app.css")
        assert resp.version in ("HTTP/1.0", "HTTP/1.1")
        assert conn.is_closed(2.0)
    with srv.connect() as conn:
        conn.send(b"GET /static/app.css HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        resp = conn.read_response()
        assert resp.status == 200 and resp.body == tree.bytes("app.css")
        assert (resp.header("Connection") or "").lower() == "keep-alive"
        assert not conn.is_closed(0.3)
        conn.send(b"HEAD /static/logo.png HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        resp = conn.read_response(head_request=True)
        assert resp.status == 200 and resp.header("Content-Length") == str(len(tree.bytes("logo.png")))
        conn.send(b"GET /static/missing HTTP/1.0\r\n\r\n")
        assert_not_found(conn.read_response())
        assert conn.is_closed(2.0)


def test_many_static_requests_on_one_connection(srv: ServerProcess, tree: Tree) -> None:
    etag = etag_of(tree.public / "app.css")
    range_data = tree.bytes("range.bin")
    with srv.connect() as conn:
        for i in range(8):
            conn.send(build("GET", "/static/app.css", close=False))
            assert conn.read_response().body == tree.bytes("app.css")
            conn.send(build("GET", "/static/range.bin", f"Range: bytes={i}-{i + 99}", close=False))
            resp = conn.read_response()
            assert resp.status == 206 and resp.body == range_data[i : i + 100]
            conn.send(build("GET", "/static/app.css", f"If-None-Match: {etag}", close=False))
            assert conn.read_response().status == 304
            conn.send(build("GET", f"/static/missing{i}", close=False))
            assert_not_found(conn.read_response())
            conn.send(build("HEAD", "/static/big.bin", close=False))
            assert conn.read_response(head_request=True).header("Content-Length") == "1000003"
        conn.send(build("GET", "/static/big.bin", close=True))
        resp = conn.read_response()
        assert resp.body == tree.bytes("big.bin")
        assert conn.read_all() == b""


def test_pipelined_static_and_application_requests_answer_in_order(srv: ServerProcess, tree: Tree) -> None:
    batch = (
        build("GET", "/static/big.bin", close=False)
        + build("GET", "/first", close=False)
        + build("GET", "/static/app.css", close=False)
        + build("GET", "/static/nope", close=False)
        + build("GET", "/second", close=False)
        + build("GET", "/static/logo.png", close=True)
    )
    with srv.connect() as conn:
        conn.send(batch)
        bodies = [conn.read_response().body for _ in range(6)]
        assert conn.read_all() == b""
    assert bodies == [
        tree.bytes("big.bin"),
        app_answer("GET", "/first"),
        tree.bytes("app.css"),
        b"Not Found\r\n",
        app_answer("GET", "/second"),
        tree.bytes("logo.png"),
    ]


def test_concurrent_downloads_are_each_whole(srv: ServerProcess, tree: Tree) -> None:
    want = tree.bytes("big.bin")
    results: list[bytes | BaseException] = []
    lock = threading.Lock()

    def download() -> None:
        try:
            got: bytes | BaseException = fetch(srv, "/static/big.bin").body
        except BaseException as err:  # noqa: BLE001 - reported below
            got = err
        with lock:
            results.append(got)

    threads = [threading.Thread(target=download) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 12
    assert all(r == want for r in results), [type(r) if not isinstance(r, bytes) else len(r) for r in results]


# --- caching --------------------------------------------------------------------------------


def test_the_immutable_pattern_is_matched_below_the_prefix(srv: ServerProcess) -> None:
    assert fetch(srv, "/static/hashed.3f9c2e1b7a.css").header("Cache-Control") == IMMUTABLE
    # `^hashed` is anchored at the path below the prefix, so sub/hashed... does not match.
    assert fetch(srv, "/static/sub/hashed.3f9c2e1b7a.css").header("Cache-Control") == "public, max-age=60"
    assert fetch(srv, "/static/app.css").header("Cache-Control") == "public, max-age=60"


@pytest.mark.parametrize(("max_age", "cache_control"), [("3600", "public, max-age=3600"), ("0", "no-cache")])
def test_static_max_age(tree: Tree, max_age: str, cache_control: str) -> None:
    server = start(f"--static=/static={tree.public}", f"--static-max-age={max_age}", r"--static-immutable-pattern=\.[0-9a-f]{8,}\.")
    try:
        assert fetch(server, "/static/app.css").header("Cache-Control") == cache_control
        etag = etag_of(tree.public / "app.css")
        not_modified = fetch(server, "/static/app.css", f"If-None-Match: {etag}")
        assert not_modified.status == 304 and not_modified.header("Cache-Control") == cache_control
        assert fetch(server, "/static/sub/hashed.3f9c2e1b7a.css").header("Cache-Control") == IMMUTABLE
    finally:
        server.stop()


# --- ranges ---------------------------------------------------------------------------------

SIZE = 100_000


@pytest.mark.parametrize(
    ("value", "span"),
    [
        ("bytes=0-0", (0, 0)),
        ("bytes=0-99", (0, 99)),
        ("bytes=-500", (SIZE - 500, SIZE - 1)),
        ("bytes=1000-", (1000, SIZE - 1)),
        (f"bytes={SIZE - 1}-", (SIZE - 1, SIZE - 1)),
        (f"bytes={SIZE - 1}-{SIZE - 1}", (SIZE - 1, SIZE - 1)),
        (f"bytes={SIZE - 10}-{SIZE + 5000}", (SIZE - 10, SIZE - 1)),
        ("bytes=-1000000", (0, SIZE - 1)),
        ("bytes=0-99999999999999999999999", (0, SIZE - 1)),
        ("Bytes=5-9", (5, 9)),
        ("bytes=40000-40000, ", (40000, 40000)),
    ],
)
def test_one_range_is_a_206(srv: ServerProcess, tree: Tree, value: str, span: tuple[int, int]) -> None:
    data = tree.bytes("range.bin")
    first, last = span
    resp = fetch(srv, "/static/range.bin", f"Range: {value}")
    assert resp.status == 206, (value, resp.raw_head)
    assert resp.header("Content-Range") == f"bytes {first}-{last}/{SIZE}"
    assert resp.header("Content-Length") == str(last - first + 1)
    assert resp.body == data[first : last + 1]
    assert resp.header("ETag") == etag_of(tree.public / "range.bin")
    assert resp.header("Content-Type") == "application/octet-stream"


@pytest.mark.parametrize("value", [f"bytes={SIZE}-", f"bytes={SIZE + 5}-{SIZE + 10}", "bytes=-0", "bytes=99999999999999999999999-"])
def test_an_unsatisfiable_range_is_a_416(srv: ServerProcess, tree: Tree, value: str) -> None:
    with srv.connect() as conn:
        conn.send(build("GET", "/static/range.bin", f"Range: {value}", close=False))
        resp = conn.read_response()
        assert resp.status == 416, resp.raw_head
        assert resp.header("Content-Range") == f"bytes */{SIZE}"
        assert resp.header("Content-Length") == "0" and resp.body == b""
        # Nothing else came: the next response on the connection is the next request's.
        conn.send(build("GET", "/static/app.css"))
        assert conn.read_response().body == tree.bytes("app.css")


def test_a_range_of_an_empty_file_is_a_416(srv: ServerProcess) -> None:
    resp = fetch(srv, "/static/empty.txt", "Range: bytes=0-")
    assert resp.status == 416 and resp.header("Content-Range") == "bytes */0"


@pytest.mark.parametrize(
    "value",
    ["bytes=0-1,5-6", "bytes=0-1, 2000-3000", "bytes=5-1", "bytes=abc", "items=0-1", "bytes=", "bytes=1", "bytes=--1", "bytes=0-1-2", "0-99"],
)
def test_several_or_malformed_ranges_get_the_whole_file(srv: ServerProcess, tree: Tree, value: str) -> None:
    resp = fetch(srv, "/static/range.bin", f"Range: {value}")
    assert resp.status == 200, (value, resp.raw_head)
    assert resp.header("Content-Range") is None
    assert resp.body == tree.bytes("range.bin")
    assert resp.header("Accept-Ranges") == "bytes"


def test_if_range(srv: ServerProcess, tree: Tree) -> None:
    path = tree.public / "range.bin"
    data = path.read_bytes()
    # Last-Modified is a strong validator only for a file unchanged for over a second.
    just_written = time.time()
    os.utime(path, (just_written, just_written))
    resp = fetch(srv, "/static/range.bin", "Range: bytes=10-19", f"If-Range: {last_modified(path)}")
    assert resp.status == 200 and resp.body == data, resp.raw_head
    os.utime(path, (just_written - 600, just_written - 600))
    etag = etag_of(path)
    mtime = path.stat().st_mtime
    cases = [
        (etag, 206),
        ('"someone-else"', 200),
        ("W/" + etag, 200),
        (last_modified(path), 206),
        (http_date(mtime - 3600), 200),
        (http_date(mtime + 3600), 200),
        ("not a date", 200),
    ]
    for value, status in cases:
        resp = fetch(srv, "/static/range.bin", "Range: bytes=10-19", f"If-Range: {value}")
        assert resp.status == status, (value, resp.raw_head)
        assert resp.body == (data[10:20] if status == 206 else data)


# --- conditional requests -------------------------------------------------------------------


def conditional_cases(path: Path) -> list[tuple[list[str], int]]:
    etag = etag_of(path)
    mtime = path.stat().st_mtime
    return [
        ([f"If-None-Match: {etag}"], 304),
        ([f"If-None-Match: W/{etag}"], 304),
        ([f'If-None-Match: "a", {etag}, "b"'], 304),
        (["If-None-Match: *"], 304),
        (['If-None-Match: "nope"'], 200),
        ([f"If-Modified-Since: {last_modified(path)}"], 304),
        ([f"If-Modified-Since: {http_date(mtime + 3600)}"], 304),
        ([f"If-Modified-Since: {http_date(mtime - 3600)}"], 200),
        (["If-Modified-Since: yesterday"], 200),
        # Recipients must accept the two obsolete date forms too.
        ([f"If-Modified-Since: {rfc850_date(mtime + 3600)}"], 304),
        ([f"If-Modified-Since: {asctime_date(mtime + 3600)}"], 304),
        ([f"If-Modified-Since: {asctime_date(mtime - 3600)}"], 200),
        # If-None-Match decides when both are present.
        (['If-None-Match: "nope"', f"If-Modified-Since: {http_date(mtime + 3600)}"], 200),
        ([f"If-None-Match: {etag}", f"If-Modified-Since: {http_date(mtime - 3600)}"], 304),
    ]


def test_conditional_requests(srv: ServerProcess, tree: Tree) -> None:
    path = tree.public / "app.css"
    for headers, status in conditional_cases(path):
        for method in ("GET", "HEAD"):
            resp = fetch(srv, "/static/app.css", *headers, method=method)  # fetch checks no body follows a 304
            assert resp.status == status, (headers, method, resp.raw_head)
            assert resp.header("ETag") == etag_of(path)
            assert resp.header("Cache-Control") == "public, max-age=60"
            assert resp.header("Vary") == "Accept-Encoding"
            assert resp.header("Last-Modified") == last_modified(path)
            if status == 304:
                assert resp.body == b""
                assert resp.header("Content-Length") in (None, str(path.stat().st_size)), resp.raw_head
            elif method == "GET":
                assert resp.body == path.read_bytes()


def test_a_304_keeps_the_connection_and_sends_no_body(srv: ServerProcess, tree: Tree) -> None:
    etag = etag_of(tree.public / "big.bin")
    with srv.connect() as conn:
        conn.send(build("GET", "/static/big.bin", f"If-None-Match: {etag}", close=False))
        assert conn.read_response().status == 304
        conn.send(build("GET", "/static/app.css"))
        resp = conn.read_response()  # a body after the 304 would be read here instead
        assert resp.status == 200 and resp.body == tree.bytes("app.css")


# --- precompressed variants ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "suffix"),
    [
        (None, ""),
        ("gzip, deflate, br, zstd", ".br"),
        ("gzip, zstd", ".zst"),
        ("zstd, gzip, br", ".br"),
        ("gzip", ".gz"),
        ("x-gzip", ".gz"),
        ("BR", ".br"),
        ("gzip;q=1, br;q=0.5", ".gz"),
        ("br;q=0.2, zstd;q=0.8, gzip;q=0.5", ".zst"),
        ("br;q=0.5, zstd;q=0.5, gzip;q=0.5", ".br"),
        ("br;q=0, *", ".zst"),
        ("br;q=0, zstd;q=0, *", ".gz"),
        ("*", ".br"),
        ("*;q=0.1, gzip", ".gz"),
        ("gzip;q=0.8, *;q=0.9", ".br"),
        ("gzip ; q=0.9 , zstd ; q=0.3", ".gz"),
        ("identity", ""),
        ("deflate", ""),
        ("", ""),
        ("gzip;q=0, br;q=0, zstd;q=0", ""),
        ("*;q=0", ""),
    ],
)
def test_a_precompressed_variant_is_chosen_by_accept_encoding(srv: ServerProcess, tree: Tree, accept: str | None, suffix: str) -> None:
    variant = tree.public / f"bundle.js{suffix}"
    headers = [] if accept is None else [f"Accept-Encoding: {accept}"]
    resp = fetch(srv, "/static/bundle.js", *headers)
    assert resp.status == 200
    assert resp.body == variant.read_bytes(), (accept, resp.body[:40])
    assert resp.header("Content-Encoding") == ({".br": "br", ".zst": "zstd", ".gz": "gzip"}.get(suffix))
    assert resp.header("Content-Type") == JS_TYPE  # the original's type, never the variant's
    assert resp.header("Content-Length") == str(variant.stat().st_size)
    assert resp.header("ETag") == etag_of(variant)
    assert resp.header("Vary") == "Accept-Encoding"
    assert resp.header("Cache-Control") == "public, max-age=60"


def test_a_missing_variant_falls_back_to_the_next_acceptable(srv: ServerProcess, tree: Tree) -> None:
    resp = fetch(srv, "/static/only_gz.txt", "Accept-Encoding: br, zstd, gzip")
    assert resp.header("Content-Encoding") == "gzip" and resp.body == b"ONLY-GZ-VARIANT"
    assert resp.header("Content-Type") == "text/plain; charset=utf-8"
    resp = fetch(srv, "/static/only_gz.txt", "Accept-Encoding: br, zstd")
    assert resp.header("Content-Encoding") is None and resp.body == tree.bytes("only_gz.txt")
    assert resp.header("ETag") == etag_of(tree.public / "only_gz.txt")
    assert resp.header("Vary") == "Accept-Encoding"
    # No variant at all.
    resp = fetch(srv, "/static/app.css", "Accept-Encoding: br, zstd, gzip")
    assert resp.header("Content-Encoding") is None and resp.body == tree.bytes("app.css")


def test_a_range_is_always_of_the_identity_file(srv: ServerProcess, tree: Tree) -> None:
    identity = tree.bytes("bundle.js")
    resp = fetch(srv, "/static/bundle.js", "Accept-Encoding: br, gzip, zstd", "Range: bytes=0-9")
    assert resp.status == 206
    assert resp.header("Content-Encoding") is None
    assert resp.body == identity[:10]
    assert resp.header("Content-Range") == f"bytes 0-9/{len(identity)}"
    assert resp.header("ETag") == etag_of(tree.public / "bundle.js")


def test_variants_have_their_own_validators(srv: ServerProcess, tree: Tree) -> None:
    br = tree.public / "bundle.js.br"
    identity = tree.public / "bundle.js"
    head = fetch(srv, "/static/bundle.js", "Accept-Encoding: br", method="HEAD")
    assert head.status == 200 and head.body == b""
    assert head.header("Content-Encoding") == "br"
    assert head.header("Content-Length") == str(br.stat().st_size)
    assert head.header("ETag") == etag_of(br) != etag_of(identity)
    # The br variant's tag revalidates the br variant...
    resp = fetch(srv, "/static/bundle.js", "Accept-Encoding: br", f"If-None-Match: {etag_of(br)}")
    assert resp.status == 304 and resp.header("ETag") == etag_of(br)
    assert resp.header("Vary") == "Accept-Encoding"
    # ...not the identity file, nor the other way round.
    resp = fetch(srv, "/static/bundle.js", f"If-None-Match: {etag_of(br)}")
    assert resp.status == 200 and resp.body == identity.read_bytes()
    resp = fetch(srv, "/static/bundle.js", "Accept-Encoding: br", f"If-None-Match: {etag_of(identity)}")
    assert resp.status == 200 and resp.body == br.read_bytes()


# --- curl ------------------------------------------------------------------------------------


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-s", "--max-time", "10", *args], capture_output=True, timeout=20)


def curl_head(out: bytes) -> tuple[str, dict[str, str], bytes]:
    """(status line, lower-cased headers, body) of `curl -D -` output."""
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return lines[0], headers, body


def test_curl(srv: ServerProcess, tree: Tree) -> None:
    base = srv.url("/static")
    site = tree.bytes("site.css")
    # --compressed asks for br, zstd and gzip; there is no .br, so zstd, which curl decodes.
    status, headers, body = curl_head(curl("-D", "-", "--compressed", f"{base}/site.css").stdout)
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-encoding"] == "zstd"
    assert headers["content-length"] == str((tree.public / "site.css.zst").stat().st_size)
    assert body == site
    status, headers, body = curl_head(curl("-D", "-", "--compressed", "-H", "Accept-Encoding: gzip", f"{base}/site.css").stdout)
    assert headers["content-encoding"] == "gzip" and body == site
    # A range.
    status, headers, body = curl_head(curl("-D", "-", "-r", "0-0", f"{base}/range.bin").stdout)
    assert status == "HTTP/1.1 206 Partial Content"
    assert headers["content-range"] == f"bytes 0-0/{SIZE}" and body == tree.bytes("range.bin")[:1]
    # HEAD, and a conditional GET from what it said.
    status, headers, body = curl_head(curl("-I", f"{base}/app.css").stdout)
    assert status == "HTTP/1.1 200 OK" and body == b""
    assert headers["etag"] == etag_of(tree.public / "app.css")
    result = curl("-o", "/dev/null", "-w", "%{http_code}", "-z", headers["last-modified"], f"{base}/app.css")
    assert result.stdout == b"304"
    result = curl("-o", "/dev/null", "-w", "%{http_code}", "-H", f"If-None-Match: {headers['etag']}", f"{base}/app.css")
    assert result.stdout == b"304"
    # A whole big file.
    result = curl(f"{base}/big.bin")
    assert result.returncode == 0 and result.stdout == tree.bytes("big.bin")


# --- directories and index.html ---------------------------------------------------------------


def test_index_html_and_the_redirect_to_a_directory(index_srv: ServerProcess, tree: Tree) -> None:
    index = tree.public / "docs" / "index.html"
    resp = fetch(index_srv, "/static/docs/")
    assert resp.status == 200
    assert resp.body == index.read_bytes()
    assert resp.header("Content-Type") == "text/html; charset=utf-8"
    assert resp.header("ETag") == etag_of(index)
    assert resp.header("Content-Length") == str(index.stat().st_size)
    resp = fetch(index_srv, "/static/docs")
    assert resp.status == 301 and resp.header("Location") == "/static/docs/"
    resp = fetch(index_srv, "/static/docs?page=2&q=a%20b")
    assert resp.status == 301 and resp.header("Location") == "/static/docs/?page=2&q=a%20b"
    assert fetch(index_srv, "/static/docs", method="HEAD").status == 301
    # A directory without an index.html: no listing, no redirect.
    for target in ("/static/emptydir/", "/static/emptydir", "/static/", "/static"):
        resp = fetch(index_srv, target)
        assert_not_found(resp)
        assert b"listing-would-show-me" not in resp.body
    # A file is not a directory.
    assert_not_found(fetch(index_srv, "/static/app.css/"))
    # The index is a file like another one: conditionals apply.
    assert fetch(index_srv, "/static/docs/", f"If-None-Match: {etag_of(index)}").status == 304


def test_the_mount_itself_named_without_its_slash_is_redirected(index_srv: ServerProcess, tree: Tree) -> None:
    """/manual is a mount whose directory has an index.html: like any directory named
    without its trailing slash, it is redirected, so that the index's relative links
    resolve under /manual/."""
    index = tree.public / "docs" / "index.html"
    resp = fetch(index_srv, "/manual/")
    assert resp.status == 200 and resp.body == index.read_bytes()
    resp = fetch(index_srv, "/manual")
    assert resp.status == 301, (resp.raw_head, resp.body[:60])
    assert resp.header("Location") == "/manual/"
    resp = fetch(index_srv, "/manual?x=1")
    assert resp.status == 301 and resp.header("Location") == "/manual/?x=1"


def test_without_static_index_directories_are_404(srv: ServerProcess) -> None:
    for target in ("/static/docs/", "/static/docs", "/static/emptydir/", "/static/emptydir", "/static/", "/static", "/static/app.css/"):
        resp = fetch(srv, target)
        assert_not_found(resp)
        assert b"listing-would-show-me" not in resp.body and b"index.html" not in resp.body


# --- dotfiles, special files, fallthrough ---------------------------------------------------------

DOTFILES = ["/static/.env", "/static/.git/config", "/static/sub/.hidden", "/static/%2eenv", "/static/.git/", "/static/.git", "/static/%2Egit/config"]


def test_dotfiles_are_404(srv: ServerProcess) -> None:
    before = seen(srv)
    for target in DOTFILES:
        resp = fetch(srv, target)
        assert_not_found(resp)
    assert seen(srv) == before


def test_a_fifo_is_404_at_once(srv: ServerProcess) -> None:
    started = time.monotonic()
    assert_not_found(fetch(srv, "/static/fifo"))
    assert time.monotonic() - started < 2
    assert fetch(srv, "/static/app.css").status == 200


def test_fallthrough_passes_what_the_mount_does_not_serve(fallthrough_srv: ServerProcess, tree: Tree) -> None:
    srv = fallthrough_srv
    before = seen(srv)
    # Files the mount has are still its own.
    resp = fetch(srv, "/static/app.css")
    assert resp.status == 200 and resp.body == tree.bytes("app.css")
    assert seen(srv) == before
    passed = [
        ("GET", "/static/missing.txt", "/static/missing.txt"),
        ("GET", "/static/docs/", "/static/docs/"),
        ("GET", "/static/docs", "/static/docs"),
        ("GET", "/static/.env", "/static/.env"),
        ("GET", "/static/sub/.hidden", "/static/sub/.hidden"),
        ("GET", "/static/.git/config", "/static/.git/config"),
        ("GET", "/static/fifo", "/static/fifo"),
        ("GET", "/static/out_rel", "/static/out_rel"),
        ("POST", "/static/missing.txt", "/static/missing.txt"),
        ("DELETE", "/static/nothing/here", "/static/nothing/here"),
    ]
    for method, target, path_info in passed:
        resp = fetch(srv, target, method=method)
        assert resp.status == 200 and resp.body == app_answer(method, path_info), (method, target, resp.raw_head, resp.body)
    assert seen(srv) == before + [[m, p, ""] for m, _, p in passed]
    # A method other than GET and HEAD on a file that exists: 405, not the app.
    resp = fetch(srv, "/static/app.css", method="POST")
    assert resp.status == 405 and resp.header("Allow") == "GET, HEAD"
    # Escapes open nothing: the application gets them, as it would without a mount.
    escapes = ("/static/../secret.txt", "/static/%2e%2e/secret.txt", "/static/..%2fsecret.txt", "/static//etc/passwd", "/static/a%00b")
    for target in escapes:
        resp = fetch(srv, target)
        assert resp.status == 200 and resp.body.startswith(b"app saw GET "), (target, resp.raw_head, resp.body)
    assert len(seen(srv)) == len(before) + len(passed) + len(escapes)


# --- symlinks --------------------------------------------------------------------------------


def test_symlinks_inside_the_root_are_followed(srv: ServerProcess, tree: Tree) -> None:
    resp = fetch(srv, "/static/in_link.css")
    assert resp.status == 200 and resp.body == tree.bytes("app.css")
    assert resp.header("Content-Type") == "text/css; charset=utf-8"
    # Through `..`, staying inside.
    resp = fetch(srv, "/static/sub/up.css")
    assert resp.status == 200 and resp.body == tree.bytes("app.css")
    # A symlinked directory.
    resp = fetch(srv, "/static/linkdir/page.txt")
    assert resp.status == 200 and resp.body == tree.bytes("sub/page.txt")


def test_symlinks_out_of_the_root_are_404_and_never_opened(srv: ServerProcess, tree: Tree, secret_watch: Callable[[], list[tuple[str, str, int]]]) -> None:
    for target in ("/static/out_rel", "/static/out_abs", "/static/out_dir/secret.txt", "/static/out_parent", "/static/linkdir/../out_rel"):
        resp = fetch(srv, target)
        assert_not_found(resp)
    assert secret_watch() == []
    assert_watch_works(tree, secret_watch)


def test_follow_symlinks_serves_what_they_point_to(tree: Tree, secret_watch: Callable[[], list[tuple[str, str, int]]]) -> None:
    server = start(f"--static=/static={tree.public}", "--static-follow-symlinks")
    try:
        # The watch sees the server open the secret (so its silence elsewhere means something).
        assert fetch(server, "/static/out_rel").body == OUTSIDE_SECRET
        opened = [e for e in secret_watch() if e[0] == str(tree.outside_secret) and e[2] & Inotify.IN_OPEN]
        assert opened, "inotify did not see the server open the secret"
        for target, want in [
            ("/static/out_rel", OUTSIDE_SECRET),
            ("/static/out_abs", OUTSIDE_SECRET),
            ("/static/out_dir/secret.txt", OUTSIDE_SECRET),
            ("/static/out_parent", SECRET),
            ("/static/in_link.css", tree.bytes("app.css")),
        ]:
            resp = fetch(server, target)
            assert resp.status == 200 and resp.body == want, (target, resp.raw_head)
        # Still: no traversal, no dotfiles.
        for target in ("/static/../secret.txt", "/static/%2e%2e/outside/secret.txt", "/static/.env"):
            assert_not_found(fetch(server, target))
    finally:
        server.stop()


# --- traversal ---------------------------------------------------------------------------------

#: (raw request target, kind): "escape" is refused as one (404, even with fallthrough);
#: "missing" names nothing below the root (404; with fallthrough, the application);
#: "app" is not under the prefix (the application answers); "bad" is refused by the
#: request parser (400).
TRAVERSALS: list[tuple[bytes, str]] = [
    (b"/static/../secret.txt", "escape"),
    (b"/static/../outside/secret.txt", "escape"),
    (b"/static/%2e%2e/secret.txt", "escape"),
    (b"/static/%2E%2E/outside/secret.txt", "escape"),
    (b"/static/%2e%2E/outside/secret.txt", "escape"),
    (b"/static/.%2e/secret.txt", "escape"),
    (b"/static/%2e./secret.txt", "escape"),
    (b"/static/.%2E/.%2e/outside/secret.txt", "escape"),
    (b"/static/..%2fsecret.txt", "escape"),
    (b"/static/..%2Foutside%2Fsecret.txt", "escape"),
    (b"/static/%2f..%2fsecret.txt", "escape"),
    (b"/static/%2e%2e%2fsecret.txt", "escape"),
    (b"/static/%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd", "escape"),
    (b"/static/..%5csecret.txt", "escape"),
    (b"/static/..%5Coutside%5Csecret.txt", "escape"),
    (b"/static/%2e%2e%5c%2e%2e%5csecret.txt", "escape"),
    (b"/static/..\\secret.txt", "escape"),
    (b"/static/..\\..\\outside\\secret.txt", "escape"),
    (b"/static//etc/passwd", "escape"),
    (b"/static//../secret.txt", "escape"),
    (b"/static/%2fetc%2fpasswd", "escape"),
    (b"/static/%2F..%2F..%2Fetc%2Fpasswd", "escape"),
    (b"/static/..%00/secret.txt", "escape"),
    (b"/static/secret.txt%00.css", "escape"),
    (b"/static/..%0a/secret.txt", "escape"),
    (b"/static/....//secret.txt", "escape"),
    (b"/static/../../../../../../../../etc/passwd", "escape"),
    (b"/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "escape"),
    (b"/static/..%2f..%2f..%2f..%2fetc%2fpasswd", "escape"),
    (b"/static/sub/../../secret.txt", "escape"),
    (b"/static/sub/%2e%2e/%2e%2e/outside/secret.txt", "escape"),
    (b"/static/sub/..%2f..%2foutside/secret.txt", "escape"),
    (b"/static/./../secret.txt", "escape"),
    (b"/static/.%2e/%2E./..%2f/secret.txt", "escape"),
    (b"/static/..", "escape"),
    (b"/static/%2e%2e", "escape"),
    (b"/static/../", "escape"),
    (b"/static/..%2f", "escape"),
    (b"/static/%%32%65%%32%65/secret.txt", "escape"),
    (b"/static/%u002e%u002e/secret.txt", "escape"),
    (b"/static/%2", "escape"),
    (b"/static/../secret.txt?download=1", "escape"),
    (b"/static/../secret.txt#fragment", "escape"),
    (b"/static/%2e%2e/secret.txt?x=../../secret.txt", "escape"),
    (b"/static/admin/../../secret.txt", "escape"),
    (b"/static/admin/%2e%2e/%2e%2e/outside/secret.txt", "escape"),
    (b"http://t/static/../secret.txt", "escape"),
    (b"http://t/static/%2e%2e/outside/secret.txt", "escape"),
    (b"http://t/static/..%2fsecret.txt", "escape"),
    (b"/static/%c0%ae%c0%ae/secret.txt", "missing"),
    (b"/static/%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd", "missing"),
    (b"/static/%e0%80%ae%e0%80%ae/secret.txt", "missing"),
    (b"/static/..%c0%afsecret.txt", "missing"),
    (b"/static/%252e%252e/secret.txt", "missing"),
    (b"/static/%252e%252e%252fsecret.txt", "missing"),
    (b"/static/..%252f..%252fsecret.txt", "missing"),
    (b"/static/..../secret.txt", "missing"),
    (b"/static/.../secret.txt", "missing"),
    (b"/static/..;/secret.txt", "missing"),
    (b"/static/out_rel", "missing"),
    (b"/static/out_abs", "missing"),
    (b"/static/out_dir/secret.txt", "missing"),
    (b"/static/out_parent", "missing"),
    (b"/static\\..\\secret.txt", "app"),
    (b"/static%2f..%2fsecret.txt", "app"),
    (b"/staticfoo/../secret.txt", "app"),
    (b"/static/a\x00b/../secret.txt", "bad"),
    (b"/static/\xc0\xae\xc0\xae/secret.txt", "bad"),
]


def send_corpus(server: ServerProcess, methods: tuple[str, ...] = ("GET", "HEAD")) -> list[tuple[bytes, str, str, int, bytes]]:
    """Each target of TRAVERSALS with each method, on its own connection, read to the
    close: (target, kind, method, status, everything received)."""
    answers = []
    for target, kind in TRAVERSALS:
        for method in methods:
            with server.connect() as conn:
                conn.send(build(method, target))
                raw = conn.read_all()
            status = int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else -1
            answers.append((target, kind, method, status, raw))
    return answers


def assert_nothing_leaked(answers: list[tuple[bytes, str, str, int, bytes]]) -> None:
    for target, _, method, _, raw in answers:
        for secret in (SECRET, OUTSIDE_SECRET, SECRET[:12], OUTSIDE_SECRET[:15], PASSWD_MARK):
            assert secret not in raw, (method, target, raw[:300])


def test_the_traversal_corpus(srv: ServerProcess, tree: Tree, secret_watch: Callable[[], list[tuple[str, str, int]]]) -> None:
    assert len(TRAVERSALS) >= 30
    before = seen(srv)
    answers = send_corpus(srv)
    assert_nothing_leaked(answers)
    wrong = []
    for target, kind, method, status, raw in answers:
        body = raw.partition(b"\r\n\r\n")[2]
        want = {"escape": 404, "missing": 404, "app": 200, "bad": 400}[kind]
        ok = status == want
        if ok and kind in ("escape", "missing"):
            ok = body == (b"" if method == "HEAD" else b"Not Found\r\n")
        if ok and kind == "app" and method == "GET":
            ok = body.startswith(b"app saw GET ")
        if not ok:
            wrong.append((method, target, kind, raw[:200]))
    assert wrong == []
    # The secrets were never opened (nor read) by anyone.
    assert secret_watch() == []
    # Only the targets outside the prefix reached the application.
    reached = seen(srv)[len(before) :]
    to_app = sum(1 for _, kind in TRAVERSALS if kind == "app")
    assert sorted(method for method, _, _ in reached) == ["GET"] * to_app + ["HEAD"] * to_app, reached
    assert_watch_works(tree, secret_watch)


def test_the_traversal_corpus_with_fallthrough(fallthrough_srv: ServerProcess, tree: Tree, secret_watch: Callable[[], list[tuple[str, str, int]]]) -> None:
    answers = send_corpus(fallthrough_srv, methods=("GET",))
    assert_nothing_leaked(answers)
    for target, kind, method, status, raw in answers:
        if kind in ("escape", "missing", "app"):
            assert status == 200 and b"\r\n\r\napp saw GET " in raw, (target, raw[:200])
        else:
            assert status == 400, (target, raw[:200])
    assert secret_watch() == []
    assert_watch_works(tree, secret_watch)


# --- clients that leave, files that shrink ------------------------------------------------------


def test_a_client_leaving_mid_file_does_not_disturb_the_next(srv: ServerProcess, tree: Tree) -> None:
    path = tree.public / "large.bin"
    data = os.urandom(1 << 20) * 24
    path.write_bytes(data)
    pid = srv.proc.pid
    time.sleep(0.2)
    baseline = fd_count(pid)
    for how in ("close", "reset", "no-read"):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.settimeout(5)
        sock.connect(srv.address)
        sock.sendall(build("GET", "/static/large.bin"))
        if how != "no-read":
            got = b""
            while len(got) < 65536:
                chunk = sock.recv(65536)
                assert chunk
                got += chunk
            assert got.startswith(b"HTTP/1.1 200 OK\r\n")
            assert data.startswith(got.partition(b"\r\n\r\n")[2])
        if how == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    # The next clients are served in full.
    resp = fetch(srv, "/static/large.bin")
    assert resp.status == 200 and resp.body == data
    assert fetch(srv, "/static/app.css").body == tree.bytes("app.css")
    # And the abandoned transfers let go of their descriptors.
    wait_until(lambda: fd_count(pid) <= baseline, 10, lambda: f"{fd_count(pid)} descriptors open, {baseline} before")


def test_a_file_truncated_while_sent_cuts_the_connection(srv: ServerProcess, tree: Tree) -> None:
    path = tree.public / "shrinking.bin"
    block = os.urandom(1 << 20)
    data = block * 64
    path.write_bytes(data)
    cut_to = 256 * 1024  # a whole number of pages, so the kernel zeroes nothing in flight
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
    sock.settimeout(10)
    sock.connect(srv.address)
    received = b""
    with RawConn(sock) as conn:
        conn.send(build("GET", "/static/shrinking.bin"))
        while b"\r\n\r\n" not in received:
            received += sock.recv(65536)
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert f"Content-Length: {len(data)}".encode() in head
        # Read slowly for a while, then shrink the file under the transfer.
        while len(body) < 2 << 20:
            body += sock.recv(16384)
            time.sleep(0.0005)
        before_cut = len(body)
        os.truncate(path, cut_to)
        closed = False
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            body += chunk
        assert closed, f"the connection stayed open with {len(body)} of {len(data)} bytes"
    assert len(body) < len(data)
    # What came is the file's bytes as they were, never padding.
    assert body == data[: len(body)], "bytes that were not the file's"
    # At most what was in flight when the file shrank (socket buffers) came after.
    assert len(body) <= before_cut + (8 << 20), (before_cut, len(body))
    # The server goes on: the file as it is now, and others.
    resp = fetch(srv, "/static/shrinking.bin")
    assert resp.status == 200 and resp.body == data[:cut_to]
    assert fetch(srv, "/static/app.css").body == tree.bytes("app.css")


def test_static_files_are_served_while_the_application_is_busy(tree: Tree) -> None:
    server = start(f"--static=/static={tree.public}", "--threads=1")
    try:
        with server.connect(timeout=15) as slow:
            slow.send(build("GET", "/sleep?s=3"))
            time.sleep(0.3)  # the only application thread is asleep now
            started = time.monotonic()
            resp = fetch(server, "/static/big.bin")
            elapsed = time.monotonic() - started
            assert resp.status == 200 and resp.body == tree.bytes("big.bin")
            assert elapsed < 1.5, f"a static file waited {elapsed:.1f} s for the application's thread"
            assert slow.read_response().body == b"slept"
            assert time.monotonic() - started > 2  # it really was busy meanwhile
    finally:
        server.stop()


def test_workers_serve_the_mounts(tree: Tree) -> None:
    server = start(f"--static=/static={tree.public}", "--workers=2")
    try:
        for _ in range(6):
            resp = fetch(server, "/static/big.bin")
            assert resp.status == 200 and resp.body == tree.bytes("big.bin")
            assert_not_found(fetch(server, "/static/../secret.txt"))
        # Neither worker's application saw any of it (each /__seen__ goes to either).
        for _ in range(8):
            assert seen(server) == []
    finally:
        server.stop()


# --- metrics and the access log ----------------------------------------------------------------


def test_metrics_count_static_responses_and_sendfile_bytes(observed: Observed, tree: Tree) -> None:
    text = metrics_text(observed.metrics)
    sent_before = total(text, "tapster_sendfile_bytes_total")
    big = len(tree.bytes("big.bin"))
    srv = observed.srv
    assert fetch(srv, "/static/big.bin").body == tree.bytes("big.bin")
    assert fetch(srv, "/static/app.css").status == 200
    assert fetch(srv, "/static/range.bin", "Range: bytes=0-9").status == 206
    assert fetch(srv, "/static/nope").status == 404
    assert fetch(srv, "/static/range.bin", "Range: bytes=100000-").status == 416
    assert fetch(srv, "/static/app.css", f"If-None-Match: {etag_of(tree.public / 'app.css')}", method="HEAD").status == 304
    assert fetch(srv, "/static/app.css", method="POST").status == 405
    assert fetch(srv, "/hello").body == app_answer("GET", "/hello")
    want = [
        ({"handler": "static", "method": "GET", "status": "2xx"}, 3),
        ({"handler": "static", "method": "GET", "status": "4xx"}, 2),
        ({"handler": "static", "method": "HEAD", "status": "3xx"}, 1),
        ({"handler": "static", "method": "POST", "status": "4xx"}, 1),
        ({"handler": "static"}, 7),
        ({"handler": "application", "method": "GET", "status": "2xx"}, 1),
        ({"handler": "application"}, 1),
    ]
    text = ""
    for labels, n in want:

        def counted(labels: dict[str, str] = labels, n: int = n) -> bool:
            nonlocal text
            text = metrics_text(observed.metrics)
            return total(text, "tapster_requests_total", **labels) == n

        wait_until(counted, 5, lambda: f"tapster_requests_total{labels} is not {n}:\n{text}")
    sent = wait_total(observed.metrics, "tapster_sendfile_bytes_total", lambda v: v >= sent_before + big + 10)
    assert sent == sent_before + big + len(tree.bytes("app.css")) + 10
    assert total(metrics_text(observed.metrics), "tapster_sent_bytes_total") >= sent


def test_the_json_access_log_names_the_handler(observed: Observed, tree: Tree) -> None:
    srv = observed.srv
    requests = [
        ("GET", "/static/app.css?n=1", [], 200, "static"),
        ("GET", "/static/nope.css?n=2", [], 404, "static"),
        ("HEAD", "/static/app.css?n=3", [f"If-None-Match: {etag_of(tree.public / 'app.css')}"], 304, "static"),
        ("POST", "/static/app.css?n=4", [], 405, "static"),
        ("GET", "/static/range.bin?n=5", ["Range: bytes=0-9"], 206, "static"),
        ("GET", "/static/../secret.txt?n=6", [], 404, "static"),
        ("GET", "/hello?n=7", [], 200, "application"),
        ("GET", "/static/big.bin?n=8", [], 200, "static"),
    ]
    for method, target, headers, status, _ in requests:
        assert fetch(srv, target, *headers, method=method).status == status
    records: list[dict[str, Any]] = []

    def enough() -> bool:
        nonlocal records
        text = observed.log.read_text() if observed.log.exists() else ""
        records = [json.loads(line) for line in text.splitlines()]
        return len(records) >= len(requests)

    wait_until(enough, 5, lambda: f"{len(records)} of {len(requests)} lines in the access log: {records}")
    by_query = {r["query"]: r for r in records}
    for method, target, _, status, handler in requests:
        record = by_query[target.partition("?")[2]]
        assert (record["method"], record["status"], record["handler"]) == (method, status, handler), record
        assert record["aborted"] is False
    assert by_query["n=1"]["bytes"] == len(tree.bytes("app.css"))
    assert by_query["n=5"]["bytes"] == 10
    assert by_query["n=8"]["bytes"] == len(tree.bytes("big.bin"))
    assert by_query["n=1"]["path"] == "/static/app.css"


def test_a_static_download_cut_short_is_logged_as_aborted(observed: Observed, tree: Tree) -> None:
    path = tree.public / "abort.bin"
    path.write_bytes(os.urandom(1 << 20) * 32)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.settimeout(5)
    sock.connect(observed.srv.address)
    sock.sendall(build("GET", "/static/abort.bin?cut=1"))
    got = b""
    while len(got) < 100_000:
        got += sock.recv(65536)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    assert fetch(observed.srv, "/static/app.css?after=1").status == 200
    records: list[dict[str, Any]] = []

    def logged() -> bool:
        nonlocal records
        text = observed.log.read_text() if observed.log.exists() else ""
        records = [json.loads(line) for line in text.splitlines()]
        return {r["query"] for r in records} >= {"cut=1", "after=1"}

    wait_until(logged, 5, lambda: f"access log: {records}")
    cut = next(r for r in records if r["query"] == "cut=1")
    assert (cut["status"], cut["handler"], cut["aborted"]) == (200, "static", True), cut
    assert 0 < cut["bytes"] < 32 << 20, cut


# --- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--static=/static"], ['"/static"', "PREFIX=DIRECTORY"]),
        (["--static=static=/tmp"], ['"static=/tmp"', "prefix"]),
        (["--static=/static={missing}"], ["{missing}", "/static"]),
        (["--static=/static={file}"], ["{file}", "not a directory"]),
        (["--static=/static=/tmp", "--static-immutable-pattern=("], ["static_immutable_pattern", '"("']),
        (["--static=/s=/tmp", "--static=/s=/var"], ["/s", "twice"]),
        (["--static=/static=/tmp", "--static-max-age=soon"], ["static-max-age", "soon"]),
        # With workers, the supervisor refuses them too (no worker restart loop).
        (["--workers=2", "--static=/static={missing}"], ["{missing}", "/static"]),
        (["--workers=2", "--static=/static=/tmp", "--static-immutable-pattern=("], ["static_immutable_pattern"]),
    ],
)
def test_bad_static_options_stop_the_server_with_a_message(tree: Tree, args: list[str], named: list[str]) -> None:
    fill = {"missing": str(tree.base / "no-such-dir"), "file": str(tree.public / "app.css")}
    args = [a.format(**fill) for a in args]
    result = subprocess.run(
        [sys.executable, "-m", "tapster", "--listen=127.0.0.1:0", *args, APP],
        cwd=TESTS_DIR,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "Serving on" not in result.stdout + result.stderr
    assert "static" in result.stderr.lower()
    for part in named:
        assert part.format(**fill) in result.stderr, result.stderr


def test_create_server_takes_the_static_options(tree: Tree) -> None:
    from tapster import _tapster
    from tapster.server import create_server

    from apps.static_probe import app

    server: Any = create_server(
        app,
        host="127.0.0.1",
        port=0,
        static=[f"/assets={tree.public}", f"/admin={tree.admin}"],
        static_index=True,
        static_max_age=7,
        static_immutable_pattern=r"^hashed\.",
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        port = server.effective_port

        def get(target: str, *headers: str) -> Response:
            with RawConn(socket.create_connection(("127.0.0.1", port), timeout=5)) as conn:
                conn.send(build("GET", target, *headers))
                return conn.read_response()

        sent_before = _tapster.stats()["sendfile_bytes"]
        resp = get("/assets/big.bin")
        assert resp.status == 200 and resp.body == tree.bytes("big.bin")
        assert resp.header("Cache-Control") == "public, max-age=7"
        wait_until(
            lambda: _tapster.stats()["sendfile_bytes"] >= sent_before + len(resp.body),
            5,
            lambda: f"sendfile_bytes {_tapster.stats()['sendfile_bytes']} from {sent_before}",
        )
        assert get("/assets/hashed.3f9c2e1b7a.css").header("Cache-Control") == IMMUTABLE
        assert get("/admin/panel.txt").body == b"admin panel\n"
        redirect = get("/assets/docs")
        assert redirect.status == 301 and redirect.header("Location") == "/assets/docs/"
        assert get("/assets/docs/").body == tree.bytes("docs/index.html")
        assert get("/elsewhere").body == app_answer("GET", "/elsewhere")
        assert get("/assets/../secret.txt").status == 404
    finally:
        server.close()
        thread.join(10)
    assert not thread.is_alive()


# --- preconditions, representations, shortages (after review) -----------------------------------


def test_if_match_and_if_unmodified_since_fail_with_412(srv: ServerProcess, tree: Tree) -> None:
    path = tree.public / "range.bin"
    etag, mtime = etag_of(path), path.stat().st_mtime
    data = path.read_bytes()
    cases = [
        ([f"If-Match: {etag}"], 200),
        (['If-Match: "a", ' + etag], 200),
        (["If-Match: *"], 200),
        (['If-Match: "someone-else"'], 412),
        ([f"If-Match: W/{etag}"], 412),  # strong comparison
        ([f"If-Unmodified-Since: {http_date(mtime + 3600)}"], 200),
        ([f"If-Unmodified-Since: {http_date(mtime - 3600)}"], 412),
        (["If-Unmodified-Since: not a date"], 200),
        # If-Match decides when both are present.
        ([f"If-Match: {etag}", f"If-Unmodified-Since: {http_date(mtime - 3600)}"], 200),
        # 412 comes before 304 and before a range.
        (['If-Match: "x"', f"If-None-Match: {etag}"], 412),
        ([f"If-Unmodified-Since: {http_date(mtime - 3600)}", "Range: bytes=0-9"], 412),
    ]
    for headers, status in cases:
        resp = fetch(srv, "/static/range.bin", *headers)
        assert resp.status == status, (headers, resp.raw_head)
        if status == 200:
            assert resp.body == data
        else:
            assert resp.body == b"Precondition Failed\r\n"
    # A download resumed against a file that changed since: 412, not spliced bytes.
    old = http_date(mtime - 3600)
    resumed = fetch(srv, "/static/range.bin", "Range: bytes=50000-", f"If-Unmodified-Since: {old}")
    assert resumed.status == 412


def test_a_304_and_a_416_carry_only_what_they_should(srv: ServerProcess, tree: Tree) -> None:
    path = tree.public / "app.css"
    not_modified = fetch(srv, "/static/app.css", f"If-None-Match: {etag_of(path)}")
    assert not_modified.status == 304
    assert not_modified.header("ETag") == etag_of(path) and not_modified.header("Vary") == "Accept-Encoding"
    assert not_modified.header("Content-Type") is None and not_modified.header("Content-Encoding") is None
    unsatisfiable = fetch(srv, "/static/app.css", "Range: bytes=99999-")
    assert unsatisfiable.status == 416
    assert unsatisfiable.header("Cache-Control") == "no-store"
    assert unsatisfiable.header("ETag") is None and unsatisfiable.header("Last-Modified") is None


def test_a_variant_offers_no_ranges_and_a_bad_range_keeps_the_variant(srv: ServerProcess) -> None:
    variant = fetch(srv, "/static/bundle.js", "Accept-Encoding: gzip")
    assert variant.header("Content-Encoding") == "gzip" and variant.header("Accept-Ranges") is None
    identity = fetch(srv, "/static/bundle.js")
    assert identity.header("Content-Encoding") is None and identity.header("Accept-Ranges") == "bytes"
    # A Range that does not apply (another unit, malformed) leaves the variant in play.
    for ignored in ("items=0-1", "bytes=oops"):
        resp = fetch(srv, "/static/bundle.js", "Accept-Encoding: gzip", f"Range: {ignored}")
        assert resp.status == 200 and resp.header("Content-Encoding") == "gzip", (ignored, resp.raw_head)


def test_list_fields_sent_in_several_lines_are_combined(srv: ServerProcess, tree: Tree) -> None:
    resp = fetch(srv, "/static/bundle.js", "Accept-Encoding: identity", "Accept-Encoding: gzip")
    assert resp.header("Content-Encoding") == "gzip", resp.raw_head
    tag = etag_of(tree.public / "app.css")
    resp = fetch(srv, "/static/app.css", 'If-None-Match: "a"', f"If-None-Match: {tag}")
    assert resp.status == 304, resp.raw_head


def test_index_variants_and_stale_variants(tmp_path: Path) -> None:
    docs = tmp_path / "site" / "docs"
    docs.mkdir(parents=True)
    (docs / "index.html").write_bytes(b"<p>index</p>\n" * 50)
    (docs / "index.html.gz").write_bytes(gzip.compress((docs / "index.html").read_bytes()))
    (tmp_path / "site" / "app.js").write_bytes(b"new();\n" * 50)
    (tmp_path / "site" / "app.js.gz").write_bytes(b"OLD-GZIP")
    # The variant from a deploy that forgot to recompress: older than its file.
    past = time.time() - 3600
    os.utime(tmp_path / "site" / "app.js.gz", (past, past))
    server = start(f"--static=/s={tmp_path / 'site'}", "--static-index")
    try:
        index = fetch(server, "/s/docs/", "Accept-Encoding: gzip")
        assert index.status == 200 and index.header("Content-Encoding") == "gzip", index.raw_head
        assert index.header("Content-Type") == "text/html; charset=utf-8"
        assert gzip.decompress(index.body) == (docs / "index.html").read_bytes()
        stale = fetch(server, "/s/app.js", "Accept-Encoding: gzip")
        assert stale.header("Content-Encoding") is None and stale.body == b"new();\n" * 50, stale.raw_head
    finally:
        server.stop()


def test_a_non_reading_method_on_a_directory_goes_to_the_application_with_fallthrough(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.html").write_bytes(b"index\n")
    server = start(f"--static=/s={tmp_path}", "--static-index", "--static-fallthrough")
    try:
        assert fetch(server, "/s/docs").status == 301
        resp = fetch(server, "/s/docs", method="POST")
        assert resp.status == 200 and resp.body == app_answer("POST", "/s/docs"), resp.raw_head
    finally:
        server.stop()


def test_out_of_descriptors_is_a_503_and_logged(srv: ServerProcess, tree: Tree) -> None:
    import resource

    pid = srv.proc.pid
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    with srv.connect() as conn:
        conn.send(build("GET", "/static/app.css", close=False))
        assert conn.read_response().status == 200
        # No descriptor left for the file: a new descriptor takes the lowest free
        # number, and every number from 3 up is then over the limit.
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (3, hard))
        try:
            conn.send(build("GET", "/static/app.css", close=False))
            resp = conn.read_response()
        finally:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
        assert resp.status == 503, resp.raw_head
        assert resp.header("Retry-After") == "1" and resp.header("Cache-Control") == "no-store"
        # The connection lives on, and the file is served again.
        conn.send(build("GET", "/static/app.css", close=False))
        assert conn.read_response().status == 200
    deadline = time.monotonic() + 5
    while "Could not open a static file for /static/app.css" not in srv.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "Could not open a static file for /static/app.css" in srv.log(), srv.log()[-2000:]

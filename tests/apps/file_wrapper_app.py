"""The application behind tests/test_file_wrapper.py: every way of handing a file-like
object to ``environ['wsgi.file_wrapper']``.

Data files live in the directory named by the ``FW_DATA`` environment variable (written
by the test module). Routes (parameters in the query string):

- ``/stats``: ``tapster._tapster.stats()`` as JSON (this process's sendfile counters).
- ``/record?tag=``: what the file-like objects created with that tag saw (``read()``
  sizes requested, ``close()`` calls), as JSON.
- ``/mark/<name>``: logs ``EVENT mark <name>`` (a barrier for log assertions).
- ``/signature``: calls the wrapper constructor in several ways and reports the results.
- ``/attrs?kind=&name=``: whether the wrapper exposes seek/tell/seekable.
- ``/serve[/anything]?kind=&name=&tag=`` [offset, readahead, range=a-b, cl, status,
  block, fail_at]: returns the wrapper itself as the app_iter. ``range`` makes a 206
  with Content-Range (and a Content-Length of the range's size), ``cl`` sets an
  arbitrary Content-Length, ``status`` replaces the status line.
- ``/range-mw?kind=&name=&range=a-b&tag=``: an inner app returns the wrapper, and a
  middleware builds a 206 from it with the wrapper's own seek/tell.
- ``/wrapped?kind=&name=&block=&tag=``: a middleware re-yields the wrapper's blocks from a
  generator (the wrapper is then an ordinary iterable).

Every ``close()`` of a file-like object logs ``EVENT closed <tag>``. Instrumented objects
are kept referenced forever, so a close can only come from an explicit call (never from
a garbage-collection finaliser).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tempfile
import threading
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import parse_qs

from tapster import _tapster

from apps.common import event

StartResponse = Callable[..., Any]
DATA = os.environ.get("FW_DATA", "")
XOR = bytes(b ^ 0x5A for b in range(256))

_lock = threading.Lock()
RECORDS: dict[str, dict[str, Any]] = {}
KEEP: list[Any] = []


def record(tag: str) -> dict[str, Any]:
    with _lock:
        return RECORDS.setdefault(tag, {"reads": [], "closes": 0})


def note_close(tag: str) -> None:
    rec = record(tag)
    with _lock:
        rec["closes"] += 1
    event(f"closed {tag}")


def instrument_close(f: Any, tag: str) -> Any:
    """Makes `f.close()` report itself, without changing the type of `f` (the server
    decides on sendfile by exact type)."""
    original = f.close

    def close() -> None:
        note_close(tag)
        original()

    f.close = close
    KEEP.append(f)
    return f


class RecordedReads:
    """A file-like object with only read() and close(): records every read() under
    `tag`, fails from read number `fail_at` on, and returns str when `text` is set."""

    def __init__(self, raw: Any, tag: str, fail_at: int | None = None, text: bool = False) -> None:
        self.raw = raw
        self.tag = tag
        self.fail_at = fail_at
        self.text = text
        KEEP.append(self)

    def read(self, size: int = -1) -> bytes | str:
        rec = record(self.tag)
        with _lock:
            rec["reads"].append(size)
            n = len(rec["reads"]) - 1
        if self.fail_at is not None and n >= self.fail_at:
            raise OSError(f"read {n} failed")
        data = self.raw.read(size)
        return data.decode("latin-1") if self.text else data

    def close(self) -> None:
        note_close(self.tag)
        self.raw.close()


class Counting(RecordedReads):
    """A seekable file-like object that records every read() (not sent with sendfile:
    it is not a built-in file type)."""

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def seekable(self) -> bool:
        return True


class Transform(Counting):
    """Has fileno() (of a real, regular file) but read() returns different bytes (each
    byte XOR 0x5A): sending the descriptor would send the wrong data."""

    def read(self, size: int = -1) -> bytes:
        data = super().read(size)
        assert isinstance(data, bytes)
        return data.translate(XOR)

    def fileno(self) -> int:
        return self.raw.fileno()


class PipeLike(RecordedReads):
    """Only read() (and close()): no seek, no tell, so the server must iterate."""

    def __init__(self, data: bytes, tag: str, text: bool = False, fail_at: int | None = None) -> None:
        super().__init__(io.BytesIO(data), tag, fail_at, text)


def _path(name: str) -> str:
    return os.path.join(DATA, name)


def _read(name: str) -> bytes:
    with open(_path(name), "rb") as f:
        return f.read()


def _os_pipe(data: bytes, tag: str) -> Any:
    """A real pipe (FileIO: has seek and tell, but seekable() is False), fed by a thread."""
    r, w = os.pipe()

    def feed() -> None:
        try:
            with open(w, "wb") as out:
                out.write(data)
        except BrokenPipeError:
            pass  # the reader was closed early

    threading.Thread(target=feed, daemon=True).start()
    return instrument_close(open(r, "rb"), tag)


def make_file(kind: str, name: str, tag: str, fail_at: int | None = None) -> Any:
    path = _path(name)
    if kind == "open":
        return instrument_close(open(path, "rb"), tag)
    if kind == "unbuffered":
        return instrument_close(open(path, "rb", buffering=0), tag)
    if kind == "writeonly":  # a FileIO whose read() raises
        return instrument_close(open(path, "ab", buffering=0), tag)
    if kind == "writeonly-buffered":  # a BufferedWriter whose read() raises
        return instrument_close(open(path, "ab"), tag)
    if kind == "tempfile":
        f = tempfile.TemporaryFile()
        f.write(_read(name))  # no flush: the tail stays in the write buffer
        f.seek(0)
        return instrument_close(f, tag)
    if kind == "named":
        f = tempfile.NamedTemporaryFile()
        f.write(_read(name))
        f.seek(0)
        return instrument_close(f, tag)
    if kind == "bytesio":
        return instrument_close(io.BytesIO(_read(name)), tag)
    if kind == "gzip":
        return instrument_close(gzip.GzipFile(path + ".gz", "rb"), tag)
    if kind == "transform":
        return Transform(open(path, "rb"), tag)
    if kind == "counting":
        return Counting(open(path, "rb"), tag, fail_at)
    if kind == "text":
        return instrument_close(open(path, "r", encoding="latin-1", newline=""), tag)
    if kind == "strseek":
        return Counting(open(path, "rb"), tag, text=True)
    if kind == "pipe":
        return PipeLike(_read(name), tag, fail_at=fail_at)
    if kind == "strpipe":
        return PipeLike(_read(name), tag, text=True)
    if kind == "ospipe":
        return _os_pipe(_read(name), tag)
    raise ValueError(kind)


def _params(environ: dict[str, Any]) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _json(start_response: StartResponse, data: Any) -> list[bytes]:
    body = json.dumps(data).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def _try(call: Callable[[], Any]) -> str:
    try:
        w = call()
    except Exception as exc:  # noqa: BLE001 - reported to the test
        return type(exc).__name__
    close = getattr(w, "close", None)
    if close is not None:
        close()
    return "ok"


def signature(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    fw = environ["wsgi.file_wrapper"]
    return _json(
        start_response,
        {
            "callable": callable(fw),
            "positional_one": _try(lambda: fw(io.BytesIO(b"x"))),
            "positional_two": _try(lambda: fw(io.BytesIO(b"x"), 1024)),
            "keyword_block_size": _try(lambda: fw(io.BytesIO(b"x"), block_size=1024)),
            "keyword_filelike": _try(lambda: fw(filelike=io.BytesIO(b"x"))),
        },
    )


def attrs(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    p = _params(environ)
    f = make_file(p["kind"], p.get("name", "small.bin"), p.get("tag", "attrs"))
    w = environ["wsgi.file_wrapper"](f, 1024)
    result = {a: hasattr(w, a) for a in ("seek", "tell", "seekable", "read", "close")}
    if result["tell"]:
        result["tell_value"] = w.tell()
    w.close()
    return _json(start_response, result)


def _range(p: dict[str, str]) -> tuple[int, int] | None:
    if "range" not in p:
        return None
    a, b = p["range"].split("-")
    return int(a), int(b)


def serve(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    p = _params(environ)
    fail_at = int(p["fail_at"]) if "fail_at" in p else None
    f = make_file(p["kind"], p["name"], p.get("tag", "serve"), fail_at)
    if "offset" in p:
        f.seek(int(p["offset"]))
    if "readahead" in p:
        f.read(int(p["readahead"]))
    headers = [("Content-Type", "application/octet-stream")]
    status = "200 OK"
    rng = _range(p)
    if rng is not None:
        start, end = rng
        size = os.path.getsize(_path(p["name"]))
        f.seek(start)
        status = "206 Partial Content"
        headers += [("Content-Range", f"bytes {start}-{end}/{size}"), ("Content-Length", str(end - start + 1))]
    if "cl" in p:
        headers.append(("Content-Length", p["cl"]))
    if "status" in p:
        status = p["status"]
    start_response(status, headers)
    fw = environ["wsgi.file_wrapper"]
    return fw(f, int(p["block"])) if "block" in p else fw(f)


def range_middleware(app: Callable[..., Any]) -> Callable[..., Any]:
    """Turns the inner app's 200 into a 206 for `range=a-b`, using only the wrapper's
    seek/tell (as Range middleware does), and returns the wrapper itself."""

    def middleware(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            captured["status"], captured["headers"] = status, headers

        it = app(environ, capture)
        start, end = _range(_params(environ)) or (0, 0)
        size = it.seek(0, 2)
        it.seek(start)
        assert it.tell() == start
        headers = [(k, v) for k, v in captured["headers"] if k.lower() != "content-length"]
        headers += [
            ("Content-Range", f"bytes {start}-{end}/{size}"),
            ("Content-Length", str(end - start + 1)),
            ("X-Seekable", str(it.seekable())),
        ]
        start_response("206 Partial Content", headers)
        return it

    return middleware


def _inner_file_app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    p = _params(environ)
    f = make_file(p["kind"], p["name"], p.get("tag", "inner"))
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return environ["wsgi.file_wrapper"](f, int(p.get("block", "32768")))


def generator_middleware(app: Callable[..., Any]) -> Callable[..., Any]:
    """Re-yields the inner app_iter from a generator (so the server never sees the
    wrapper), recording the chunk sizes, and closes the inner app_iter at the end."""

    def middleware(environ: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
        tag = _params(environ).get("tag", "wrapped")
        it = app(environ, start_response)
        try:
            for chunk in it:
                rec = record(tag)
                with _lock:
                    rec.setdefault("chunks", []).append(len(chunk))
                yield chunk
        finally:
            it.close()

    return middleware


ranged = range_middleware(_inner_file_app)
wrapped = generator_middleware(_inner_file_app)


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/stats":
        return _json(start_response, dict(_tapster.stats()))
    if path == "/record":
        rec = record(_params(environ)["tag"])
        with _lock:
            return _json(start_response, json.loads(json.dumps(rec)))
    if path.startswith("/mark/"):
        event(f"mark {path[len('/mark/'):]}")
        return _json(start_response, "ok")
    if path == "/signature":
        return signature(environ, start_response)
    if path == "/attrs":
        return attrs(environ, start_response)
    if path == "/serve" or path.startswith("/serve/"):
        return serve(environ, start_response)
    if path == "/range-mw":
        return ranged(environ, start_response)
    if path == "/wrapped":
        return wrapped(environ, start_response)
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "9")])
    return [b"not found"]

"""Tapster: a WSGI server with an HTTP/1.1 engine written in Rust, and a drop-in
replacement for Waitress (same `serve()` arguments, command-line flags and PasteDeploy
entry point)."""

from __future__ import annotations

import logging
from typing import Any

from tapster._tapster import ClientDisconnected, FileWrapper, __version__
from tapster.server import create_server

__all__ = ["ClientDisconnected", "FileWrapper", "create_server", "serve", "serve_paste", "__version__"]


def serve(app: Any, **kw: Any) -> None:
    """Serves `app` until Ctrl-C or SIGTERM. Takes Waitress's keyword arguments."""
    server_factory = kw.pop("_server", create_server)  # test shim, as in Waitress
    quiet = kw.pop("_quiet", False)
    profile = kw.pop("_profile", False)
    if not quiet:
        logging.basicConfig()
    server = server_factory(app, **kw)
    if not quiet:
        server.print_listen("Serving on http://{}:{}")
    if profile:  # pragma: no cover - a debugging aid
        import cProfile

        cProfile.runctx("server.run()", globals(), {"server": server}, sort="cumulative")
    else:
        server.run()


def serve_paste(app: Any, global_conf: Any, **kw: Any) -> int:
    """The PasteDeploy server runner: `use = egg:tapster#main` in an .ini file."""
    serve(app, **kw)
    return 0

"""Tapster: a WSGI server with an HTTP/1.1 engine written in Rust, and a drop-in
replacement for Waitress (same `serve()` arguments, command-line flags and PasteDeploy
entry point)."""

from __future__ import annotations

import logging
from typing import Any

from tapster._tapster import ClientDisconnected, FileWrapper, __version__
from tapster.adjustments import needs_supervisor
from tapster.options import BY_NAME
from tapster.process import Notifier, pidfile
from tapster.server import create_server

__all__ = ["ClientDisconnected", "FileWrapper", "create_server", "serve", "serve_paste", "__version__"]


def serve(app: Any, **kw: Any) -> None:
    """Serves `app` until Ctrl-C or SIGTERM. Takes Waitress's keyword arguments, and
    Tapster's (`workers=N` forks N worker processes that serve this `app`)."""
    server_factory = kw.pop("_server", create_server)  # test shim, as in Waitress
    quiet = kw.pop("_quiet", False)
    profile = kw.pop("_profile", False)
    if not quiet:
        logging.basicConfig()
    if wants_supervisor(kw):
        from tapster.supervisor import serve_workers

        if serve_workers(kw, app, lambda: app) != 0:
            raise RuntimeError("the workers kept failing at start-up (see the log)")
        return
    server = server_factory(app, **kw)
    if not quiet:
        server.print_listen("Serving on http://{}:{}")
    # systemd's READY=1 and STOPPING=1 (a no-op without NOTIFY_SOCKET).
    server.notifier = Notifier.from_environment()
    with pidfile(kw.get("pidfile")):
        if profile:  # pragma: no cover - a debugging aid
            import cProfile

            cProfile.runctx("server.run()", globals(), {"server": server}, sort="cumulative")
        else:
            server.run()


def wants_supervisor(kw: dict[str, Any]) -> bool:
    """Whether these keyword arguments ask for worker processes under a supervisor."""

    def value(name: str) -> Any:
        option = BY_NAME[name]
        return option.cast(kw[name]) if name in kw else option.default

    return needs_supervisor(
        value("workers"), value("max_requests"), value("max_worker_memory"), value("reload")
    )


def serve_paste(app: Any, global_conf: Any, **kw: Any) -> int:
    """The PasteDeploy server runner: `use = egg:tapster#main` in an .ini file."""
    serve(app, **kw)
    return 0

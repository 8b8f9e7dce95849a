"""A module whose WSGI application is called `app` (and no `application`)."""

from __future__ import annotations

from typing import Any, Callable, Iterable


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"app only"]

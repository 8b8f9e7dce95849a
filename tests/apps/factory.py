"""An application factory for `--call`: `make_app()` returns a WSGI app.

`make_app` itself is not a usable WSGI application (it takes no arguments), so a
server that forgets to call it fails every request; the app it returns answers
with a body that says it came from the factory and how many times the factory ran.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

StartResponse = Callable[..., Any]

factory_calls = 0


def make_app() -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    global factory_calls
    factory_calls += 1
    made = factory_calls

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        body = f"from factory (made {made})".encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    return app

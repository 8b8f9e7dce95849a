"""Shared fixtures: servers running the behaviours app through the real CLI."""

from __future__ import annotations

from typing import Iterator

import pytest

from support import ServerProcess


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """A server with default options, shared by a test module."""
    srv = ServerProcess("apps.behaviors:app", "--expose-tracebacks")
    yield srv
    srv.stop()


@pytest.fixture
def make_server() -> Iterator:
    """Starts servers with custom options; stops them after the test."""
    started: list[ServerProcess] = []

    def start(*args: str, app: str = "apps.behaviors:app", **kw) -> ServerProcess:
        srv = ServerProcess(app, *args, **kw)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()

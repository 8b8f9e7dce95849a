"""Shared fixtures: servers running the behaviours app through the real CLI."""

from __future__ import annotations

from typing import Iterator

import pytest

from support import OVER_H2, ServerProcess


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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "http1_only(why): a test of HTTP/1.1 itself (framing, connection handling), skipped "
        "when the suites run over HTTP/2 (TAPSTER_TEST_TRANSPORT=h2)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not OVER_H2:
        return
    for item in items:
        marker = item.get_closest_marker("http1_only")
        if marker is not None:
            item.add_marker(pytest.mark.skip(reason=f"HTTP/1.1 only: {marker.args[0]}"))

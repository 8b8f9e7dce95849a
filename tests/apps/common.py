"""What several test apps share: event lines the tests wait for in the server's
output, and environ values made JSON-safe."""

from __future__ import annotations

from typing import Any


def event(text: str) -> None:
    """Prints `EVENT text`; tests find it with ServerProcess.wait_for_log."""
    print(f"EVENT {text}", flush=True)


def json_safe(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, tuple):
        return [json_safe(v) for v in value]
    return f"<{type(value).__name__}>"

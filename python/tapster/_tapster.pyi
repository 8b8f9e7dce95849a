"""Type stubs for the Rust extension module."""

from typing import Any, Callable, Iterator, Optional, Sequence

__version__: str
#: The options `Server` accepts.
ENGINE_OPTIONS: list[str]
#: Apache's combined access-log format in Gunicorn's atoms.
ACCESS_LOG_COMBINED: str

class ClientDisconnected(Exception):
    """The client closed the connection before the response was delivered."""

class EngineConfig:
    """The engine options, validated once: every name of ENGINE_OPTIONS with its cast
    value. Raises ValueError naming the bad option."""

    def __init__(self, options: dict[str, Any]) -> None: ...

class Server:
    """The engine: built with the application, the validated options and the bound
    listening sockets `(fileno, "tcp" | "unix", server_port, sharing)`, where sharing
    is `owned`, `inherited` or `workers`."""

    def __init__(
        self,
        app: Callable[..., Any],
        options: EngineConfig,
        listeners: Sequence[tuple[int, str, str, str, str]],
        metrics: int | None = None,
    ) -> None: ...
    def run(
        self,
        tick: Callable[[], None] | None = None,
        max_requests: int = 0,
        wakeup_fd: int = -1,
        report_fd: int = -1,
    ) -> None:
        """Serves until `close()`, a signal handler or `tick` raises; then shuts down.
        `tick` is called once serving starts, then about every 100 ms and at once when
        `max_requests` (0: none) is reached; from then on responses close.
        `report_fd`: a worker's pipe to its supervisor (request_timeout answers 504
        and asks for a replacement there)."""
    def close(self) -> None:
        """Asks `run()` to stop; safe from any thread, and before `run()`."""
    def reopen_logs(self) -> None:
        """Reopens the access log file at its path (SIGUSR1)."""
    def reload_certificates(self) -> bool:
        """Reads the TLS files again (SIGHUP); False without TLS. ValueError (naming
        the file) when one does not read: the previous ones stay in use."""

class FileWrapper:
    """`wsgi.file_wrapper`: `(filelike, block_size=32768)`, positional only."""

    filelike: Any
    block_size: int
    def __init__(self, filelike: Any, block_size: int = 32768, /) -> None: ...
    def __iter__(self) -> Iterator[bytes]: ...
    def __next__(self) -> bytes: ...
    def close(self) -> None: ...

class InputStream:
    """`wsgi.input`: the request body, seekable and read-only."""

    closed: bool
    def read(self, size: Optional[int] = None) -> bytes: ...
    def read1(self, size: Optional[int] = None) -> bytes: ...
    def readinto(self, buffer: Any) -> int: ...
    def readline(self, size: Optional[int] = None) -> bytes: ...
    def readlines(self, hint: Optional[int] = None) -> list[bytes]: ...
    def __iter__(self) -> "InputStream": ...
    def __next__(self) -> bytes: ...
    def seek(self, offset: int, whence: int = 0) -> int: ...
    def tell(self) -> int: ...
    def seekable(self) -> bool: ...
    def readable(self) -> bool: ...
    def writable(self) -> bool: ...
    def close(self) -> None: ...

def stats() -> dict[str, int]:
    """Process-wide counters: `requests` (handed to the application),
    `sendfile_responses` and `sendfile_bytes` (file bodies sent with the kernel's
    sendfile(2); not those read and sent under TLS or HTTP/2), `request_timeouts` and
    `abandoned_threads` (worker threads a shutdown left inside the application)."""

def metrics_create(supervisor_pid: int) -> None:
    """Makes the metrics region shared with processes forked from now on."""
def metrics_free_slot(taken: list[int]) -> int | None: ...
def metrics_attach(slot: int) -> None: ...
def metrics_release(slot: int) -> None: ...
def metrics_worker_started() -> None: ...
def metrics_worker_exited(reason: str) -> None: ...
def metrics_text() -> str | None:
    """The Prometheus text `/metrics` serves (None: no metrics in this process)."""

class FileWatcher:
    """An inotify watch on files (their directories), for `reload`."""

    def __init__(self, files: list[str]) -> None: ...
    def changed(self) -> list[str]:
        """The watched files changed since the last call (never blocks)."""

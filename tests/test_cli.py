"""The command line: `python -m tapster` and the `tapster` console script, run as child
processes from the tests directory (so `apps.behaviors:app` is importable only because
the runner puts the working directory on sys.path).

Covers waitress-serve's grammar (help, errors and exit codes, getopt prefixes,
repeatable --listen, boolean negations, --call, both object-path forms), the
"Serving on" log line, and graceful shutdown on SIGTERM and SIGINT.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from support import CapturedProcess, RawConn, echo_environ, has_ipv6_loopback, http_get

TESTS_DIR = Path(__file__).resolve().parent
SCRIPT = Path(sys.prefix) / "bin" / "tapster"
APP = "apps.behaviors:app"
SERVING = re.compile(r"Serving on http://(.+):(\d+)$")

#: How each test can start Tapster: the module and the console script.
COMMANDS: dict[str, list[str]] = {
    "module": [sys.executable, "-m", "tapster"],
    "script": [str(SCRIPT)],
}

#: Every option Waitress's CLI accepts (the CLI spelling of each adjustment except
#: `sockets`), plus Tapster's own, each as it appears in --help.
VALUE_OPTIONS = [
    "host", "port", "listen", "threads", "trusted-proxy", "trusted-proxy-count",
    "trusted-proxy-headers", "url-scheme", "url-prefix", "backlog", "recv-bytes",
    "send-bytes", "outbuf-overflow", "outbuf-high-watermark", "inbuf-overflow",
    "connection-limit", "cleanup-interval", "channel-timeout", "max-request-header-size",
    "max-request-body-size", "ident", "asyncore-loop-timeout", "unix-socket",
    "unix-socket-perms", "channel-request-lookahead", "server-name",
    # Tapster's own.
    "io-threads", "header-timeout", "max-request-line-size", "max-request-headers",
    "shutdown-timeout",
]  # fmt: skip
BOOLEAN_OPTIONS = [
    "ipv4", "ipv6", "log-untrusted-proxy-headers", "clear-untrusted-proxy-headers",
    "log-socket-errors", "expose-tracebacks", "asyncore-use-poll",
]  # fmt: skip


def child_env() -> dict[str, str]:
    """The environment without PYTHONPATH: imports of `apps` must rely on the cwd."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(*args: str, command: str = "module", timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Runs a command that is expected to exit by itself."""
    return subprocess.run(
        COMMANDS[command] + list(args),
        cwd=TESTS_DIR,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class CliServer(CapturedProcess):
    """A serving `tapster` process with its stdout and stderr captured together."""

    def __init__(self, *args: str, command: str = "module") -> None:
        super().__init__(COMMANDS[command] + list(args), child_env())

    def wait_serving(self, count: int = 1, timeout: float = 15.0) -> list[tuple[str, int]]:
        """Waits for `count` "Serving on" lines; returns their (host, port)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for m in (SERVING.search(line) for line in self.lines()) if m]
            if len(found) >= count:
                return [(m.group(1), int(m.group(2))) for m in found]
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"no {count} 'Serving on' line(s) from {self.cmd}:\n{self.log()}")

    def signal(self, sig: int) -> float:
        """Sends `sig`; returns the moment it was sent (time.monotonic)."""
        sent = time.monotonic()
        self.proc.send_signal(sig)
        return sent

    def wait_exit(self, timeout: float = 10.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.cmd} still running after {timeout} s:\n{self.log()}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)


StartFn = Callable[..., "CliServer"]


@pytest.fixture
def start() -> Iterator[StartFn]:
    """Starts `tapster` processes; kills any still running after the test."""
    started: list[CliServer] = []

    def _start(*args: str, command: str = "module") -> CliServer:
        srv = CliServer(*args, command=command)
        started.append(srv)
        return srv

    yield _start
    for srv in started:
        srv.kill()


# --- help, usage errors and exit codes -------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_help_lists_every_option_on_stdout(command: str) -> None:
    result = run_cli("--help", command=command)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = result.stdout
    assert "Usage" in out
    assert "MODULE:OBJECT" in out
    for flag in ("--help", "--call"):
        assert flag in out
    for name in VALUE_OPTIONS:
        assert re.search(rf"--{name}=", out), f"--{name}= missing from --help"
    for name in BOOLEAN_OPTIONS:
        assert re.search(rf"--{name}\b", out), f"--{name} missing from --help"
        assert re.search(rf"--no-{name}\b", out), f"--no-{name} missing from --help"


@pytest.mark.parametrize("command", COMMANDS)
def test_unknown_option_prints_one_error_line_and_a_pointer_to_help(command: str) -> None:
    result = run_cli("--bogus", APP, command=command)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "Error: option --bogus not recognized",
        "Try 'tapster --help' for more information.",
    ]
    assert result.stdout == ""


def test_unknown_option_with_value_is_not_recognized() -> None:
    result = run_cli("--bogus=1", APP)
    assert result.returncode == 1
    assert "Error: option --bogus not recognized" in result.stderr


def test_ambiguous_prefix_is_an_error() -> None:
    # getopt: "--max-request" is a prefix of three options.
    result = run_cli("--max-request=10", APP)
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == "Error: option --max-request not a unique prefix"
    assert "Try 'tapster --help'" in result.stderr and "Usage" not in result.stderr


@pytest.mark.parametrize("prefix", ["--p=8080", "--co=10"])
def test_prefixes_that_tapsters_own_options_make_ambiguous(prefix: str) -> None:
    # README difference: waitress-serve reads --p as --port and --co as
    # --connection-limit; Tapster also has --pythonpath and --config.
    result = run_cli(prefix, APP)
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == f"Error: option {prefix.split('=')[0]} not a unique prefix"


def test_boolean_option_takes_no_value() -> None:
    result = run_cli("--expose-tracebacks=yes", APP)
    assert result.returncode == 1
    assert "Error: option --expose-tracebacks must not have an argument" in result.stderr


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    "args",
    [
        pytest.param([], id="no-app"),
        pytest.param(["--threads=2"], id="options-only"),
        pytest.param([APP, "apps.factory:make_app"], id="two-apps"),
        # getopt stops at the first positional argument, so a trailing option counts
        # as a second application.
        pytest.param([APP, "--threads=2"], id="option-after-app"),
    ],
)
def test_specify_one_application_only(command: str, args: list[str]) -> None:
    result = run_cli(*args, command=command)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "Error: Specify one application only",
        "Try 'tapster --help' for more information.",
    ]
    assert "Serving on" not in result.stdout + result.stderr


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    ("spec", "exception", "argument"),
    [
        ("apps.no_such_module:app", "ModuleNotFoundError", "No module named 'apps.no_such_module'"),
        ("no_such_package.wsgi:app", "ModuleNotFoundError", "No module named 'no_such_package'"),
        ("apps.behaviors:no_such_app", "AttributeError", "no_such_app"),
        ("apps.behaviors.no_such_app", "(ImportError|ModuleNotFoundError|AttributeError)", "no_such_app"),
    ],
)
def test_unimportable_application(command: str, spec: str, exception: str, argument: str) -> None:
    result = run_cli(spec, command=command)
    assert result.returncode == 1
    err = result.stderr
    # The import error's own text first (as waitress-serve), then Waitress's account.
    assert re.match(r"Error: .*" + re.escape(argument), err.splitlines()[0]), err
    assert "Usage" not in err
    assert re.search(rf"There was an exception \({exception}\) importing your module\.", err), err
    assert "It had these arguments:" in err
    assert re.search(r"^1\. .*" + re.escape(argument), err, re.M), err
    assert "Serving on" not in result.stdout + err


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--threads=abc", "invalid literal for int()"),
        ("--listen=nonsense:::", "Invalid host/port specified."),
        ("--port=http", "invalid literal for int()"),
        ("--listen=127.0.0.1:notaport", "Invalid host/port specified."),
        ("--unix-socket-perms=999", "invalid literal for int() with base 8"),
        ("--trusted-proxy-headers=x-forwarded-for", "trusted_proxy_headers has no meaning without setting trusted_proxy"),
        ("--trusted-proxy-count=2", "trusted_proxy_count has no meaning without setting trusted_proxy"),
    ],
)
def test_invalid_option_value_fails_with_one_error_line(command: str, option: str, message: str) -> None:
    result = run_cli(option, APP, command=command)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: ") and message in line, result.stderr
    assert "Serving on" not in result.stdout + result.stderr


def test_conflicting_host_and_listen_fails() -> None:
    result = run_cli("--host=127.0.0.1", "--listen=127.0.0.1:0", APP)
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["Error: host or port may not be set if listen is set."]


# --- serving ------------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_cwd_is_on_sys_path(start: StartFn, command: str) -> None:
    # No PYTHONPATH: `apps` is importable only because the runner adds the cwd.
    srv = start("--listen=127.0.0.1:0", APP, command=command)
    [(host, port)] = srv.wait_serving()
    environ = echo_environ(host, port)
    assert environ["PATH_INFO"] == "/echo"
    assert srv.proc.poll() is None


@pytest.mark.parametrize("command", COMMANDS)
def test_serving_line_is_logged_at_info(start: StartFn, command: str) -> None:
    srv = start("--listen=127.0.0.1:0", APP, command=command)
    [(host, port)] = srv.wait_serving()
    assert host == "127.0.0.1"
    line = next(line for line in srv.lines() if "Serving on" in line)
    assert re.fullmatch(
        rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d{{3}} \[{srv.proc.pid}\] \[INFO\] tapster: "
        rf"Serving on http://127\.0\.0\.1:{port}",
        line,
    ), line
    assert http_get(host, port)[0] == 200


def test_host_and_port_options(start: StartFn) -> None:
    srv = start("--port=0", "--host=127.0.0.1", APP)
    [(host, port)] = srv.wait_serving()
    assert host == "127.0.0.1"
    assert port > 0
    environ = echo_environ(host, port)
    assert environ["SERVER_PORT"] == str(port)


@pytest.mark.parametrize("spec", ["apps.behaviors:app", "apps.behaviors.app"])
def test_object_path_forms(start: StartFn, spec: str) -> None:
    srv = start("--listen=127.0.0.1:0", spec)
    [(host, port)] = srv.wait_serving()
    status, _, body = http_get(host, port, "/list?n=2&size=3")
    assert (status, body) == (200, b"aaabbb")


@pytest.mark.parametrize("command", COMMANDS)
def test_call_uses_the_factory_result(start: StartFn, command: str) -> None:
    srv = start("--listen=127.0.0.1:0", "--call", "apps.factory:make_app", command=command)
    [(host, port)] = srv.wait_serving()
    status, _, body = http_get(host, port, "/")
    assert (status, body) == (200, b"from factory (made 1)")
    # The factory ran once, not per request.
    assert http_get(host, port, "/")[2] == b"from factory (made 1)"


def test_listen_is_repeatable(start: StartFn) -> None:
    srv = start("--listen=127.0.0.1:0", "--listen=127.0.0.1:0", APP)
    endpoints = srv.wait_serving(2)
    assert len(endpoints) == 2
    ports = {port for _, port in endpoints}
    assert len(ports) == 2
    for host, port in endpoints:
        assert host == "127.0.0.1"
        environ = echo_environ(host, port)
        assert environ["SERVER_PORT"] == str(port)


def test_listen_accepts_several_entries_in_one_value(start: StartFn) -> None:
    srv = start("--listen=127.0.0.1:0 127.0.0.1:0", APP)
    endpoints = srv.wait_serving(2)
    for host, port in endpoints:
        assert http_get(host, port)[0] == 200


def test_all_interfaces_binds_both_families(start: StartFn) -> None:
    if not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    srv = start("--listen=*:0", APP)
    endpoints = srv.wait_serving(2)
    assert sorted(host.strip("[]") for host, _ in endpoints) == ["0.0.0.0", "::"]


def _only_one_serving_line(srv: CliServer) -> tuple[str, int]:
    [(host, port)] = srv.wait_serving()
    time.sleep(0.3)  # a second "Serving on" line would have arrived by now
    [(host, port)] = srv.wait_serving()
    return host.strip("[]"), port


def test_no_ipv6_binds_only_ipv4(start: StartFn) -> None:
    if not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    srv = start("--listen=*:0", "--no-ipv6", APP)
    host, port = _only_one_serving_line(srv)
    assert host == "0.0.0.0"
    assert http_get("127.0.0.1", port)[0] == 200
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("::1", port), timeout=2).close()


def test_no_ipv4_binds_only_ipv6(start: StartFn) -> None:
    if not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    srv = start("--listen=*:0", "--no-ipv4", APP)
    host, port = _only_one_serving_line(srv)
    assert host == "::"
    assert http_get("::1", port)[0] == 200
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_no_ipv6_rejects_an_ipv6_listen_entry() -> None:
    result = run_cli("--listen=[::1]:0", "--no-ipv6", APP)
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["Error: Invalid host/port specified."], result.stderr


def test_unique_prefixes_are_accepted(start: StartFn) -> None:
    # --thr is --threads, --ide is --ident, --lis is --listen, --expose is --expose-tracebacks.
    srv = start("--lis=127.0.0.1:0", "--thr=2", "--ide=prefixed", "--expose", APP)
    [(host, port)] = srv.wait_serving()
    status, headers, _ = http_get(host, port)
    assert status == 200
    assert headers["Server"] == "prefixed"
    status, _, body = http_get(host, port, "/error/before")
    assert status == 500
    assert b"boom before start_response" in body


def _concurrent_sleeps(host: str, port: int, count: int, seconds: float) -> float:
    """Runs `count` /sleep requests at once; returns the wall time they took."""
    results: list[int] = []

    def one() -> None:
        results.append(http_get(host, port, f"/sleep?s={seconds}", timeout=10)[0])

    threads = [threading.Thread(target=one) for _ in range(count)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert results == [200] * count
    return time.monotonic() - began


def test_threads_option_bounds_concurrency(start: StartFn) -> None:
    one = start("--listen=127.0.0.1:0", "--threads=1", APP)
    two = start("--listen=127.0.0.1:0", "--thr=2", APP)
    [(h1, p1)] = one.wait_serving()
    [(h2, p2)] = two.wait_serving()
    assert _concurrent_sleeps(h1, p1, 2, 0.6) >= 1.15  # one at a time
    assert _concurrent_sleeps(h2, p2, 2, 0.6) < 1.1  # both at once


def test_boolean_negation_wins_when_last(start: StartFn) -> None:
    on = start("--listen=127.0.0.1:0", "--no-expose-tracebacks", "--expose-tracebacks", APP)
    off = start("--listen=127.0.0.1:0", "--expose-tracebacks", "--no-expose-tracebacks", APP)
    [(h_on, p_on)] = on.wait_serving()
    [(h_off, p_off)] = off.wait_serving()
    status, _, body = http_get(h_on, p_on, "/error/before")
    assert status == 500 and b"boom before start_response" in body
    status, _, body = http_get(h_off, p_off, "/error/before")
    assert status == 500 and b"boom before start_response" not in body


def test_empty_ident_sends_no_server_header(start: StartFn) -> None:
    srv = start("--listen=127.0.0.1:0", "--ident=", APP)
    [(host, port)] = srv.wait_serving()
    status, headers, _ = http_get(host, port)
    assert status == 200
    assert headers.get("Server") is None


def test_url_prefix_option(start: StartFn) -> None:
    srv = start("--listen=127.0.0.1:0", "--url-prefix=/mount/", APP)
    [(host, port)] = srv.wait_serving()
    environ = echo_environ(host, port, "/mount/echo")
    assert environ["SCRIPT_NAME"] == "/mount"
    assert environ["PATH_INFO"] == "/echo"


# --- signals and graceful shutdown --------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_while_idle_exits_zero_promptly(start: StartFn, command: str, sig: int) -> None:
    srv = start("--listen=127.0.0.1:0", APP, command=command)
    [(host, port)] = srv.wait_serving()
    assert http_get(host, port)[0] == 200
    sent = srv.signal(sig)
    assert srv.wait_exit() == 0
    assert time.monotonic() - sent < 3.0
    assert "Traceback" not in srv.log()


def _start_slow_request(host: str, port: int, seconds: float) -> RawConn:
    conn = RawConn(socket.create_connection((host, port), timeout=10))
    conn.send(f"GET /sleep?s={seconds} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    return conn


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_request_in_flight_completes_after_signal(start: StartFn, sig: int) -> None:
    srv = start("--listen=127.0.0.1:0", APP)
    [(host, port)] = srv.wait_serving()
    with _start_slow_request(host, port, 1.5) as slow:
        time.sleep(0.4)  # the application is now sleeping
        sent = srv.signal(sig)
        resp = slow.read_response()
        assert resp.status == 200
        assert resp.body == b"slept"
    assert srv.wait_exit() == 0
    # The process exits once the request is done, well before shutdown_timeout (5 s).
    assert time.monotonic() - sent < 3.0


def test_new_connections_are_refused_once_shutdown_begins(start: StartFn) -> None:
    srv = start("--listen=127.0.0.1:0", APP)
    [(host, port)] = srv.wait_serving()
    with _start_slow_request(host, port, 1.5) as slow:
        time.sleep(0.4)
        srv.signal(signal.SIGTERM)
        time.sleep(0.3)
        assert srv.proc.poll() is None  # still finishing the slow request
        # A new client must not be served, and must be told so at once (connection
        # refused, or accepted and closed without a response), not left hanging.
        try:
            late = socket.create_connection((host, port), timeout=2)
        except ConnectionRefusedError:
            pass
        else:
            with RawConn(late) as conn:
                conn.send(b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n")
                assert conn.is_closed(1.0), "a connection made after SIGTERM was left open"
                assert conn.buf == b""
        assert slow.read_response().status == 200
    assert srv.wait_exit() == 0


def _idle_keep_alive_connection(host: str, port: int) -> RawConn:
    """A connection left idle after one complete HTTP/1.1 response. The request takes
    the application a moment (as real ones do: a database query, a template), so the
    response is complete only after the server has started waiting for it."""
    conn = RawConn(socket.create_connection((host, port), timeout=10))
    conn.send(b"GET /sleep?s=0.05 HTTP/1.1\r\nHost: t\r\n\r\n")
    resp = conn.read_response()
    assert resp.status == 200
    assert resp.header("Connection") is None  # kept alive
    return conn


def test_idle_keep_alive_connection_closed_at_shutdown(start: StartFn) -> None:
    srv = start("--listen=127.0.0.1:0", APP)
    [(host, port)] = srv.wait_serving()
    with _idle_keep_alive_connection(host, port) as idle:
        with _start_slow_request(host, port, 2.0) as slow:
            time.sleep(0.4)
            sent = srv.signal(signal.SIGTERM)
            # Closed at shutdown, while the slow request is still running.
            assert idle.is_closed(1.0), "idle keep-alive connection still open 1 s after SIGTERM"
            assert time.monotonic() - sent < 1.5
            assert slow.read_response().status == 200
    assert srv.wait_exit() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_idle_keep_alive_connection_does_not_delay_exit(start: StartFn, sig: int) -> None:
    srv = start("--listen=127.0.0.1:0", APP)
    [(host, port)] = srv.wait_serving()
    with _idle_keep_alive_connection(host, port) as idle:
        sent = srv.signal(sig)
        assert srv.wait_exit() == 0
        elapsed = time.monotonic() - sent
        assert elapsed < 3.0, f"exit took {elapsed:.1f} s with one idle keep-alive connection"
        assert idle.is_closed(1.0)


def test_shutdown_timeout_bounds_the_wait_for_requests(start: StartFn) -> None:
    srv = start("--listen=127.0.0.1:0", "--shutdown-timeout=0.5", APP)
    [(host, port)] = srv.wait_serving()
    with _start_slow_request(host, port, 4.0) as slow:
        time.sleep(0.3)
        sent = srv.signal(signal.SIGTERM)
        assert srv.wait_exit() == 0
        assert time.monotonic() - sent < 2.5
        assert slow.is_closed(1.0)

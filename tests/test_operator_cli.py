"""The command line as an operator meets it, through real child processes: help into a
pipe that closes early, -h and --version, sections in --help, ports out of range,
MODULE without :OBJECT, --log-level and the log format, the start-up warnings,
--config, --chdir, --pythonpath, --user/--group/--umask."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from support import CapturedProcess, http_get
from test_cli import APP, COMMANDS, TESTS_DIR, CliServer, child_env, run_cli

import tapster
from tapster.options import SECTIONS

#: A log line in the command's format: time, [pid], [LEVEL], logger: message.
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \[(\d+)\] \[([A-Z]+)\] ([\w.]+): (.*)$")


class Served(CliServer):
    """`python -m tapster ARGS` from the tests directory, optionally run under `prefix`
    (a command that execs the rest, such as prlimit: the pid stays the server's)."""

    def __init__(self, *args: str, prefix: tuple[str, ...] = ()) -> None:
        CapturedProcess.__init__(self, list(prefix) + COMMANDS["module"] + list(args), child_env())

    def serving(self, timeout: float = 15.0) -> tuple[str, int]:
        [(host, port)] = self.wait_serving(timeout=timeout)
        return host, port

    def stop(self) -> int:
        self.signal(signal.SIGTERM)
        status = self.wait_exit()
        self._reader.join(timeout=5)
        return status


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def _serve(*args: str, **kw: Any) -> Served:
        srv = Served(*args, **kw)
        started.append(srv)
        return srv

    yield _serve
    for srv in started:
        srv.kill()


def get_json(host: str, port: int, path: str = "/") -> dict[str, Any]:
    """The JSON body of a 200 response."""
    status, _, body = http_get(host, port, path)
    assert status == 200, body
    return json.loads(body)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- 1. command-line bugs --------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_help_into_a_pipe_whose_reader_has_gone_exits_zero_quietly(command: str) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader (`head`) has already exited
    try:
        proc = subprocess.run(
            COMMANDS[command] + ["--help"], cwd=TESTS_DIR, env=child_env(), stdin=subprocess.DEVNULL,
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=20,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert proc.returncode == 0
    assert proc.stderr == ""


def test_help_piped_into_head() -> None:
    cmd = " ".join(COMMANDS["module"]) + " --help | head -3; echo status=${PIPESTATUS[0]}"
    proc = subprocess.run(["bash", "-c", cmd], cwd=TESTS_DIR, env=child_env(), capture_output=True, text=True, timeout=20)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("Usage: tapster") and lines[-1] == "status=0" and len(lines) == 4
    assert proc.stderr == ""


@pytest.mark.parametrize(
    ("option", "error"),
    [
        ("--port=99999", "Error: port must be 0 to 65535, not 99999"),
        ("--port=65536", "Error: port must be 0 to 65535, not 65536"),
        ("--listen=127.0.0.1:99999", "Error: listen entry '127.0.0.1:99999': port must be 0 to 65535, not 99999"),
        ("--listen=[::1]:70000", "Error: listen entry '[::1]:70000': port must be 0 to 65535, not 70000"),
    ],
)
def test_a_port_out_of_range_is_refused_at_start_up(option: str, error: str) -> None:
    result = run_cli(option, APP)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [error]
    assert "Serving on" not in result.stdout + result.stderr


def test_module_alone_serves_its_application_before_its_app(serve: Callable[..., Served]) -> None:
    srv = serve("--listen=127.0.0.1:0", "apps.whoami")
    assert get_json(*srv.serving())["which"] == "application"


def test_module_alone_serves_its_app_when_it_has_no_application(serve: Callable[..., Served]) -> None:
    srv = serve("--listen=127.0.0.1:0", "apps.app_only")
    host, port = srv.serving()
    assert http_get(host, port, "/")[::2] == (200, b"app only")


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("apps.no_app", "Error: module 'apps.no_app' has no 'application' or 'app' object: name the application, as in apps.no_app:OBJECT"),
        ("apps.not_callable", "Error: apps.not_callable:app is not a WSGI application: a str is not callable"),
        ("apps.not_callable:app", "Error: apps.not_callable:app is not a WSGI application: a str is not callable"),
    ],
)
def test_no_application_or_a_non_callable_one_is_refused_at_start_up(spec: str, error: str) -> None:
    result = run_cli("--listen=127.0.0.1:0", spec)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [error]


def test_an_unimportable_module_is_the_first_line_of_stderr() -> None:
    result = run_cli("apps.no_such_module:app")
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == "Error: No module named 'apps.no_such_module'"


def test_a_bad_value_names_its_option() -> None:
    result = run_cli("--threads=abc", APP)
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["Error: --threads=abc: invalid literal for int() with base 10: 'abc'"]


# --- 2. help that reads well ---------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_h_and_help_show_the_options_by_section(flag: str) -> None:
    result = run_cli(flag)
    assert result.returncode == 0 and result.stderr == ""
    out = result.stdout
    titles = [title for _, title in SECTIONS]
    positions = [out.index(f"\n{title}:\n") for title in titles]
    assert positions == sorted(positions)
    compat = out[out.index("\nCompatibility options with no effect"):]
    for flag_name in ("--asyncore-loop-timeout=", "--asyncore-use-poll", "--send-bytes=", "--cleanup-interval=", "--channel-request-lookahead="):
        assert flag_name in compat
    assert "--threads=" not in compat
    process = out[out.index("\nProcess (command line only):"):out.index("\nCompatibility")]
    for flag_name in ("--config=", "--chdir=", "--pythonpath=", "--user=", "--group=", "--umask="):
        assert flag_name in process
    assert "--log-level=" in out[out.index("\nLogging:"):]
    # Defaults as a user writes them: no Python reprs, no backticks.
    defaults = re.findall(r"Default: (.*)\.$", out, re.M)
    assert defaults and not [d for d in defaults if re.search(r"None|True|False|\[|\{|`|set\(", d)]
    assert "Default: 0.0.0.0:8080." in out and "Default: 600." in out and "Default: info." in out


def test_version() -> None:
    result = run_cli("--version")
    assert (result.returncode, result.stdout, result.stderr) == (0, f"tapster {tapster.__version__}\n", "")


# --- 3. logging ------------------------------------------------------------------------------------


def test_log_format_and_shutdown_lines(serve: Callable[..., Served]) -> None:
    srv = serve("--listen=127.0.0.1:0", APP)
    host, port = srv.serving()
    assert http_get(host, port)[0] == 200
    assert srv.stop() == 0
    logged = [LOG_LINE.match(line) for line in srv.lines()]
    assert all(logged), srv.log()
    records = [(m.group(2), m.group(3), m.group(4)) for m in logged if m]
    assert {m.group(1) for m in logged if m} == {str(srv.proc.pid)}
    assert records == [
        ("INFO", "tapster", f"Serving on http://127.0.0.1:{port}"),
        ("INFO", "tapster", "Shutting down: no longer accepting connections"),
        ("INFO", "tapster", "Server stopped"),
    ]


def test_log_level_debug_shows_debug_lines(serve: Callable[..., Served]) -> None:
    srv = serve("--log-level=debug", "--listen=127.0.0.1:0", "--cleanup-interval=5", APP)
    srv.serving()
    line = srv.wait_for_log(r"option cleanup_interval has no effect")
    assert "[DEBUG] tapster: option cleanup_interval has no effect in Tapster" in line


def test_log_level_warning_hides_info_lines(serve: Callable[..., Served]) -> None:
    port = free_port()
    srv = serve("--log-level=WARNING", f"--listen=127.0.0.1:{port}", APP)
    deadline = time.monotonic() + 15
    while True:
        try:
            assert http_get("127.0.0.1", port)[0] == 200
            break
        except OSError:
            assert time.monotonic() < deadline and srv.proc.poll() is None, srv.log()
            time.sleep(0.05)
    assert srv.stop() == 0
    assert srv.lines() == []


def test_a_bad_log_level_is_refused() -> None:
    result = run_cli("--log-level=loud", APP)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "Error: --log-level=loud: log_level must be one of debug, info, warning, error, not 'loud'"
    ]


def test_trusted_proxy_without_headers_logs_a_warning(serve: Callable[..., Served]) -> None:
    srv = serve("--listen=127.0.0.1:0", "--trusted-proxy=127.0.0.1", APP)
    srv.serving()
    line = srv.wait_for_log(r"No proxy headers were marked as trusted")
    assert "[WARNING] tapster: No proxy headers were marked as trusted, but trusted_proxy was set." in line


#: Runs the server with an open-file limit of 300 (soft and hard).
LOW_FD_LIMIT = ("prlimit", "--nofile=300:300")


def test_connection_limit_beyond_the_open_file_limit_logs_a_warning(serve: Callable[..., Served]) -> None:
    srv = serve("--listen=127.0.0.1:0", "--connection-limit=1000", APP, prefix=LOW_FD_LIMIT)
    srv.serving()
    line = srv.wait_for_log(r"\[WARNING\] tapster: connection_limit=1000 needs")
    assert "needs up to 2256 open files, but the open-file limit is 300 (hard limit 300)" in line


def test_no_fd_warning_when_the_limit_suffices(serve: Callable[..., Served]) -> None:
    srv = serve("--listen=127.0.0.1:0", "--connection-limit=10", APP, prefix=LOW_FD_LIMIT)
    srv.serving()
    assert not [line for line in srv.lines() if "open-file limit" in line]


# --- 4. configuration and placement --------------------------------------------------------------


def test_config_file_with_natural_toml_values(serve: Callable[..., Served], tmp_path: Path) -> None:
    config = tmp_path / "tapster.toml"
    config.write_text(
        'listen = ["127.0.0.1:0"]\nthreads = 2\nident = "from-file"\nexpose_tracebacks = true\n'
        'url_prefix = "/mount"\nheader_timeout = 2.5\nlog_level = "debug"\n'
    )
    srv = serve(f"--config={config}", APP)
    host, port = srv.serving()
    status, headers, body = http_get(host, port, "/mount/error/before")
    assert status == 500 and b"boom before start_response" in body  # expose_tracebacks
    assert headers["Server"] == "from-file"
    environ = json.loads(http_get(host, port, "/mount/echo")[2])["environ"]
    assert environ["SCRIPT_NAME"] == "/mount"


def test_the_command_line_overrides_the_config_file(serve: Callable[..., Served], tmp_path: Path) -> None:
    config = tmp_path / "tapster.toml"
    config.write_text('host = "127.0.0.1"\nport = 1\nident = "from-file"\n')
    srv = serve(f"--config={config}", "--ident=from-cli", "--listen=127.0.0.1:0", APP)
    host, port = srv.serving()
    assert port != 1
    assert http_get(host, port)[1]["Server"] == "from-cli"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("bogus = 1\n", "Error: {path}: unknown option 'bogus'"),
        ("sockets = []\n", "Error: {path}: unknown option 'sockets'"),
        ('threads = "many"\n', "Error: {path}: option threads: invalid literal for int() with base 10: 'many'"),
        ("threads = true\n", "Error: {path}: option threads: threads takes a value, not a boolean"),
        ("[section]\nthreads = 1\n", "Error: {path}: unknown option 'section'"),
        ("threads = \n", "Error: {path}: not valid TOML: "),
        ('host = ["127.0.0.1"]\n', "Error: {path}: option host takes one value, not an array"),
        ("unix_socket_perms = 660\n", "Error: {path}: option unix_socket_perms: 660 is not an octal string"),
    ],
)
def test_config_file_errors_name_the_file_and_the_option(tmp_path: Path, text: str, error: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    result = run_cli(f"--config={config}", APP)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(error.format(path=config)), line


def test_a_missing_config_file_is_refused(tmp_path: Path) -> None:
    result = run_cli(f"--config={tmp_path}/none.toml", APP)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"Error: --config={tmp_path}/none.toml: No such file or directory"]


def test_chdir_and_pythonpath_come_before_the_import(serve: Callable[..., Served], tmp_path: Path) -> None:
    site, lib1, lib2 = tmp_path / "site", tmp_path / "lib1", tmp_path / "lib2"
    for d in (site, lib1, lib2):
        d.mkdir()
    (lib2 / "libmod.py").write_text("GREETING = b'from lib2'\n")
    (site / "siteapp.py").write_text(
        "import os, sys, libmod\n"
        "def application(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [libmod.GREETING, b' ', os.getcwd().encode(), b' ', sys.path[0].encode(), b' ', sys.path[1].encode()]\n"
    )
    srv = serve(f"--chdir={site}", f"--pythonpath={lib1},{lib2}", "--listen=127.0.0.1:0", "siteapp")
    host, port = srv.serving()
    status, _, body = http_get(host, port, "/")
    assert status == 200
    assert body.split() == [b"from", b"lib2", str(site).encode(), str(lib1).encode(), str(lib2).encode()]


def test_a_bad_chdir_is_refused(tmp_path: Path) -> None:
    result = run_cli(f"--chdir={tmp_path}/nowhere", APP)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"Error: --chdir={tmp_path}/nowhere: No such file or directory"]


def _proc_ids(pid: int) -> dict[str, list[int]]:
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return {key: [int(v) for v in fields[key].split()] for key in ("Uid", "Gid", "Groups")}


root_only = pytest.mark.skipif(os.geteuid() != 0, reason="switching user needs root")


@root_only
def test_user_group_and_umask_apply_after_binding(serve: Callable[..., Served]) -> None:
    # Port 80 needs root to bind (unless the sysctl says otherwise): bound as root,
    # then served as nobody.
    srv = serve("--listen=127.0.0.1:0", "--user=nobody", "--group=nogroup", "--umask=027", "apps.whoami")
    host, port = srv.serving()
    report = get_json(host, port)
    assert (report["uid"], report["gid"], report["umask"]) == (65534, 65534, 0o27)
    assert 0 not in report["groups"]
    ids = _proc_ids(srv.proc.pid)
    assert ids["Uid"] == [65534] * 4 and ids["Gid"] == [65534] * 4 and 0 not in ids["Groups"]
    assert any("[INFO] tapster: Running as uid 65534, gid 65534" in line for line in srv.lines())
    assert srv.stop() == 0


@root_only
def test_a_uid_without_a_passwd_entry_needs_a_group() -> None:
    # Otherwise the process would keep root's group 0.
    result = run_cli("--user=54321", "--listen=127.0.0.1:0", APP)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "Error: --user=54321: no passwd entry for this uid, so give --group too"
    ]


@root_only
def test_a_unix_socket_belongs_to_the_user_switched_to(serve: Callable[..., Served], tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    path = tmp_path / "app.sock"
    srv = serve(f"--unix-socket={path}", "--user=nobody", "--group=nogroup", "apps.whoami")
    deadline = time.monotonic() + 10
    while not any("Running as uid" in line for line in srv.lines()) and time.monotonic() < deadline:
        time.sleep(0.05)
    st = path.stat()
    assert (st.st_uid, st.st_gid) == (65534, 65534)
    assert srv.stop() == 0


@root_only
def test_user_alone_takes_that_users_group(serve: Callable[..., Served]) -> None:
    srv = serve("--listen=127.0.0.1:0", "--user=nobody", "apps.whoami")
    report = get_json(*srv.serving())
    assert (report["uid"], report["gid"]) == (65534, 65534)


@pytest.mark.parametrize(
    ("option", "error"),
    [
        ("--user=no-such-user", "Error: --user=no-such-user: no such user"),
        ("--group=no-such-group", "Error: --group=no-such-group: no such group"),
        ("--umask=99", "Error: --umask=99: invalid literal for int() with base 8: '99'"),
    ],
)
def test_unknown_user_or_group_is_refused(option: str, error: str) -> None:
    result = run_cli(option, "--listen=127.0.0.1:0", APP)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [error]


@root_only
def test_switching_user_is_refused_when_not_root() -> None:
    # Python lives under /root, which nobody cannot read: start as root, become nobody,
    # then run the command's entry point.
    script = (
        "import os, sys, pwd, grp, tomllib\n"
        "import tapster.runner as runner\n"
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        "sys.argv = ['tapster', '--user=root', '--listen=127.0.0.1:0', 'apps.behaviors:app']\n"
        "runner.main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=TESTS_DIR, env=child_env(), capture_output=True, text=True, timeout=20)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == ["Error: --user=root: only root can switch to another user (running as uid 65534)"]

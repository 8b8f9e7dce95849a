"""Installing Tapster the way README.md says, through the real commands.

- `make wheel` builds dist/tapster-*.whl (a no-op when the Makefile finds it up to date:
  the test still runs the target, so the wheel is always the current sources');
- that wheel installs into a fresh virtualenv with no Rust on the PATH, and the `tapster`
  command of that virtualenv serves an application;
- the README's "Serve your own app" lines, run as written (paths substituted), install a
  Flask application's requirements and Tapster into the application's own virtualenv and
  serve it.

Each subprocess has a timeout; pip may reuse its cache. The second test needs PyPI (or
pip's cache) for Flask.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP_DIR = os.path.join(ROOT, "tests", "apps_install")
SERVING = re.compile(r"Serving on http://127\.0\.0\.1:(\d+)")
NO_RUST_PATH = "/usr/bin:/bin"


def make_env() -> dict[str, str]:
    """This environment without what an enclosing `make test` passes to its children
    (its job server's descriptors are not ours) and without an active virtualenv."""
    env = dict(os.environ)
    for name in ("VIRTUAL_ENV", "PYTHONPATH", "MAKEFLAGS", "MAKELEVEL", "MFLAGS"):
        env.pop(name, None)
    return env


def run(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess[str]:
    """Runs `cmd`, failing with its output when it fails."""
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, **kw)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stdout}"
    return proc


def base_python() -> str:
    """The `python3` a user would run (the interpreter behind this test's venv otherwise)."""
    return shutil.which("python3") or str(getattr(sys, "_base_executable", sys.executable))


@pytest.fixture(scope="module")
def wheel() -> str:
    """dist/'s wheel after `make wheel` (shared by the tests of this module)."""
    started = time.monotonic()
    run(["make", "-C", ROOT, "wheel"], timeout=900, env=make_env())
    print(f"make wheel: {time.monotonic() - started:.1f}s")
    wheels = glob.glob(os.path.join(ROOT, "dist", "tapster-*.whl"))
    assert len(wheels) == 1, wheels
    name = os.path.basename(wheels[0])
    assert name.startswith("tapster-") and "-cp310-abi3-manylinux_" in name, name
    return wheels[0]


class Served:
    """A server started by `cmd`, whose merged output is read until it says where it listens."""

    def __init__(self, cmd: list[str], env: dict[str, str], cwd: str, timeout: float) -> None:
        self.proc = subprocess.Popen(
            cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.output: list[str] = []
        self.port: int | None = None
        found = threading.Event()

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.output.append(line)
                m = SERVING.search(line)
                if m and self.port is None:
                    self.port = int(m.group(1))
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        found.wait(timeout)
        if self.port is None:
            self.proc.kill()
            self.proc.wait(10)
            pytest.fail(f"{cmd} never said where it serves:\n{self.log()}")

    def log(self) -> str:
        return "".join(self.output)

    def get(self, path: str = "/") -> bytes:
        """The raw bytes of a `Connection: close` GET response."""
        assert self.port is not None
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return data

    def stop(self) -> int:
        """SIGTERM, then the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise


def body_of(response: bytes) -> tuple[bytes, bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    return head, body


WHEEL_APP = '''\
def app(environ, start_response):
    body = b"served from the wheel\\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


def test_the_wheel_installs_and_serves_without_rust(wheel: str, tmp_path) -> None:
    started = time.monotonic()
    venv = tmp_path / "venv"
    run([base_python(), "-m", "venv", str(venv)], timeout=120)
    path = f"{venv}/bin:{NO_RUST_PATH}"
    assert shutil.which("cargo", path=path) is None and shutil.which("rustc", path=path) is None
    env = {"PATH": path, "HOME": str(tmp_path), "LANG": "C.UTF-8", "VIRTUAL_ENV": str(venv)}
    # --no-index: the wheel and nothing else (it has no dependencies), nothing built.
    run([f"{venv}/bin/python", "-m", "pip", "install", "-q", "--no-index", "--no-cache-dir", wheel], timeout=120, env=env, cwd=str(tmp_path))

    (tmp_path / "hello.py").write_text(WHEEL_APP)
    where = run([f"{venv}/bin/python", "-c", "import tapster._tapster as t; print(t.__file__)"], timeout=30, env=env, cwd=str(tmp_path))
    assert where.stdout.strip().startswith(str(venv) + "/"), where.stdout

    server = Served([f"{venv}/bin/tapster", "--listen=127.0.0.1:0", "hello:app"], env=env, cwd=str(tmp_path), timeout=30)
    try:
        head, body = body_of(server.get())
        assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
        assert b"\r\nContent-Length: 22\r\n" in head + b"\r\n"
        assert body == b"served from the wheel\n"
    finally:
        status = server.stop()
    assert status == 0, server.log()
    print(f"wheel into a Rust-less venv, served, stopped: {time.monotonic() - started:.1f}s")


def readme_steps() -> list[str]:
    """The command lines of the README's "Serve your own app" block, comments removed."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("### Serve your own app") :]
    block = section[section.index("```sh\n") + 6 : section.index("\n```", section.index("```sh\n"))]
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in block.splitlines()]
    return [line for line in lines if line]


def test_the_readme_steps_serve_your_own_flask_app(wheel: str, tmp_path) -> None:
    steps = readme_steps()
    assert steps[0] == "cd ~/mysite" and "make -C ~/src/tapster install" in steps, steps
    assert steps[-1].startswith("tapster ") and "mysite.wsgi:application" in steps[-1], steps
    started = time.monotonic()
    project = tmp_path / "mysite"
    shutil.copytree(APP_DIR, project, ignore=shutil.ignore_patterns("__pycache__"))

    # The lines as written, with this checkout and the copied project for the example
    # paths, port 0 for 8080, and `exec` so that SIGTERM reaches tapster itself.
    script = [
        line.replace("~/mysite", str(project)).replace("~/src/tapster", ROOT).replace("127.0.0.1:8080", "127.0.0.1:0")
        for line in steps
    ]
    script[-1] = "exec " + script[-1]
    env = make_env()
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not p.startswith(os.path.join(ROOT, ".venv")))
    env["PYTHONUNBUFFERED"] = "1"

    server = Served(["bash", "-e", "-c", "\n".join(script)], env=env, cwd=str(tmp_path), timeout=240)
    try:
        head, body = body_of(server.get())
        assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
        assert body == b"hello from mysite\n"
    finally:
        status = server.stop()
    assert status == 0, server.log()
    # Flask and Tapster are in the project's virtualenv, not in this checkout's.
    assert glob.glob(str(project / ".venv/lib/python3*/site-packages/flask"))
    assert glob.glob(str(project / ".venv/lib/python3*/site-packages/tapster/_tapster*.so"))
    print(f"README steps, Flask app served and stopped: {time.monotonic() - started:.1f}s")


def test_make_install_refuses_without_a_virtualenv() -> None:
    proc = subprocess.run(["make", "-C", ROOT, "install"], env=make_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "tapster: make install needs a virtualenv: activate one" in proc.stderr
    assert "maturin" not in proc.stdout  # refused before building anything


def test_make_check_names_what_is_missing() -> None:
    env = make_env()
    env["PATH"] = NO_RUST_PATH
    proc = subprocess.run(["make", "-C", ROOT, "wheel"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("tapster:")]
    assert len(lines) == 1, proc.stderr  # one line, naming everything missing
    assert lines[0].startswith("tapster: cannot build, missing: cargo (Rust >= 1.85, e.g. from https://rustup.rs)"), lines

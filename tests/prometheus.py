"""Prometheus for end-to-end tests: a real Prometheus server scraping a metrics
listener, and the Prometheus text format read straight from one.

`prometheus(targets)` is a context manager that runs Debian's `prometheus` binary
directly (never the system service) on a free loopback port, in a temporary
directory holding its `prometheus.yml` (a static job `tapster` scraped every second)
and its storage; it waits until Prometheus is ready, and stops it afterwards
(SIGTERM, then SIGKILL of its process group), every wait bounded. `Prometheus.value`
and `Prometheus.wait_value` ask its HTTP API (`/api/v1/query`).

`scrape`, `parse` and `total` read a `/metrics` answer with prometheus_client's
parser, so a text Prometheus would reject fails here too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Callable, Iterator

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from balancers import on_a_free_port, require_binary

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

PROMETHEUS_YML = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: tapster
    static_configs:
      - targets: [{targets}]
"""

Labels = dict[str, str]


# ----- the text format, read directly ---------------------------------------------------


def scrape(address: tuple[str, int], path: str = "/metrics", timeout: float = 5.0) -> tuple[int, str, str]:
    """GET `path` from a metrics listener: (status, Content-Type, body)."""
    url = f"http://{address[0]}:{address[1]}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type", ""), err.read().decode(errors="replace")


def wait_listening(address: tuple[str, int], timeout: float = 10.0) -> None:
    """Waits until something accepts connections at `address`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(address, timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing listening on {address} after {timeout} s") from None
            time.sleep(0.05)


def metrics_text(address: tuple[str, int]) -> str:
    """The body of a 200 answer to GET /metrics."""
    status, _, body = scrape(address)
    assert status == 200, f"GET /metrics: {status} {body[:300]!r}"
    return body


def parse(text: str) -> dict[str, Metric]:
    """The metric families of `text` by name (a counter's family name has no `_total`)."""
    return {family.name: family for family in text_string_to_metric_families(text)}


def total(text: str, sample: str, **labels: str) -> float:
    """The sum of the samples named `sample` whose labels include `labels` (0 if none)."""
    found = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                found += s.value
    return found


def label_values(text: str, sample: str, label: str) -> set[str]:
    """The values label `label` takes among the samples named `sample`."""
    return {s.labels[label] for family in text_string_to_metric_families(text) for s in family.samples if s.name == sample and label in s.labels}


def wait_total(address: tuple[str, int], sample: str, want: Callable[[float], bool], timeout: float = 5.0, **labels: str) -> float:
    """Polls /metrics until `total(sample, labels)` satisfies `want`; returns it."""
    deadline = time.monotonic() + timeout
    while True:
        value = total(metrics_text(address), sample, **labels)
        if want(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{sample}{labels or ''} is {value} after {timeout} s")
        time.sleep(0.05)


# ----- a real Prometheus ----------------------------------------------------------------


@dataclass
class Prometheus:
    """A running Prometheus: its process, its API port and its directory."""

    proc: subprocess.Popen[bytes]
    port: int
    workdir: str

    def log(self, tail: int = 30) -> str:
        with contextlib.suppress(OSError), open(os.path.join(self.workdir, "prometheus.log"), errors="replace") as f:
            return "--- prometheus log\n" + "\n".join(f.read().splitlines()[-tail:])
        return "--- no prometheus log"

    def _get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def query(self, expr: str) -> list[tuple[Labels, float]]:
        """The instant vector `expr` evaluates to now: (labels, value) per series."""
        status, body = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        answer = json.loads(body)
        assert status == 200 and answer["status"] == "success", f"query {expr!r}: {status} {answer}"
        assert answer["data"]["resultType"] == "vector", answer
        return [(r["metric"], float(r["value"][1])) for r in answer["data"]["result"]]

    def value(self, expr: str) -> float | None:
        """The single value of `expr` (an aggregation), None while it has no series."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr!r} has {len(result)} series: {result}"
        return result[0][1] if result else None

    def wait_value(self, expr: str, want: float, timeout: float = 15.0) -> None:
        """Polls until `expr` is exactly `want`; fails with what it was if it never is,
        and at once if it goes past `want` (a counter that rises too far stays there)."""
        deadline = time.monotonic() + timeout
        seen: list[float | None] = []
        while True:
            value = self.value(expr)
            if not seen or seen[-1] != value:
                seen.append(value)
            if value == want:
                return
            assert value is None or value < want, f"{expr} went past {want}: {seen}"
            if time.monotonic() > deadline:
                raise AssertionError(f"{expr} is not {want} after {timeout} s; it was {seen}\n{self.targets()}")
            time.sleep(0.1)

    def targets(self) -> str:
        """The scrape targets' health and last error, for failure messages."""
        _, body = self._get("/api/v1/targets")
        active = json.loads(body).get("data", {}).get("activeTargets", [])
        return "; ".join(f"{t['scrapeUrl']} {t['health']} {t.get('lastError', '')!r}" for t in active)

    def wait_scraped(self, timeout: float = 15.0) -> None:
        """Waits until every target was scraped successfully (`up` is 1 for each)."""
        deadline = time.monotonic() + timeout
        while True:
            ups = self.query('up{job="tapster"}')
            if ups and all(v == 1.0 for _, v in ups):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"targets not up after {timeout} s: {self.targets()}\n{self.log()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(STOP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(STOP_TIMEOUT)


def _start(binary: str, workdir: str, port: int, targets: list[tuple[str, int]]) -> Prometheus:
    config = os.path.join(workdir, "prometheus.yml")
    with open(config, "w") as f:
        f.write(PROMETHEUS_YML.format(targets=", ".join(f'"{host}:{p}"' for host, p in targets)))
    cmd = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={os.path.join(workdir, 'data')}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    out = open(os.path.join(workdir, "prometheus.log"), "wb")
    try:
        proc = subprocess.Popen(cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        out.close()
    prom = Prometheus(proc, port, workdir)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError):
            if prom._get("/-/ready", timeout=1)[0] == 200:
                return prom
        time.sleep(0.1)
    prom.stop()
    raise RuntimeError(f"prometheus was not ready on port {port} (exit status {proc.returncode}):\n{prom.log()}")


@contextlib.contextmanager
def prometheus(targets: list[tuple[str, int]]) -> Iterator[Prometheus]:
    """Prometheus scraping `targets` (host, port) every second as job `tapster`."""
    binary = require_binary("prometheus", "prometheus")
    workdir = tempfile.mkdtemp(prefix="tapster-prometheus-")
    prom: Prometheus | None = None
    try:
        prom = on_a_free_port(lambda port: _start(binary, workdir, port, targets))
        yield prom
    finally:
        if prom is not None:
            prom.stop()
        shutil.rmtree(workdir, ignore_errors=True)

"""The metrics listener (`--metrics-listen`), end to end: a real Prometheus scraping
it every second sees the request counter and the duration histogram rise by exactly
the requests made, in one process and summed over two workers (whose per-worker
gauges carry `worker="0"` and `worker="1"`); the text parses with prometheus_client
and has every metric with its type; requests are counted by method and status
class, errors the server answers itself (a malformed request's 400) included,
scrapes not; the byte counters (sendfile's too) grow by the bytes that went over the
wire; in-flight and busy-thread gauges show a running request; refused PROXY
protocol connections are counted; worker starts and exits are counted through a
SIGHUP reload; and `/metrics` lives only on the metrics listener (on the
application's port it reaches the application; other paths there are 404)."""

from __future__ import annotations

import signal
import threading
from typing import Callable

import pytest

from balancers import free_port
from prometheus import label_values, metrics_text, parse, prometheus, scrape, total, wait_listening, wait_total
from support import ServerProcess, http_get
from test_workers import Tapster, alive, tapster, wait_until  # noqa: F401 (tapster: the fixture)

APP = "apps.observed:app"
MakeServer = Callable[..., ServerProcess]

#: Every metric family (prometheus_client's names: a counter's without `_total`) and its type.
COUNTERS = (
    "tapster_requests",
    "tapster_connections_accepted",
    "tapster_connections_refused",
    "tapster_received_bytes",
    "tapster_sent_bytes",
    "tapster_sendfile_bytes",
    "tapster_slow_requests",
    "tapster_request_timeouts",
    "tapster_access_log_dropped",
    "process_cpu_seconds",
)
WORKER_COUNTERS = ("tapster_worker_starts", "tapster_worker_exits")
GAUGES = (
    "tapster_requests_in_flight",
    "tapster_queue_depth",
    "tapster_threads_busy",
    "tapster_threads",
    "tapster_connections",
    "process_resident_memory_bytes",
    "process_open_fds",
)
PER_WORKER = ("tapster_requests_in_flight", "tapster_queue_depth", "tapster_threads_busy", "tapster_threads", "tapster_connections")
PER_PROCESS = ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds")


class Metered:
    """A server with a metrics listener on `metrics` (a free loopback port)."""

    def __init__(self, srv: ServerProcess, port: int) -> None:
        self.srv = srv
        self.metrics = ("127.0.0.1", port)
        wait_listening(self.metrics)

    def text(self) -> str:
        return metrics_text(self.metrics)

    def total(self, sample: str, **labels: str) -> float:
        return total(self.text(), sample, **labels)

    def wait(self, sample: str, want: float, timeout: float = 5.0, **labels: str) -> None:
        wait_total(self.metrics, sample, lambda v: v == want, timeout, **labels)

    def get(self, path: str) -> int:
        return http_get(self.srv.host, int(self.srv.port), path)[0]


@pytest.fixture
def metered(make_server: MakeServer) -> Callable[..., Metered]:
    """Starts `apps.observed` with `--metrics-listen` on a free port and the given options."""

    def start(*args: str, **kw: object) -> Metered:
        port = free_port()
        return Metered(make_server(f"--metrics-listen=127.0.0.1:{port}", *args, app=APP, **kw), port)

    return start


@pytest.fixture
def metered_workers(tapster: Callable[..., Tapster]) -> Callable[..., tuple[Metered, set[int]]]:
    """Starts `apps.observed` with workers and `--metrics-listen`; waits for `count`
    ready workers."""

    def start(count: int, *args: str) -> tuple[Metered, set[int]]:
        port = free_port()
        srv = tapster(f"--workers={count}", f"--metrics-listen=127.0.0.1:{port}", *args, app=APP)
        workers = srv.workers(count)
        return Metered(srv, port), workers

    return start


def both_serve(m: Metered, workers: set[int], limit: int = 300) -> int:
    """GET /pid on new connections until every worker answered; returns how many."""
    seen: set[int] = set()
    made = 0
    while seen != workers:
        assert made < limit, f"only {seen} of {workers} answered {limit} requests"
        status, _, body = http_get(m.srv.host, int(m.srv.port), "/pid")
        assert status == 200
        seen.add(int(body))
        made += 1
    return made


# --- a real Prometheus --------------------------------------------------------------------------


def test_prometheus_sees_every_request_exactly_once(metered: Callable[..., Metered]) -> None:
    m = metered()
    assert m.get("/hello") == 200  # the series exist before Prometheus looks
    with prometheus([m.metrics]) as prom:
        prom.wait_scraped()
        prom.wait_value("sum(tapster_requests_total)", 1)
        prom.wait_value("sum(tapster_request_duration_seconds_count)", 1)
        for i in range(25):
            assert m.get("/hello" if i % 5 else "/status/404") == (200 if i % 5 else 404)
        prom.wait_value("sum(tapster_requests_total)", 26)
        prom.wait_value("sum(tapster_request_duration_seconds_count)", 26)
        prom.wait_value('sum(tapster_requests_total{status="4xx"})', 5)
        prom.wait_value('sum(tapster_request_duration_seconds_bucket{le="+Inf"})', 26)
        # More scrapes later, still 26: Prometheus's own requests are not counted.
        scrapes = prom.value('count_over_time(up{job="tapster"}[10m])')
        assert scrapes is not None
        prom.wait_value('count_over_time(up{job="tapster"}[10m]) >= bool ' + str(scrapes + 3), 1)
        assert prom.value("sum(tapster_requests_total)") == 26


def test_prometheus_sums_two_workers(metered_workers: Callable[..., tuple[Metered, set[int]]]) -> None:
    m, workers = metered_workers(2, "--reuse-port", "--threads=3")
    made = both_serve(m, workers)
    for _ in range(20):
        assert m.get("/hello") == 200
    made += 20
    with prometheus([m.metrics]) as prom:
        prom.wait_scraped()
        prom.wait_value("sum(tapster_requests_total)", made)
        prom.wait_value("sum(tapster_request_duration_seconds_count)", made)
        assert all("worker" not in labels for labels, _ in prom.query("tapster_requests_total")), "counters have no worker label"
        threads = prom.query("tapster_threads")
        assert sorted((labels["worker"], v) for labels, v in threads) == [("0", 3.0), ("1", 3.0)], threads
        memory = {labels["worker"] for labels, _ in prom.query("process_resident_memory_bytes")}
        assert memory == {"0", "1", "supervisor"}, memory


# --- the text format -----------------------------------------------------------------------------


def check_families(text: str, with_workers: bool) -> None:
    families = parse(text)
    expected = {name: "counter" for name in COUNTERS + (WORKER_COUNTERS if with_workers else ())}
    expected |= {name: "gauge" for name in GAUGES}
    expected["tapster_request_duration_seconds"] = "histogram"
    missing = sorted(set(expected) - set(families))
    assert not missing, f"missing {missing} in:\n{text}"
    wrong = {name: families[name].type for name, kind in expected.items() if families[name].type != kind}
    assert not wrong, f"wrong types {wrong}"


def test_the_text_has_every_metric_with_its_type(metered: Callable[..., Metered]) -> None:
    m = metered()
    for _ in range(3):
        assert m.get("/hello") == 200
    status, content_type, text = scrape(m.metrics)
    assert status == 200 and content_type.startswith("text/plain"), (status, content_type)
    check_families(text, with_workers=False)
    for name in PER_WORKER + PER_PROCESS:
        assert label_values(text, name, "worker") == {"0"}, name
    assert label_values(text, "tapster_connections", "state") <= {"reading", "responding", "idle"}
    assert label_values(text, "tapster_connections_refused_total", "reason") == {"proxy_protocol", "tls_handshake"}
    histogram = [s for s in parse(text)["tapster_request_duration_seconds"].samples]
    buckets = [(s.labels["le"], s.value) for s in histogram if s.name.endswith("_bucket")]
    assert buckets[-1] == ("+Inf", 3.0), buckets
    assert [v for _, v in buckets] == sorted(v for _, v in buckets), "cumulative buckets"
    count = [s.value for s in histogram if s.name.endswith("_count")]
    duration = [s.value for s in histogram if s.name.endswith("_sum")]
    assert count == [3.0] and len(duration) == 1 and 0 < duration[0] < 3, (count, duration)
    assert total(text, "process_resident_memory_bytes") > 1 << 20
    assert total(text, "process_open_fds") >= 3


def test_the_text_with_workers_has_every_metric(metered_workers: Callable[..., tuple[Metered, set[int]]]) -> None:
    m, workers = metered_workers(2, "--reuse-port")
    both_serve(m, workers)
    text = m.text()
    check_families(text, with_workers=True)
    for name in PER_WORKER:
        assert label_values(text, name, "worker") == {"0", "1"}, name
    for name in PER_PROCESS:
        assert label_values(text, name, "worker") == {"0", "1", "supervisor"}, name
    assert total(text, "tapster_worker_starts_total") == 2


def test_metrics_is_not_served_on_the_applications_port(metered: Callable[..., Metered]) -> None:
    m = metered()
    status, _, body = http_get(m.srv.host, int(m.srv.port), "/metrics")
    assert (status, body) == (404, b"observed app: no route /metrics")
    for path in ("/", "/hello", "/metrics/x", "/metric"):
        assert scrape(m.metrics, path)[0] == 404, path
    assert m.total("tapster_requests_total") == 1  # the app's /metrics; none of the listener's


# --- what is counted ---------------------------------------------------------------------------


def test_requests_are_counted_by_method_and_status_class(metered: Callable[..., Metered]) -> None:
    m = metered()
    for method in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PURGE"):
        with m.srv.connect() as conn:
            conn.send(f"{method} /hello HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
            assert conn.read_response(head_request=method == "HEAD").status == 200, method
    for code in (301, 404, 503):
        assert m.get(f"/status/{code}") == code
    text = m.text()
    counted = {
        (s.labels["method"], s.labels["status"]): s.value
        for s in parse(text)["tapster_requests"].samples
        if s.name == "tapster_requests_total"
    }
    expected = {(method, "2xx"): 1.0 for method in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other")}
    expected |= {("GET", "3xx"): 1.0, ("GET", "4xx"): 1.0, ("GET", "5xx"): 1.0}
    assert counted == expected  # only the label sets seen so far
    for _ in range(20):  # scrapes are not requests
        metrics_text(m.metrics)
    assert m.total("tapster_requests_total") == 11
    assert m.total("tapster_request_duration_seconds_count") == 11


def test_a_malformed_request_counts_as_4xx(metered: Callable[..., Metered]) -> None:
    m = metered()
    assert m.total("tapster_requests_total", status="4xx") == 0
    with m.srv.connect() as conn:
        conn.send(b"GET /hello HTTP/1.1\r\nHost: t\r\nNo colon here\r\n\r\n")
        assert conn.read_response().status == 400
    m.wait("tapster_requests_total", 1, status="4xx")
    assert m.total("tapster_requests_total") == 1


def test_byte_counters_grow_by_what_went_over_the_wire(metered: Callable[..., Metered]) -> None:
    m = metered()
    base = m.text()
    sent0, received0, sendfile0 = (total(base, f"tapster_{k}_bytes_total") for k in ("sent", "received", "sendfile"))
    request = b"GET /big?n=1000000 HTTP/1.1\r\nHost: t\r\nX-Padding: " + b"p" * 6000 + b"\r\nConnection: close\r\n\r\n"
    with m.srv.connect() as conn:
        conn.send(request)
        resp = conn.read_response()
    assert resp.status == 200 and len(resp.body) == 1_000_000
    wait_total(m.metrics, "tapster_sent_bytes_total", lambda v: v >= sent0 + 1_000_000)
    wait_total(m.metrics, "tapster_received_bytes_total", lambda v: v >= received0 + len(request))
    status, _, body = http_get(m.srv.host, int(m.srv.port), "/file?n=3000000")
    assert status == 200 and len(body) == 3_000_000
    wait_total(m.metrics, "tapster_sendfile_bytes_total", lambda v: v == sendfile0 + 3_000_000)
    assert m.total("tapster_sent_bytes_total") >= sent0 + 4_000_000  # sendfile's bytes are sent bytes too


def test_connections_accepted_are_counted(metered: Callable[..., Metered]) -> None:
    m = metered()
    before = m.total("tapster_connections_accepted_total")
    for _ in range(5):
        assert m.get("/hello") == 200
    m.wait("tapster_connections_accepted_total", before + 5)


def test_a_running_request_shows_in_the_gauges(metered: Callable[..., Metered]) -> None:
    m = metered("--threads=4")
    assert m.total("tapster_requests_in_flight", worker="0") == 0
    assert m.total("tapster_threads", worker="0") == 4
    result: list[int] = []
    sleeper = threading.Thread(target=lambda: result.append(m.get("/sleep?s=2")))
    sleeper.start()
    try:
        m.wait("tapster_requests_in_flight", 1, worker="0")
        text = m.text()
        assert total(text, "tapster_threads_busy", worker="0") == 1, text
        assert total(text, "tapster_connections", worker="0") >= 1, text
    finally:
        sleeper.join(10)
    assert result == [200]
    m.wait("tapster_requests_in_flight", 0, worker="0")
    m.wait("tapster_threads_busy", 0, worker="0")


def test_refused_proxy_protocol_connections_are_counted(metered: Callable[..., Metered]) -> None:
    m = metered("--proxy-protocol", "--trusted-proxy=127.0.0.1")
    assert m.total("tapster_connections_refused_total", reason="proxy_protocol") == 0
    for _ in range(2):
        with m.srv.connect() as conn:
            conn.send(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")  # no PROXY header
            assert conn.is_closed(5)
    m.wait("tapster_connections_refused_total", 2, reason="proxy_protocol")
    assert m.total("tapster_requests_total") == 0


def test_worker_starts_and_exits_through_a_reload(metered_workers: Callable[..., tuple[Metered, set[int]]]) -> None:
    m, old = metered_workers(2, "--shutdown-timeout=3")
    m.wait("tapster_worker_starts_total", 2)
    assert m.total("tapster_worker_exits_total") == 0
    m.srv.proc.send_signal(signal.SIGHUP)
    m.srv.wait_for_log(r"Reload complete: 2 worker\(s\) serving", timeout=20)
    wait_until(lambda: not [p for p in old if alive(p)], 10, "the old workers to end")
    m.wait("tapster_worker_starts_total", 4)
    m.wait("tapster_worker_exits_total", 2, reason="reload")
    assert m.total("tapster_worker_exits_total") == 2  # no other reason
    assert m.get("/hello") == 200
    m.wait("tapster_requests_total", 1)


"""TLS end to end, with real clients: curl, `openssl s_client`, httpx and Python's ssl
against listeners given certificates made for this run (trustme). Protocol versions and
ALPN, client certificates (required and optional), what the environ says, handshakes
that never finish or are not TLS at all, certificates reloaded on SIGHUP (single process
and workers) without dropping open connections, a TLS listener beside a cleartext one,
static files and big bodies over TLS, and the option errors.

(The WSGI behaviour suites also run whole over TLS: `TAPSTER_TEST_TRANSPORT=tls`, see
the Makefile.)"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
import trustme
from cryptography import x509

from prometheus import metrics_text, total
import support
from support import ServerProcess

CERTS = support.tls_test_files()
TLS = (f"--certfile={CERTS.certfile}", f"--keyfile={CERTS.keyfile}")


def wait_until(check: Callable[[], Any], timeout: float, what: Callable[[], str]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(what())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def environ(srv: ServerProcess, path: str = "/echo", context: ssl.SSLContext | None = None) -> dict[str, Any]:
    """The environ the behaviours app saw for a GET over a new TLS connection."""
    with socket.create_connection(srv.address, timeout=5) as raw:
        ctx = context or CERTS.client_context()
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    result: dict[str, Any] = json.loads(body)["environ"]
    return result


@pytest.fixture(scope="module")
def srv() -> Iterator[ServerProcess]:
    server = ServerProcess("apps.behaviors:app", *TLS, "--inbuf-overflow=65536")
    yield server
    server.stop()


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--cacert", CERTS.ca_file, *args],
        capture_output=True, text=True, timeout=20,
    )


def s_client(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    """`openssl s_client` connecting, then closing at once (stdin is empty)."""
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", CERTS.ca_file, *args],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20,
    )


# --- clients and what the application sees ------------------------------------------------


def test_curl_gets_https_and_the_environ_says_so(srv: ServerProcess) -> None:
    out = curl("-v", f"https://127.0.0.1:{srv.port}/echo?x=1")
    assert out.returncode == 0, out.stderr
    assert "ALPN: server accepted http/1.1" in out.stderr
    assert "SSL connection using TLSv1.3" in out.stderr
    env = json.loads(out.stdout)["environ"]
    assert env["wsgi.url_scheme"] == "https"
    assert env["HTTPS"] == "on"
    assert env["SSL_PROTOCOL"] == "TLSv1.3"
    assert env["SSL_CIPHER"] in ("TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256")
    assert env["SSL_CLIENT_VERIFY"] == "NONE"
    assert "SSL_CLIENT_S_DN" not in env
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["QUERY_STRING"] == "x=1"
    # HTTP/1.0 clients offer ALPN http/1.0, and are served.
    old = curl("--http1.0", "-v", f"https://127.0.0.1:{srv.port}/echo")
    assert old.returncode == 0, old.stderr
    assert json.loads(old.stdout)["environ"]["SERVER_PROTOCOL"] == "HTTP/1.0"


def test_openssl_s_client_protocol_versions_and_alpn(srv: ServerProcess) -> None:
    for flag, version in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
        out = s_client(srv.port, flag, "-alpn", "http/1.1")
        assert out.returncode == 0, out.stdout + out.stderr
        assert re.search(rf"New, {version},|Protocol\s*:\s*{version}", out.stdout), out.stdout
        assert "ALPN protocol: http/1.1" in out.stdout
        assert "Verify return code: 0 (ok)" in out.stdout
    # Not offering a protocol we speak is refused (RFC 7301: no_application_protocol).
    refused = s_client(srv.port, "-alpn", "spdy/3")
    assert refused.returncode != 0
    assert "no application protocol" in refused.stderr.lower(), refused.stderr
    # TLS 1.1 and older are not spoken at all.
    old = s_client(srv.port, "-tls1_1")
    assert old.returncode != 0


def test_tls_min_version_13_refuses_tls_12() -> None:
    server = ServerProcess("apps.behaviors:app", *TLS, "--tls-min-version=1.3")
    try:
        assert s_client(server.port, "-tls1_2").returncode != 0
        out = s_client(server.port, "-tls1_3")
        assert out.returncode == 0 and re.search(r"New, TLSv1.3,|Protocol\s*:\s*TLSv1.3", out.stdout), out.stdout
    finally:
        server.stop()


def test_httpx_big_bodies_both_ways(srv: ServerProcess) -> None:
    """A body past inbuf_overflow (spilled to disk) and a large streamed response."""
    upload = os.urandom(300_000)
    with httpx.Client(verify=CERTS.client_context(), timeout=10) as client:
        resp = client.post(f"https://127.0.0.1:{srv.port}/echo", content=upload)
        assert resp.status_code == 200 and resp.http_version == "HTTP/1.1"
        assert json.loads(resp.content)["body"] == upload.decode("latin-1")
        resp = client.get(f"https://127.0.0.1:{srv.port}/stream", params={"n": "200", "size": "65536"})
        assert resp.status_code == 200
        assert len(resp.content) == 200 * 65536
        for _ in range(20):  # the same connection, kept alive
            assert client.get(f"https://127.0.0.1:{srv.port}/list").status_code == 200


def test_a_response_that_closes_ends_with_close_notify(srv: ServerProcess) -> None:
    """Python's ssl raises on a TLS connection cut without close_notify (a truncation
    attack looks like that): a `Connection: close` response must end cleanly."""
    ctx = CERTS.client_context()
    with ctx.wrap_socket(socket.create_connection(srv.address, timeout=5), server_hostname="localhost") as s:
        s.sendall(b"GET /list HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):  # SSLEOFError here without close_notify
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in data


# --- client certificates -------------------------------------------------------------------


def client_context(cert: trustme.LeafCert | None) -> ssl.SSLContext:
    ctx = CERTS.client_context()
    if cert is not None:
        cert.configure_cert(ctx)
    return ctx


def handshake_refused(srv: ServerProcess, ctx: ssl.SSLContext) -> bool:
    """Whether the server refuses the connection (TLS 1.3 clients learn it on their
    first read, after the handshake looked finished to them)."""
    try:
        environ(srv, context=ctx)
    except (ssl.SSLError, ConnectionError):
        return True
    return False


def test_required_client_certificates() -> None:
    client = CERTS.ca.issue_cert("client@example.test", common_name="client one, ltd")
    stranger = trustme.CA().issue_cert("client@example.test", common_name="stranger")
    server = ServerProcess(
        "apps.behaviors:app", *TLS, f"--ca-certs={CERTS.ca_file}", "--cert-reqs=required"
    )
    try:
        env = environ(server, context=client_context(client))
        subject = x509.load_pem_x509_certificate(client.cert_chain_pems[0].bytes()).subject
        assert env["SSL_CLIENT_S_DN"] == subject.rfc4514_string()
        assert "CN=client one\\, ltd" in env["SSL_CLIENT_S_DN"]
        assert env["SSL_CLIENT_VERIFY"] == "SUCCESS"
        assert handshake_refused(server, client_context(None))
        assert handshake_refused(server, client_context(stranger))
        # And the server serves on.
        assert environ(server, context=client_context(client))["SSL_CLIENT_VERIFY"] == "SUCCESS"
    finally:
        server.stop()


def test_optional_client_certificates() -> None:
    client = CERTS.ca.issue_cert("client@example.test", common_name="optional one")
    stranger = trustme.CA().issue_cert("client@example.test", common_name="stranger")
    server = ServerProcess("apps.behaviors:app", *TLS, f"--ca-certs={CERTS.ca_file}", "--cert-reqs=1")
    try:
        anonymous = environ(server, context=client_context(None))
        assert anonymous["SSL_CLIENT_VERIFY"] == "NONE" and "SSL_CLIENT_S_DN" not in anonymous
        named = environ(server, context=client_context(client))
        assert named["SSL_CLIENT_S_DN"].startswith("CN=optional one,")
        assert handshake_refused(server, client_context(stranger))
    finally:
        server.stop()


# --- handshakes that go wrong -------------------------------------------------------------


def test_stalled_and_garbage_handshakes_are_closed_and_counted() -> None:
    port = free_port()
    server = ServerProcess(
        "apps.behaviors:app", *TLS, "--header-timeout=1", f"--metrics-listen=127.0.0.1:{port}"
    )
    try:
        stalled = []
        for _ in range(20):
            s = socket.create_connection(server.address, timeout=10)
            s.sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, no more
            stalled.append(s)
        silent = socket.create_connection(server.address, timeout=10)
        plain = socket.create_connection(server.address, timeout=10)
        plain.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        # Garbage gets a fatal alert at once and the connection closes.
        answer = plain.recv(100)
        assert answer[:1] == b"\x15", answer  # an alert record
        assert plain.recv(100) == b""
        # Meanwhile everyone else is served.
        started = time.monotonic()
        assert environ(server)["HTTPS"] == "on"
        assert time.monotonic() - started < 1.0
        # The stalled handshakes end at header_timeout.
        for s in stalled + [silent]:
            try:
                assert s.recv(100) == b""
            except ConnectionResetError:
                pass
        waited = time.monotonic() - started
        assert waited < 5, waited
        for s in stalled + [silent]:
            s.close()
        text = wait_until(
            lambda: (t := metrics_text(("127.0.0.1", port)))
            and total(t, "tapster_connections_refused_total", reason="tls_handshake") >= 22
            and t,
            5,
            lambda: metrics_text(("127.0.0.1", port)),
        )
        assert total(text, "tapster_connections_refused_total", reason="tls_handshake") == 22
        assert environ(server)["HTTPS"] == "on"
    finally:
        assert server.stop() == 0, server.log()


def test_a_proxy_header_then_the_handshake_in_one_segment() -> None:
    """HAProxy's `send-proxy` to a TLS backend: the PROXY header comes first, in cleartext,
    and the ClientHello may arrive in the same read; both are taken from the one buffer."""
    server = ServerProcess("apps.behaviors:app", *TLS, "--proxy-protocol", "--trusted-proxy=127.0.0.1")
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = CERTS.client_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        with socket.create_connection(server.address, timeout=5) as sock:

            def pump() -> None:
                if outgoing.pending:
                    sock.sendall(outgoing.read())
                data = sock.recv(65536)
                assert data, "closed during the handshake"
                incoming.write(data)

            with pytest.raises(ssl.SSLWantReadError):
                tls.do_handshake()
            sock.sendall(b"PROXY TCP4 203.0.113.9 127.0.0.1 4444 443\r\n" + outgoing.read())
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    pump()
            tls.write(b"GET /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            sock.sendall(outgoing.read())
            response = b""
            while True:
                try:
                    chunk = tls.read(65536)
                except ssl.SSLWantReadError:
                    pump()
                    continue
                except ssl.SSLZeroReturnError:
                    break
                if not chunk:
                    break
                response += chunk
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), response[:200]
        env = json.loads(body)["environ"]
        assert (env["REMOTE_ADDR"], env["HTTPS"], env["wsgi.url_scheme"]) == ("203.0.113.9", "on", "https")
    finally:
        server.stop()


# --- certificate reload ----------------------------------------------------------------------


def write_leaf(ca: trustme.CA, where: Path) -> None:
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    leaf.cert_chain_pems[0].write_to_path(str(where / "cert.pem"))
    leaf.private_key_pem.write_to_path(str(where / "key.pem"))


def context_for(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ca.configure_trust(ctx)
    return ctx


def verifies(srv: ServerProcess, ca: trustme.CA) -> bool:
    try:
        environ(srv, context=context_for(ca))
    except ssl.SSLCertVerificationError:
        return False
    return True


def keep_alive_get(s: ssl.SSLSocket) -> bytes:
    s.sendall(b"GET /list HTTP/1.1\r\nHost: t\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    return data


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_reloads_the_certificates_and_keeps_open_connections(tmp_path: Path, workers: int) -> None:
    old, new = trustme.CA(), trustme.CA()
    write_leaf(old, tmp_path)
    server = ServerProcess(
        "apps.behaviors:app",
        f"--certfile={tmp_path / 'cert.pem'}",
        f"--keyfile={tmp_path / 'key.pem'}",
        f"--workers={workers}",
    )
    try:
        assert verifies(server, old)
        conn = context_for(old).wrap_socket(socket.create_connection(server.address, timeout=5), server_hostname="localhost")
        assert keep_alive_get(conn).startswith(b"HTTP/1.1 200 ")
        write_leaf(new, tmp_path)
        server.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: verifies(server, new), 20, server.log)
        assert not verifies(server, old)
        if workers == 1:
            server.wait_for_log("TLS certificates reloaded")
            # The connection made before the reload goes on with its session.
            assert keep_alive_get(conn).startswith(b"HTTP/1.1 200 ")
        conn.close()
        if workers == 1:
            (tmp_path / "cert.pem").write_text("not a certificate")
            server.proc.send_signal(signal.SIGHUP)
            server.wait_for_log("TLS certificates not reloaded, the previous ones stay in use: certfile ")
            assert verifies(server, new)
    finally:
        assert server.stop() == 0, server.log()


# --- listeners -------------------------------------------------------------------------------


def test_a_tls_listener_beside_a_cleartext_one() -> None:
    tls_port, plain_port = free_port(), free_port()
    server = ServerProcess(
        "apps.behaviors:app", *TLS, listen=f"https://127.0.0.1:{tls_port} http://127.0.0.1:{plain_port}"
    )
    try:
        server.wait_for_log(rf"Serving on https://127\.0\.0\.1:{tls_port}$")
        server.wait_for_log(rf"Serving on http://127\.0\.0\.1:{plain_port}$")
        out = curl(f"https://127.0.0.1:{tls_port}/echo")
        assert json.loads(out.stdout)["environ"]["wsgi.url_scheme"] == "https"
        out = curl(f"http://127.0.0.1:{plain_port}/echo")
        env = json.loads(out.stdout)["environ"]
        assert env["wsgi.url_scheme"] == "http" and "HTTPS" not in env
    finally:
        server.stop()


def test_static_files_over_tls_are_read_not_sendfiled(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    (tmp_path / "big.bin").write_bytes(data)
    port = free_port()
    server = ServerProcess(
        "apps.behaviors:app", *TLS, f"--static=/s={tmp_path}", f"--metrics-listen=127.0.0.1:{port}"
    )
    try:
        with httpx.Client(verify=CERTS.client_context(), timeout=10) as client:
            resp = client.get(f"https://127.0.0.1:{server.port}/s/big.bin")
            assert resp.status_code == 200 and resp.content == data
            part = client.get(f"https://127.0.0.1:{server.port}/s/big.bin", headers={"Range": "bytes=100-199"})
            assert part.status_code == 206 and part.content == data[100:200]
        text = metrics_text(("127.0.0.1", port))
        assert total(text, "tapster_sendfile_bytes_total") == 0
        assert total(text, "tapster_requests_total", handler="static") == 2
    finally:
        server.stop()


# --- option errors ---------------------------------------------------------------------------


def start_fails(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "tapster", "--listen=127.0.0.1:0", *args, "apps.behaviors:app"],
        capture_output=True, text=True, timeout=30, env=support.tests_env(), cwd=os.path.dirname(__file__),
    )
    assert out.returncode != 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def test_option_errors_name_what_is_wrong(tmp_path: Path) -> None:
    other = trustme.CA().issue_cert("localhost")
    other.private_key_pem.write_to_path(str(tmp_path / "other.key"))
    cases = [
        ((f"--certfile={tmp_path / 'missing.pem'}",), "certfile "),
        ((f"--certfile={CERTS.certfile}",), "certfile (no keyfile given)"),
        ((f"--certfile={CERTS.certfile}", f"--keyfile={tmp_path / 'other.key'}"), "do not go together"),
        ((f"--certfile={CERTS.certfile}", f"--keyfile={CERTS.certfile}"), "keyfile "),
        ((*TLS, f"--ca-certs={CERTS.ca_file}"), "ca_certs is set but cert_reqs is none"),
        ((*TLS, "--cert-reqs=required"), "ca_certs must name"),
        ((*TLS, "--cert-reqs=sometimes"), "cert_reqs must be none, optional or required"),
        ((*TLS, "--tls-min-version=1.1"), "tls_min_version must be 1.2 or 1.3"),
        ((f"--keyfile={CERTS.keyfile}",), "keyfile is set but certfile is not"),
    ]
    for args, message in cases:
        assert message in start_fails(*args), (args, message)
    out = subprocess.run(
        [sys.executable, "-m", "tapster", "--listen=https://127.0.0.1:0", "apps.behaviors:app"],
        capture_output=True, text=True, timeout=30, env=support.tests_env(), cwd=os.path.dirname(__file__),
    )
    assert out.returncode != 0 and "https needs certfile" in out.stdout + out.stderr

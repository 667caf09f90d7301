"""The admin endpoint's HTTP API on its unix socket and on loopback TCP:
health, error shapes, socket lifecycle, readiness during shutdown, and what
TCP serves without the admin token (metrics and health) and with it."""
import http.client
import json
import os
import signal
import smtplib
import socket
import stat
import subprocess
import time
import urllib.request

from conftest import BIN, Server, config, free_port


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=10)
        self.socket_path = str(path)

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(self.socket_path)
        self.sock = sock


TOKEN = "s3cret-admin-token-0123456789"


def call(conn, method, path, headers=None):
    conn.request(method, path, headers=headers or {})
    response = conn.getresponse()
    body = response.read()
    return response.status, response, json.loads(body)


def over_unix(server, method, path):
    conn = UnixHTTPConnection(server.data / "admin.sock")
    try:
        return call(conn, method, path)
    finally:
        conn.close()


def token_file(directory, mode=0o600, text=TOKEN + "\n"):
    path = directory / "admin.token"
    path.write_text(text)
    os.chmod(path, mode)
    return path


def admin_extra(port, token=None):
    extra = f'[admin]\naddress = "127.0.0.1:{port}"\n'
    if token is not None:
        extra += f'token_file = "{token}"\n'
    return extra


def over_tcp(port, method, path, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        return call(conn, method, path, headers)
    finally:
        conn.close()


def test_health_and_errors_on_both_listeners(sluice, tmp_path):
    admin_port = free_port()
    server = sluice(extra=admin_extra(admin_port, token_file(tmp_path)))
    tcp = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=10)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    try:
        for send in (lambda m, p: over_unix(server, m, p), lambda m, p: call(tcp, m, p, bearer)):
            status, response, body = send("GET", "/health/live")
            assert (status, body) == (200, {"status": "live"})
            assert response.getheader("Content-Type") == "application/json"
            status, _, body = send("GET", "/health/ready")
            assert (status, body) == (200, {"status": "ready"})
            status, _, body = send("GET", "/health")
            assert (status, body) == (200, {"live": True, "ready": True})

            status, _, body = send("GET", "/queue")
            assert (status, body) == (200, {"node": "mx.example.test", "count": 0, "entries": []})

            status, _, body = send("GET", "/queue/0123456789abcdef")
            assert (status, body) == (404, {"error": "no queue entry 0123456789abcdef"})
            status, _, body = send("POST", "/queue/0123456789abcdef/hold")
            assert (status, body) == (404, {"error": "no queue entry 0123456789abcdef"})
            status, _, body = send("GET", "/queue/bogus")
            assert status == 404 and "bogus" in body["error"]
            status, _, body = send("GET", "/nowhere")
            assert (status, body) == (404, {"error": "no such endpoint: /nowhere"})

            status, response, body = send("POST", "/queue")
            assert status == 405 and response.getheader("Allow") == "GET"
            assert body == {"error": "method not allowed; allowed: GET"}
            status, response, _ = send("PUT", "/queue/0123456789abcdef")
            assert status == 405 and response.getheader("Allow") == "GET, DELETE"
            status, response, _ = send("GET", "/queue/flush")
            assert status == 405 and response.getheader("Allow") == "POST"
    finally:
        tcp.close()


def test_socket_is_private_and_removed_at_exit(sluice):
    server = sluice()
    path = server.data / "admin.sock"
    mode = path.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    assert server.stop() == 0
    assert not path.exists()


def test_admin_address_must_be_loopback_unless_allowed(tmp_path):
    port = free_port()
    cfg = tmp_path / "sluice.toml"
    cfg.write_text(config(port, tmp_path / "data", extra='[admin]\naddress = "0.0.0.0:8025"\n'))
    result = subprocess.run([BIN, "check-config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "admin.address" in result.stderr and "allow_remote" in result.stderr
    line = next(i for i, l in enumerate(cfg.read_text().splitlines(), 1) if l.startswith("address = \"0.0.0.0"))
    assert f"sluice.toml:{line}:" in result.stderr, result.stderr

    cfg.write_text(config(port, tmp_path / "data", extra='[admin]\naddress = "0.0.0.0:8025"\nallow_remote = true\n'))
    result = subprocess.run([BIN, "check-config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_ready_turns_503_during_shutdown(tmp_path):
    # A next hop that accepts the connection and never greets keeps a
    # delivery attempt (and so the shutdown) going until we close it.
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(8)
    hole.settimeout(30)
    port = free_port()
    text = config(port, tmp_path / "data", server_extra='shutdown_grace = "60s"',
                  extra=f'[[delivery.route]]\ndomain = "example.test"\nnext_hop = "127.0.0.1:{hole.getsockname()[1]}"\n')
    server = Server(tmp_path, text).start(port)
    conns = []
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp.sendmail("a@example.org", ["user@example.test"], b"Subject: stuck\r\n\r\nx\r\n")
        conns.append(hole.accept()[0])  # the attempt is in flight
        assert over_unix(server, "GET", "/health/ready")[0] == 200

        server.proc.send_signal(signal.SIGTERM)
        deadline = time.time() + 30
        status = None
        while time.time() < deadline:
            status, _, body = over_unix(server, "GET", "/health/ready")
            if status == 503:
                break
            time.sleep(0.05)
        assert status == 503 and body == {"status": "not ready"}
        assert over_unix(server, "GET", "/health/live")[0] == 200
        status, _, body = over_unix(server, "GET", "/health")
        assert (status, body) == (503, {"live": True, "ready": False})
    finally:
        for conn in conns:
            conn.close()
        hole.close()
        assert server.stop() == 0
    assert not (server.data / "admin.sock").exists()


def metric(port, series):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
    return None


def test_tcp_serves_metrics_and_health_only_without_a_token_file(sluice):
    port = free_port()
    server = sluice(extra=admin_extra(port))
    assert over_tcp(port, "GET", "/health")[0] == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200 and b"sluice_connections_total" in response.read()
    for method, path in [("POST", "/reload"), ("POST", "/queue/flush"), ("GET", "/queue"), ("GET", "/nowhere")]:
        for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}):
            status, _, body = over_tcp(port, method, path, headers)
            assert status == 403 and "unix socket" in body["error"], (method, path, status, body)
    # A page open in a browser on this host: Origin says so, even on GET.
    for method, path in [("POST", "/reload"), ("POST", "/queue/flush"), ("GET", "/metrics")]:
        status, _, body = over_tcp(port, method, path, {"Origin": "http://evil.example"})
        assert status == 403 and "Origin" in body["error"], (method, path, status, body)
    # DNS rebinding: a foreign name resolving to 127.0.0.1.
    status, _, _ = over_tcp(port, "GET", "/metrics", {"Host": f"evil.example:{port}"})
    assert status == 403
    # The socket still does everything.
    status, _, body = over_unix(server, "POST", "/queue/flush")
    assert (status, body) == (200, {"flushed": 0, "skipped_held": 0})
    assert metric(port, 'sluice_admin_requests_refused_total{reason="no_token_configured"}') == 8
    assert metric(port, 'sluice_admin_requests_refused_total{reason="origin"}') == 3
    assert metric(port, 'sluice_admin_requests_refused_total{reason="host"}') == 1


def test_the_token_unlocks_the_api_over_tcp(sluice, tmp_path):
    port = free_port()
    server = sluice(extra=admin_extra(port, token_file(tmp_path)))
    good = {"Authorization": f"Bearer {TOKEN}"}

    status, response, body = over_tcp(port, "POST", "/reload")
    assert status == 401 and "admin token" in body["error"]
    assert response.getheader("WWW-Authenticate", "").startswith("Bearer")
    for wrong in (f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}", "Bearer"):
        status, _, _ = over_tcp(port, "POST", "/reload", {"Authorization": wrong})
        assert status == 401, wrong
    status, _, body = over_tcp(port, "POST", "/queue/0123456789abcdef/hold")
    assert status == 401, body

    # With the token, but sent by a browser or to a rebound name: refused.
    status, _, body = over_tcp(port, "POST", "/reload", {**good, "Origin": f"http://127.0.0.1:{port}"})
    assert status == 403 and "Origin" in body["error"]
    for host in ("evil.example", f"evil.example:{port}", f"localhost.evil.example:{port}"):
        status, _, body = over_tcp(port, "POST", "/reload", {**good, "Host": host})
        assert status == 403 and "Host" in body["error"], host

    status, _, body = over_tcp(port, "POST", "/reload", good)
    assert status == 200 and "inbound" in body["pipelines"], body
    for host in ("localhost", f"localhost:{port}", f"127.0.0.1:{port}"):
        status, _, body = over_tcp(port, "GET", "/queue", {**good, "Host": host})
        assert (status, body) == (200, {"node": "mx.example.test", "count": 0, "entries": []}), host

    # Metrics and health need nothing, and count what was refused.
    assert over_tcp(port, "GET", "/health/ready")[0] == 200
    assert metric(port, 'sluice_admin_requests_refused_total{reason="missing_token"}') == 2
    assert metric(port, 'sluice_admin_requests_refused_total{reason="wrong_token"}') == 4
    assert metric(port, 'sluice_admin_requests_refused_total{reason="origin"}') == 1
    assert metric(port, 'sluice_admin_requests_refused_total{reason="host"}') == 3
    assert server.stop() == 0
    log = server.log.read_text()
    assert log.count("admin request refused") == 10, log
    assert TOKEN not in log


def test_a_token_file_others_may_read_stops_the_start(tmp_path):
    port = free_port()
    path = token_file(tmp_path, mode=0o644)
    cfg = tmp_path / "sluice.toml"
    cfg.write_text(config(port, tmp_path / "data", extra=admin_extra(free_port(), path)))
    line = next(i for i, l in enumerate(cfg.read_text().splitlines(), 1) if l.startswith("token_file"))
    for args in (["serve", "--config", str(cfg)], ["check-config", str(cfg)]):
        result = subprocess.run([BIN] + args, capture_output=True, text=True, timeout=60)
        assert result.returncode == 1, (args, result.stderr)
        assert f"sluice.toml:{line}:" in result.stderr and "admin.token_file" in result.stderr, result.stderr
        assert "mode 0644" in result.stderr and "chmod 600" in result.stderr, result.stderr
    assert not (tmp_path / "data" / "admin.sock").exists()
    os.chmod(path, 0o640)
    result = subprocess.run([BIN, "check-config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "mode 0640" in result.stderr, result.stderr
    os.chmod(path, 0o600)
    result = subprocess.run([BIN, "check-config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr

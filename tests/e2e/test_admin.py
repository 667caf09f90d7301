"""The admin endpoint's HTTP API on its unix socket and on loopback TCP:
health, error shapes, socket lifecycle, readiness during shutdown."""
import http.client
import json
import signal
import smtplib
import socket
import stat
import subprocess
import time

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


def call(conn, method, path):
    conn.request(method, path)
    response = conn.getresponse()
    body = response.read()
    return response.status, response, json.loads(body)


def over_unix(server, method, path):
    conn = UnixHTTPConnection(server.data / "admin.sock")
    try:
        return call(conn, method, path)
    finally:
        conn.close()


def test_health_and_errors_on_both_listeners(sluice):
    admin_port = free_port()
    server = sluice(extra=f'[admin]\naddress = "127.0.0.1:{admin_port}"\n')
    tcp = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=10)
    try:
        for send in (lambda m, p: over_unix(server, m, p), lambda m, p: call(tcp, m, p)):
            status, response, body = send("GET", "/health/live")
            assert (status, body) == (200, {"status": "live"})
            assert response.getheader("Content-Type") == "application/json"
            status, _, body = send("GET", "/health/ready")
            assert (status, body) == (200, {"status": "ready"})
            status, _, body = send("GET", "/health")
            assert (status, body) == (200, {"live": True, "ready": True})

            status, _, body = send("GET", "/queue")
            assert (status, body) == (200, {"count": 0, "entries": []})

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

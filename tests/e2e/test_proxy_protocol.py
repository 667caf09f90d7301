"""PROXY protocol v1 and v2 on a listener, behind a real HAProxy
(send-proxy, send-proxy-v2): the session, the relay plugin, the per-client
limits and the Received header see the client HAProxy accepted, not
HAProxy; only `proxy_trusted_networks` may send a header; a missing,
malformed or late header closes the connection without a session."""
import shutil
import socket
import subprocess
import time

import pytest

from conftest import Raw, Server, Sink, config, free_port


def require_haproxy():
    assert shutil.which("haproxy"), "haproxy is not installed (tests/install-peers.sh installs it)"


class Haproxy:
    """HAProxy in TCP mode: `v1` and `v2` frontends relaying to `backend`."""

    def __init__(self, tmp, backend):
        require_haproxy()
        self.v1, self.v2 = free_port(), free_port()
        cfg = tmp / "haproxy.cfg"
        cfg.write_text(f"""
global
    maxconn 200
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend v1
    bind 127.0.0.1:{self.v1}
    default_backend sluice_v1
frontend v2
    bind 127.0.0.1:{self.v2}
    default_backend sluice_v2
backend sluice_v1
    server s 127.0.0.1:{backend} send-proxy
backend sluice_v2
    server s 127.0.0.1:{backend} send-proxy-v2
""")
        check = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        self.log = open(tmp / "haproxy.log", "wb")
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 20
        for port in (self.v1, self.v2):
            while True:
                assert self.proc.poll() is None, (tmp / "haproxy.log").read_text()
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert time.time() < deadline, "haproxy did not listen"
                    time.sleep(0.1)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


PROXY_LISTENER = """
[[listener]]
name = "behind-proxy"
address = "127.0.0.1:{port}"
pipeline = "inbound"
greet_delay = "0s"
proxy_protocol = true
proxy_trusted_networks = ["127.0.0.1/32"]
{tls}
"""


@pytest.fixture
def env(tmp_path):
    started = []

    def start(trusted='["127.0.0.5/32"]', server_extra="", route_port=None, tls=""):
        mx, behind = free_port(), free_port()
        extra = PROXY_LISTENER.format(port=behind, tls=tls)
        if route_port:
            extra += f'[[delivery.route]]\ndomain = "example.test"\nnext_hop = "127.0.0.1:{route_port}"\n'
        server = Server(tmp_path, config(mx, tmp_path / "data", trusted=trusted, extra=extra,
                                         server_extra=server_extra))
        server.start(mx)
        started.append(server)
        proxy = Haproxy(tmp_path, behind)
        started.append(proxy)
        return server, proxy, behind

    yield start
    for thing in reversed(started):
        thing.stop()


def greet(port, source):
    raw = Raw(port, source=source)
    code, text = raw.reply()
    assert code == 220, text
    assert raw.cmd(b"EHLO client.test")[0] == 250
    return raw


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_session_sees_the_client_haproxy_accepted(env, version, tmp_path):
    sink = Sink(free_port()).start()
    try:
        server, proxy, _ = env(route_port=sink.port)
        port = getattr(proxy, version)
        # The relay plugin trusts 127.0.0.5 only; HAProxy itself is 127.0.0.1.
        trusted = greet(port, "127.0.0.5")
        assert trusted.cmd(b"MAIL FROM:<a@example.org>")[0] == 250
        assert trusted.cmd(b"RCPT TO:<b@example.test>")[0] == 250
        assert trusted.cmd(b"DATA")[0] == 354
        assert trusted.cmd(b"Subject: via haproxy\r\n\r\nbody\r\n.")[0] == 250
        trusted.cmd(b"QUIT")
        other = greet(port, "127.0.0.6")
        assert other.cmd(b"MAIL FROM:<a@example.org>")[0] == 250
        code, text = other.cmd(b"RCPT TO:<b@example.test>")
        assert code == 554 or code == 550, text
        other.cmd(b"QUIT")
        sink.wait(1)
        message = sink.messages[0].content
        received = message.split(b"\r\n\r\n", 1)[0]
        assert b"[127.0.0.5]" in received, received
        log = server.log.read_text(errors="replace")
        assert "client=127.0.0.5:" in log and "client=127.0.0.6:" in log, log
    finally:
        sink.stop()


def test_per_client_limits_count_the_real_client(env):
    server, proxy, _ = env(server_extra="max_connections_per_ip = 2")
    held = [greet(proxy.v2, "127.0.0.5") for _ in range(2)]
    third = Raw(proxy.v2, source="127.0.0.5")
    code, text = third.reply()
    assert code == 421, text
    # Another client behind the same proxy is not held to 127.0.0.5's cap.
    greet(proxy.v2, "127.0.0.6").cmd(b"QUIT")
    for raw in held:
        raw.cmd(b"QUIT")


def closed_without_reply(raw, timeout=10):
    raw.sock.settimeout(timeout)
    try:
        return raw.sock.recv(512) == b""
    except ConnectionResetError:
        return True


def test_only_trusted_senders_and_well_formed_headers(env):
    server, _, behind = env(server_extra='[server.timeouts]\ntls_handshake = "1s"')
    # A trusted sender's own header is taken as it is (v1 by hand).
    raw = Raw(behind, source="127.0.0.1")
    raw.send(b"PROXY TCP4 127.0.0.5 127.0.0.1 40000 25\r\n")
    assert raw.reply()[0] == 220
    assert raw.cmd(b"EHLO client.test")[0] == 250
    assert raw.cmd(b"MAIL FROM:<a@example.org>")[0] == 250
    assert raw.cmd(b"RCPT TO:<b@example.test>")[0] == 250
    raw.cmd(b"QUIT")
    # Not in proxy_trusted_networks: closed before a byte is read, even
    # with a header naming a trusted client.
    forged = Raw(behind, source="127.0.0.9")
    forged.send(b"PROXY TCP4 127.0.0.5 127.0.0.1 40000 25\r\n")
    assert closed_without_reply(forged)
    # SMTP where the header should be, a malformed header, no header.
    for opening in (b"EHLO client.test\r\n", b"PROXY TCP4 127.0.0.5 127.0.0.1 40000\r\n",
                    b"PROXY TCP9 a b 1 2\r\n"):
        bad = Raw(behind, source="127.0.0.1")
        bad.send(opening)
        assert closed_without_reply(bad), opening
    silent = Raw(behind, source="127.0.0.1")
    started = time.time()
    assert closed_without_reply(silent)
    assert time.time() - started < 9
    log = server.log.read_text(errors="replace")
    assert "not a trusted PROXY protocol sender" in log, log
    assert "no PROXY header" in log and "malformed PROXY v1 header" in log, log
    assert server.proc.poll() is None


def test_implicit_tls_follows_the_header(env):
    import ssl
    server, proxy, _ = env(tls='tls = "implicit"')
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    raw = Raw(proxy.v2, source="127.0.0.5")
    raw.sock = ctx.wrap_socket(raw.sock, server_hostname="mx.example.test")
    code, text = raw.reply()
    assert code == 220, text
    assert raw.cmd(b"EHLO client.test")[0] == 250
    raw.cmd(b"QUIT")
    assert "client=127.0.0.5:" in server.log.read_text(errors="replace")


def test_proxy_trusted_networks_needs_proxy_protocol(tmp_path):
    from conftest import BIN
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[[listener]]\nname = "mx"\naddress = "127.0.0.1:2525"\npipeline = "p"\n'
                   'proxy_trusted_networks = ["10.0.0.0/8"]\n[pipeline.p]\n')
    done = subprocess.run([BIN, "check-config", str(cfg)], capture_output=True, text=True)
    assert done.returncode != 0
    assert f"{cfg}:5:" in done.stderr and "listener[0].proxy_trusted_networks" in done.stderr, done.stderr

"""MTA-STS (RFC 8461) on outbound delivery by MX: the `_mta-sts` TXT
record and the policy served over HTTPS by a local server (Python's ssl,
certificate from a test CA given to sluice as `[delivery] ca_file`) decide
where mail may go. `enforce` delivers only to a listed MX host, over TLS
verified for its name; an MX host not in the policy, or one without
STARTTLS, defers the mail and nothing goes in clear text; `testing`
delivers; a fetched policy is kept across a restart while the policy host
is down."""
import http.server
import random
import socket
import ssl
import threading
import time

import pytest
from aiosmtpd.controller import Controller

from conftest import Recorder, Server, config, free_port
from peers import Certs

DOMAIN = "sts.example"
MX = "mx.sts.example"


def policy_address():
    """The policy host listens on 443, as RFC 8461 §3.3 has it, so each one
    gets a loopback address of its own (another suite may hold one)."""
    for _ in range(50):
        ip = f"127.61.{random.randrange(256)}.{random.randrange(1, 255)}"
        with socket.socket() as s:
            try:
                s.bind((ip, 443))
                return ip
            except OSError:
                continue
    raise AssertionError("no free loopback address for port 443")


class PolicyHost:
    """HTTPS on ip:443 serving /.well-known/mta-sts.txt."""

    def __init__(self, certs, body, ip, content_type="text/plain"):
        self.requests = []
        host = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                host.requests.append((self.path, self.headers.get("Host")))
                if self.path != "/.well-known/mta-sts.txt":
                    self.send_error(404)
                    return
                data = host.body.encode()
                self.send_response(200)
                self.send_header("Content-Type", host.content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.body, self.content_type = body, content_type
        self.httpd = http.server.ThreadingHTTPServer((ip, 443), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(certs.cert_file), str(certs.key_file))
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class Mx:
    """aiosmtpd as the domain's MX, with STARTTLS (or without)."""

    def __init__(self, certs, starttls=True):
        self.port = free_port()
        self.recorder = Recorder()
        self.tls_sessions = []
        ctx = None
        if starttls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(certs.cert_file), str(certs.key_file))
        mx = self

        class Handler(Recorder):
            async def handle_DATA(self, server, session, envelope):
                mx.tls_sessions.append(session.ssl is not None)
                return await super().handle_DATA(server, session, envelope)

        self.recorder = Handler()
        self.controller = Controller(self.recorder, hostname="127.0.0.1", port=self.port, tls_context=ctx)
        self.controller.start()

    def stop(self):
        self.controller.stop()


def policy(mode="enforce", mx=(MX,), max_age=86400):
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx), f"max_age: {max_age}"]
    return "\r\n".join(lines) + "\r\n"


@pytest.fixture
def certs(tmp_path):
    return Certs(tmp_path / "certs", names=(MX, f"mta-sts.{DOMAIN}"))


@pytest.fixture
def world(tmp_path, certs, dns_zone):
    started = []

    def start(body=None, starttls=True, record="v=STSv1; id=20261204a;"):
        mx = Mx(certs, starttls=starttls)
        started.append(mx)
        host, ip = None, policy_address()
        if body is not None:
            host = PolicyHost(certs, body, ip)
            started.append(host)
        records = {
            DOMAIN: {"MX": [(10, MX)]},
            MX: {"A": ["127.0.0.1"]},
            f"mta-sts.{DOMAIN}": {"A": [ip]},
        }
        if record:
            records[f"_mta-sts.{DOMAIN}"] = {"TXT": [record]}
        dns_port = dns_zone(records, ttl=0)
        extra = (f'[delivery]\nsmtp_port = {mx.port}\nignore_target_hosts = []\nca_file = "{certs.ca_file}"\n'
                 f'[dns]\nnameservers = ["127.0.0.1:{dns_port}"]\n')
        port = free_port()
        server = Server(tmp_path, config(port, tmp_path / "data", extra=extra))
        server.start(port)
        started.append(server)
        return server, mx, host

    yield start
    for thing in reversed(started):
        thing.stop()


def send(server, subject):
    import smtplib
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as s:
        s.sendmail("a@example.org", [f"user@{DOMAIN}"], f"Subject: {subject}\r\n\r\nbody\r\n")


def wait_log(server, needle, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        log = server.log.read_text(errors="replace")
        if needle in log:
            return log
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} not logged:\n{server.log.read_text(errors='replace')}")


def wait_delivered(mx, count=1, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline and len(mx.recorder.messages) < count:
        time.sleep(0.1)
    return mx.recorder.messages


def test_enforce_delivers_to_a_listed_mx_over_verified_tls(world):
    server, mx, host = world(policy())
    send(server, "enforced")
    assert wait_delivered(mx), server.log.read_text()
    assert mx.tls_sessions == [True]
    assert host.requests == [("/.well-known/mta-sts.txt", f"mta-sts.{DOMAIN}")]
    wait_log(server, "MTA-STS policy fetched")


def test_enforce_defers_for_an_mx_not_in_the_policy(world):
    server, mx, _ = world(policy(mx=("other.sts.example",)))
    send(server, "wrong mx")
    wait_log(server, "is in its MTA-STS policy")
    time.sleep(1)
    assert mx.recorder.messages == []


def test_enforce_never_falls_back_to_clear_text(world):
    server, mx, _ = world(policy(), starttls=False)
    send(server, "no starttls")
    log = wait_log(server, "delivery attempt")
    assert "TLS required" in log, log
    assert mx.recorder.messages == []


def test_testing_delivers_an_mx_not_in_the_policy(world):
    server, mx, _ = world(policy(mode="testing", mx=("other.sts.example",)))
    send(server, "testing")
    assert wait_delivered(mx), server.log.read_text()
    wait_log(server, "MTA-STS testing: this MX host is not in the policy")


def test_no_record_no_policy(world):
    server, mx, host = world(policy(mx=("other.sts.example",)), record=None)
    send(server, "no record")
    assert wait_delivered(mx), server.log.read_text()
    assert host.requests == []


def test_the_policy_outlives_a_restart_while_its_host_is_down(world):
    server, mx, host = world(policy(mx=("other.sts.example",)))
    send(server, "first")
    wait_log(server, "is in its MTA-STS policy")
    server.stop()
    host.stop()
    server.start(server.port)
    send(server, "after restart")
    # Without the kept policy the fetch would fail and mail would go to
    # the unlisted MX; with it, both messages wait.
    deadline = time.time() + 30
    while server.log.read_text().count("is in its MTA-STS policy") < 3 and time.time() < deadline:
        time.sleep(0.1)
    assert server.log.read_text().count("is in its MTA-STS policy") >= 3, server.log.read_text()
    assert mx.recorder.messages == [], "delivered although the kept policy forbids it"
    assert (server.data / "mta-sts" / f"{DOMAIN}.json").exists()

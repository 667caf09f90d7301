"""A route that authenticates to its next hop (a smarthost, as users relay
through a provider): AUTH PLAIN or LOGIN after verified STARTTLS, with
credentials from a 0600 `auth_file`, against aiosmtpd's SMTP AUTH. A
refused login defers the mail and keeps it queued; the credentials never
go out before TLS, nor into the log; a route whose credentials could travel
in clear text, or a file others may read, is a configuration error."""
import smtplib
import ssl
import subprocess
import time

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from conftest import BIN, free_port
from peers import Certs


class Smarthost:
    """aiosmtpd with STARTTLS required before AUTH, and AUTH required
    before MAIL; it records each login and each message."""

    def __init__(self, certs, password, mechanisms=("PLAIN", "LOGIN")):
        self.port = free_port()
        self.logins, self.messages = [], []
        self.password = password
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(certs.cert_file), str(certs.key_file))
        excluded = [m for m in ("PLAIN", "LOGIN") if m not in mechanisms]
        self.controller = Controller(
            self, hostname="127.0.0.1", port=self.port, tls_context=ctx, require_starttls=True,
            authenticator=self.authenticate, auth_required=True, auth_require_tls=True,
            auth_exclude_mechanism=excluded,
        )
        self.controller.start()

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        login, password = auth_data.login.decode(), auth_data.password.decode()
        self.logins.append((mechanism, login, password, session.ssl is not None))
        # handled=False: aiosmtpd answers a failure with its own 535.
        return AuthResult(success=(login, password) == ("relay@example.org", self.password), handled=False)

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope)
        return "250 OK"

    def stop(self):
        self.controller.stop()


SECRET = "s3cret: with spaces"


def route(tmp_path, hop, certs, tls=None, mode=0o600):
    auth = tmp_path / "smarthost.auth"
    auth.write_text(f"relay@example.org:{SECRET}\n")
    auth.chmod(mode)
    tls_line = f'tls = "{tls}"\n' if tls else ""
    return (f'[delivery]\nca_file = "{certs.ca_file}"\n\n'
            f'[[delivery.route]]\ndomain = "*"\nnext_hop = "localhost:{hop.port}"\n'
            f'auth_file = "{auth}"\n{tls_line}')


@pytest.fixture
def certs(tmp_path):
    return Certs(tmp_path / "certs")


@pytest.fixture
def smarthost(certs):
    hosts = []

    def start(**kw):
        hosts.append(Smarthost(certs, **kw))
        return hosts[-1]

    yield start
    for h in hosts:
        h.stop()


def send(server, subject):
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as s:
        s.sendmail("a@example.org", ["b@remote.example"], f"Subject: {subject}\r\n\r\nbody\r\n")


def wait(condition, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_relays_through_the_smarthost_after_starttls(sluice, smarthost, certs, tmp_path, mechanism):
    hop = smarthost(password=SECRET, mechanisms=(mechanism,))
    server = sluice(extra=route(tmp_path, hop, certs))
    send(server, "first")
    assert wait(lambda: len(hop.messages) == 1), server.log.read_text()
    send(server, "second")
    assert wait(lambda: len(hop.messages) == 2), server.log.read_text()
    assert hop.logins[0] == (mechanism, "relay@example.org", SECRET, True), hop.logins
    # The second message went over the pooled, authenticated connection.
    assert len(hop.logins) == 1, hop.logins
    assert SECRET not in server.log.read_text()


def test_a_refused_login_defers_and_keeps_the_mail(sluice, smarthost, certs, tmp_path):
    hop = smarthost(password="another password")
    server = sluice(extra=route(tmp_path, hop, certs))
    send(server, "refused")
    assert wait(lambda: "authentication failed" in server.log.read_text()), server.log.read_text()
    assert hop.messages == [] and hop.logins[0][1:] == ("relay@example.org", SECRET, True)
    listed = subprocess.run([BIN, "queue", "list", "--config", str(server.tmp / "sluice.toml")],
                            capture_output=True, text=True, timeout=30)
    assert "b@remote.example" in listed.stdout, listed.stdout + listed.stderr
    assert SECRET not in server.log.read_text()


def check_config(tmp_path, text):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[listener]]\nname = "mx"\naddress = "127.0.0.1:2525"\npipeline = "p"\n'
                   '[pipeline.p]\n' + text)
    return subprocess.run([BIN, "check-config", str(cfg)], capture_output=True, text=True), cfg


def test_credentials_never_travel_in_clear_text_or_from_a_readable_file(tmp_path, certs):
    class Hop:
        port = 2526

    done, cfg = check_config(tmp_path, route(tmp_path, Hop, certs, tls="opportunistic"))
    assert done.returncode != 0
    assert f"{cfg}:13:" in done.stderr and "delivery.route[0].tls" in done.stderr, done.stderr
    assert "only over verified TLS" in done.stderr, done.stderr
    done, cfg = check_config(tmp_path, route(tmp_path, Hop, certs, mode=0o640))
    assert done.returncode != 0
    assert f"{cfg}:12:" in done.stderr and "delivery.route[0].auth_file" in done.stderr, done.stderr
    assert "accessible by group or others" in done.stderr, done.stderr
    done, _ = check_config(tmp_path, route(tmp_path, Hop, certs))
    assert done.returncode == 0, done.stderr

"""builtin:antispoof end to end: the real server refusing a local sender
domain (example.org) in the reverse-path and in the From header from
unauthenticated clients, SMTP from 127.0.0.x client addresses.

Listener `mx` is plain; listener `sub` offers AUTH without TLS (loopback
testing) for the authenticated case."""
import base64
import subprocess

import pytest

from conftest import BIN, Raw, Server, free_port, suite_config
from peers import wait_for

USER = ("alice@example.org", "plum-orbit-window-47")
REFUSAL = b"550 5.7.1 sender address in a local domain from an unauthenticated client"


def antispoof_config(port, sub_port, data, extra=""):
    return f"""
[server]
hostname = "mx.example.test"
data_dir = "{data}"

[domains]
local = ["localhost", "example.org"]

[[listener]]
name = "mx"
address = "127.0.0.1:{port}"
pipeline = "inbound"

[[listener]]
name = "sub"
address = "127.0.0.1:{sub_port}"
pipeline = "inbound"
auth = "optional"
auth_without_tls = true

[pipeline.inbound]
mail = ["antispoof"]
rcpt = ["relay"]
data = ["antispoof"]

[plugins.relay]
path = "builtin:relay"

[plugins.antispoof]
path = "builtin:antispoof"

[plugins.antispoof.config]
{extra}

[queue]
retry = ["1s"]
"""


@pytest.fixture
def antispoof(tmp_path):
    servers = []

    def start(extra=""):
        port, sub_port = free_port(), free_port()
        server = Server(tmp_path, antispoof_config(port, sub_port, tmp_path / "data", extra))
        servers.append(server)
        server.start(port)
        server.sub_port = sub_port
        return server

    yield start
    for server in servers:
        server.stop()


def connect(server, port=None, source="127.0.0.5"):
    raw = Raw(port or server.port, source=source)
    assert raw.reply()[0] == 220
    assert raw.cmd(b"EHLO client.test")[0] == 250
    return raw


def mail(raw, sender):
    return raw.cmd(b"MAIL FROM:<" + sender.encode() + b">")


def send(raw, sender, from_header):
    """A whole transaction to bob@localhost; returns the reply to the data."""
    code, text = mail(raw, sender)
    assert code == 250, text
    assert raw.cmd(b"RCPT TO:<bob@localhost>")[0] == 250
    assert raw.cmd(b"DATA")[0] == 354
    body = b"From: " + from_header.encode() + b"\r\nSubject: hello\r\n\r\nhello\r\n."
    return raw.cmd(body)


def test_local_reverse_path_is_refused(antispoof):
    server = antispoof()
    raw = connect(server)
    code, text = mail(raw, "alice@example.org")
    assert code == 550 and text == REFUSAL, text
    # Case does not help; another domain and the null sender are fine.
    assert mail(raw, "Alice@EXAMPLE.ORG")[0] == 550
    assert mail(raw, "alice@client.test")[0] == 250
    assert raw.cmd(b"RSET")[0] == 250
    assert mail(raw, "")[0] == 250
    raw.close()


def test_local_from_header_is_refused(antispoof):
    server = antispoof()
    raw = connect(server)
    code, text = send(raw, "alice@client.test", "Alice <alice@example.org>")
    assert code == 550 and text == REFUSAL, text
    # Any of several From addresses counts.
    code, text = send(raw, "alice@client.test", "a@client.test, \"B\" <b@example.org>")
    assert code == 550, text
    code, text = send(raw, "alice@client.test", "Alice <alice@client.test>")
    assert code == 250, text
    raw.close()
    assert wait_for(lambda: len(server.maildir("bob")) == 1)
    delivered = server.maildir("bob")[0].read_bytes()
    assert b"From: Alice <alice@client.test>" in delivered, delivered


def test_switches(antispoof):
    server = antispoof("check_reverse_path = false")
    raw = connect(server)
    code, text = send(raw, "alice@example.org", "Alice <alice@example.org>")
    assert code == 550, text
    raw.close()
    server.stop()
    server = antispoof("check_from_header = false")
    raw = connect(server)
    assert mail(raw, "alice@example.org")[0] == 550
    assert raw.cmd(b"RSET")[0] == 250
    code, text = send(raw, "alice@client.test", "Alice <alice@example.org>")
    assert code == 250, text
    raw.close()


def test_allow_senders(antispoof):
    server = antispoof('allow_senders = ["list@example.org"]')
    raw = connect(server)
    code, text = send(raw, "list@example.org", "The list <list@example.org>")
    assert code == 250, text
    assert mail(raw, "alice@example.org")[0] == 550
    raw.close()


def test_trusted_networks(antispoof):
    server = antispoof('trusted_networks = ["127.0.0.5/32"]')
    raw = connect(server)
    code, text = send(raw, "alice@example.org", "Alice <alice@example.org>")
    assert code == 250, text
    raw.close()
    raw = connect(server, source="127.0.0.6")
    assert mail(raw, "alice@example.org")[0] == 550
    raw.close()


def test_authenticated_client_is_allowed(antispoof, tmp_path):
    server = antispoof()
    done = subprocess.run([BIN, "user", "add", USER[0], "--config", str(tmp_path / "sluice.toml"),
                           "--password-stdin"], input=USER[1] + "\n", capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    raw = connect(server, port=server.sub_port)
    assert mail(raw, "alice@example.org")[0] == 550
    plain = base64.b64encode(b"\0" + USER[0].encode() + b"\0" + USER[1].encode())
    code, text = raw.cmd(b"AUTH PLAIN " + plain)
    assert code == 235, text
    code, text = send(raw, "alice@example.org", "Alice <alice@example.org>")
    assert code == 250, text
    raw.close()


def test_bad_config_is_refused_at_start(tmp_path):
    cfg = tmp_path / "sluice.toml"
    cfg.write_text(suite_config(antispoof_config(free_port(), free_port(), tmp_path / "data",
                                                 'allow_senders = ["@example.org"]')))
    result = subprocess.run([BIN, "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert 'antispoof: allow_senders: "@example.org" is not an address or a domain' in result.stderr + result.stdout

"""builtin:helo end to end: the real server, reverse DNS served by the local
DNS server (dns_server.py), SMTP from 127.0.0.x client addresses.

Reverse DNS: 127.0.0.5 is good.test, which resolves back to it;
127.0.0.6 is liar.test, which resolves elsewhere; 127.0.0.7 has no PTR;
the PTR of 127.0.0.8 answers SERVFAIL. 127.0.0.1 is trusted by default.

Listener `mx` runs the plugin at helo; listener `sub` (AUTH without TLS,
loopback testing) runs it at mail, so that authenticated clients skip it."""
import base64
import subprocess

import pytest

from conftest import BIN, Raw, Server, free_port, suite_config
from dns_server import SERVFAIL

USER = ("alice@localhost", "plum-orbit-window-47")


def zone():
    return {
        "5.0.0.127.in-addr.arpa": {"PTR": ["good.test"]},
        "good.test": {"A": ["127.0.0.5"]},
        "6.0.0.127.in-addr.arpa": {"PTR": ["liar.test"]},
        "liar.test": {"A": ["127.0.0.99"]},
        "8.0.0.127.in-addr.arpa": SERVFAIL,
    }


def helo_config(port, sub_port, data, dns_port, extra=""):
    return f"""
[server]
hostname = "mx.example.test"
data_dir = "{data}"
# The server's own PTR lookup off: these tests count the plugin's queries.
reverse_lookup = false

[domains]
local = ["localhost", "example.org"]

[[listener]]
name = "mx"
address = "127.0.0.1:{port}"
pipeline = "inbound"

[[listener]]
name = "sub"
address = "127.0.0.1:{sub_port}"
pipeline = "submission"
auth = "optional"
auth_without_tls = true

[pipeline.inbound]
helo = ["helo"]
rcpt = ["relay"]

[pipeline.submission]
mail = ["helo"]
rcpt = ["relay"]

[plugins.relay]
path = "builtin:relay"

[plugins.helo]
path = "builtin:helo"
timeout = "5s"

[plugins.helo.config]
{extra}

[dns]
nameservers = ["127.0.0.1:{dns_port}"]
timeout = "2s"
attempts = 1

[queue]
retry = ["1s"]
"""


@pytest.fixture
def helo(tmp_path, dns_zone):
    servers = []

    def start(extra=""):
        dns_port = dns_zone(zone())
        port, sub_port = free_port(), free_port()
        server = Server(tmp_path, helo_config(port, sub_port, tmp_path / "data", dns_port, extra))
        servers.append(server)
        server.start(port)
        server.sub_port = sub_port
        return server

    yield start
    for server in servers:
        server.stop()


def ehlo(server, name, source="127.0.0.5", port=None):
    raw = Raw(port or server.port, source=source)
    assert raw.reply()[0] == 220
    return raw, raw.cmd(b"EHLO " + name.encode())


def test_helo_syntax(helo):
    server = helo()
    # The server itself refuses malformed names (501 5.5.4); the plugin
    # adds what RFC 5321 does not allow but the server lets through.
    for name in ["192.0.2.1", "my_host.example", "10.1.2.3.4", "1234"]:
        raw, (code, text) = ehlo(server, name)
        assert code == 501, (name, text)
        assert text.startswith(b"501 5.5.2 Invalid HELO/EHLO name"), text
        raw.close()
    raw, (code, text) = ehlo(server, "192.0.2.1")
    assert b"brackets" in text, text
    # HELO gets the same check as EHLO.
    code, text = raw.cmd(b"HELO 192.0.2.1")
    assert code == 501, text
    raw.close()
    for name in ["client.test", "[192.0.2.1]", "[IPv6:2001:db8::1]", "client"]:
        raw, (code, text) = ehlo(server, name)
        assert code == 250, (name, text)
        assert raw.cmd(b"MAIL FROM:<a@client.test>")[0] == 250
        raw.close()


def test_syntax_check_can_be_switched_off(helo):
    server = helo("reject_invalid = false")
    for name in ["192.0.2.1", "my_host.example"]:
        raw, (code, text) = ehlo(server, name)
        assert code == 250, (name, text)
        raw.close()


def test_require_fqdn(helo):
    server = helo("require_fqdn = true")
    raw, (code, text) = ehlo(server, "client")
    assert code == 504 and text.startswith(b"504 5.5.2"), text
    assert b"not a fully-qualified domain name" in text, text
    raw.close()
    raw, (code, text) = ehlo(server, "client.test")
    assert code == 250, text
    raw.close()


def test_own_name_from_outside_is_forged(helo):
    server = helo('own_addresses = ["127.0.0.1"]')
    for name in ["mx.example.test", "MX.Example.Test", "example.org", "[127.0.0.1]"]:
        raw, (code, text) = ehlo(server, name)
        assert code == 550, (name, text)
        assert text.startswith(b"550 5.7.1 ") and b"forged" in text, text
        raw.close()
    # The server itself (127.0.0.1, trusted by default) may use its name.
    raw, (code, text) = ehlo(server, "mx.example.test", source="127.0.0.1")
    assert code == 250, text
    raw.close()


def test_own_name_check_can_be_switched_off(helo):
    server = helo("reject_own_name = false")
    raw, (code, text) = ehlo(server, "mx.example.test")
    assert code == 250, text
    raw.close()


def test_fcrdns(helo):
    # One after the other, these sessions share one reused instance of the
    # bundled plugin: each must get its own client's reverse DNS, not the
    # answer the instance looked up for the previous session.
    server = helo("check_fcrdns = true")
    raw, (code, text) = ehlo(server, "good.test", source="127.0.0.5")
    assert code == 250, text
    raw.close()
    raw, (code, text) = ehlo(server, "liar.test", source="127.0.0.6")
    assert code == 550, text
    assert text.startswith(b"550 5.7.25 Client host [127.0.0.6]: reverse DNS name liar.test"), text
    raw.close()
    raw, (code, text) = ehlo(server, "client.test", source="127.0.0.7")
    assert code == 550, text
    assert text.startswith(b"550 5.7.25 Client host [127.0.0.7] has no reverse DNS (PTR) record"), text
    raw.close()
    raw, (code, text) = ehlo(server, "client.test", source="127.0.0.8")
    assert code == 450 and text.startswith(b"450 4.7.25 "), text
    raw.close()


def test_dns_failure_passes_when_told_to(helo, dns_zone):
    server = helo("check_fcrdns = true\ntempfail_on_dns_error = false")
    raw, (code, text) = ehlo(server, "client.test", source="127.0.0.8")
    assert code == 250, text
    raw.close()
    assert dns_zone.servers[-1].asked("8.0.0.127.in-addr.arpa", "PTR") >= 1
    assert "reverse DNS of 127.0.0.8 failed" in server.log.read_text()


def test_reject_no_ptr_alone(helo):
    server = helo("reject_no_ptr = true")
    # A PTR that does not resolve back is enough for this switch.
    raw, (code, text) = ehlo(server, "liar.test", source="127.0.0.6")
    assert code == 250, text
    raw.close()
    raw, (code, text) = ehlo(server, "client.test", source="127.0.0.7")
    assert code == 550 and text.startswith(b"550 5.7.25 "), text
    raw.close()


def test_trusted_networks_skip_everything(helo, dns_zone):
    server = helo('check_fcrdns = true\ntrusted_networks = ["127.0.0.7/32"]')
    raw, (code, text) = ehlo(server, "mx.example.test", source="127.0.0.7")
    assert code == 250, text
    raw.close()
    assert dns_zone.servers[-1].asked("7.0.0.127.in-addr.arpa") == 0
    # trusted_networks replaces the default: 127.0.0.1 is now checked.
    raw, (code, text) = ehlo(server, "192.0.2.1", source="127.0.0.1")
    assert code == 501, text
    raw.close()


def plain(user, password):
    return base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())


def test_authenticated_clients_skip_the_checks(helo, tmp_path):
    server = helo("check_fcrdns = true")
    done = subprocess.run([BIN, "user", "add", USER[0], "--config", str(tmp_path / "sluice.toml"),
                           "--password-stdin"], input=USER[1] + "\n", capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    # At mail on the submission listener: refused without AUTH...
    raw, (code, text) = ehlo(server, "192.0.2.1", source="127.0.0.7", port=server.sub_port)
    assert code == 250, text
    code, text = raw.cmd(b"MAIL FROM:<alice@localhost>")
    assert code == 501, text
    raw.close()
    raw, (code, text) = ehlo(server, "client.test", source="127.0.0.7", port=server.sub_port)
    code, text = raw.cmd(b"MAIL FROM:<alice@localhost>")
    assert code == 550 and b"5.7.25" in text, text
    # ... accepted after it.
    code, text = raw.cmd(b"AUTH PLAIN " + plain(*USER))
    assert code == 235, text
    code, text = raw.cmd(b"MAIL FROM:<alice@localhost>")
    assert code == 250, text
    raw.close()


def test_bad_config_is_refused_at_start(tmp_path, dns_zone):
    dns_port = dns_zone(zone())
    cfg = tmp_path / "sluice.toml"
    cfg.write_text(suite_config(helo_config(free_port(), free_port(), tmp_path / "data", dns_port, "check_fcrdn = true")))
    result = subprocess.run([BIN, "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "unknown field `check_fcrdn`" in result.stderr + result.stdout

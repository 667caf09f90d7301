"""builtin:dnsbl end to end: the real server, block list zones served by the
local DNS server (dns_server.py), SMTP from 127.0.0.x client addresses.

Zones: bl.test (weight 1) lists 127.0.0.2 with a TXT reason, answers
127.255.255.254 (a refused query) for 127.0.0.4 and SERVFAIL for 127.0.0.6;
half.test and other-half.test (weight 0.5 each) list 127.0.0.3 (one of
them) and 127.0.0.7 (both); dbl.test (a domain zone) lists spam.example
and helo.spam.example."""
import pytest

from conftest import Raw, Server, free_port
from dns_server import SERVFAIL

REASON = "Listed in bl.test, see https://bl.test/lookup?ip=127.0.0.2"


def zone():
    return {
        "2.0.0.127.bl.test": {"A": ["127.0.0.2"], "TXT": [REASON]},
        "4.0.0.127.bl.test": {"A": ["127.255.255.254"], "TXT": ["query refused"]},
        "6.0.0.127.bl.test": SERVFAIL,
        "3.0.0.127.half.test": {"A": ["127.0.0.3"]},
        "7.0.0.127.half.test": {"A": ["127.0.0.3"]},
        "7.0.0.127.other-half.test": {"A": ["127.0.0.2"]},
        "spam.example.dbl.test": {"A": ["127.0.1.2"], "TXT": ["spam domain"]},
        "helo.spam.example.dbl.test": {"A": ["127.0.1.2"]},
        # An answer the zone's `answers` does not count.
        "other.example.dbl.test": {"A": ["127.0.1.255"]},
    }


ZONES = """zones = [
  { zone = "bl.test" },
  { zone = "half.test", weight = 0.5 },
  { zone = "other-half.test", weight = 0.5 },
  { zone = "dbl.test", type = "domain", answers = ["127.0.1.2"] },
]"""


def dnsbl_config(port, data, dns_port, extra="", plugin=""):
    return f"""
[server]
hostname = "mx.example.test"
data_dir = "{data}"

[domains]
local = ["localhost"]

[[listener]]
name = "mx"
address = "127.0.0.1:{port}"
pipeline = "inbound"

[pipeline.inbound]
connect = ["dnsbl"]
helo = ["dnsbl"]
mail = ["dnsbl"]
rcpt = ["dnsbl", "relay"]

[plugins.relay]
path = "builtin:relay"

[plugins.dnsbl]
path = "builtin:dnsbl"
timeout = "5s"
{plugin}

[plugins.dnsbl.config]
{ZONES}
{extra}

[dns]
nameservers = ["127.0.0.1:{dns_port}"]
timeout = "2s"
attempts = 1

[queue]
retry = ["1s"]
"""


@pytest.fixture
def dnsbl(tmp_path, dns_zone):
    servers = []

    def start(extra="", plugin=""):
        dns_port = dns_zone(zone())
        port = free_port()
        config = dnsbl_config(port, tmp_path / "data", dns_port, extra, plugin)
        server = Server(tmp_path, config)
        servers.append(server)
        return server.start(port)

    yield start
    for server in servers:
        server.stop()


def session(server, source, helo="client.test", sender="alice@client.test"):
    """Greeting, EHLO and MAIL from `source`; returns the open connection."""
    raw = Raw(server.port, source=source)
    assert raw.reply()[0] == 220
    assert raw.cmd(b"EHLO " + helo.encode())[0] == 250
    assert raw.cmd(b"MAIL FROM:<" + sender.encode() + b">")[0] == 250
    return raw


def rcpt(raw, to="bob@localhost"):
    return raw.cmd(b"RCPT TO:<" + to.encode() + b">")


def test_listed_client_is_refused_at_rcpt_with_the_txt_reason(dnsbl):
    server = dnsbl()
    raw = session(server, "127.0.0.2")
    code, text = rcpt(raw)
    assert code == 554, text
    assert text.startswith(b"554 5.7.1 "), text
    assert b"client host [127.0.0.2] blocked using bl.test" in text, text
    assert REASON.encode() in text, text
    # RFC 5321 4.5.1: postmaster stays reachable, with or without a domain.
    assert rcpt(raw, "postmaster@localhost")[0] == 250
    assert rcpt(raw, "Postmaster")[0] == 250
    # postmaster of a domain that is not ours is not exempt.
    assert rcpt(raw, "postmaster@elsewhere.test")[0] == 554
    raw.close()


def test_clean_client_is_accepted(dnsbl):
    server = dnsbl()
    raw = session(server, "127.0.0.5")
    assert rcpt(raw)[0] == 250
    raw.close()


def test_a_reused_instance_forgets_the_previous_sessions_lookups(dnsbl):
    # One kept instance (the bundled default policy is "reused"), so the
    # sessions below run one after another in the same guest.
    server = dnsbl(plugin="pool_size = 1")
    for source, helo, expected in [
        ("127.0.0.2", "client.test", 554),
        ("127.0.0.5", "client.test", 250),
        ("127.0.0.5", "helo.spam.example", 554),
        ("127.0.0.5", "client.test", 250),
        ("127.0.0.2", "client.test", 554),
    ]:
        raw = session(server, source, helo=helo)
        assert rcpt(raw)[0] == expected, (source, helo)
        assert raw.cmd(b"QUIT")[0] == 221
        raw.close()
    log = server.log.read_text()
    # The clean sessions made their own lookups, and were not refused for
    # an earlier client's listing.
    assert log.count("client host [127.0.0.2] listed by bl.test") == 2, log


def test_weights_below_and_at_the_threshold(dnsbl):
    server = dnsbl()
    # One half-weight zone: 0.5 < 1.0.
    raw = session(server, "127.0.0.3")
    assert rcpt(raw)[0] == 250
    raw.close()
    # Two half-weight zones: 1.0 reaches the threshold; both are named.
    raw = session(server, "127.0.0.7")
    code, text = rcpt(raw)
    assert code == 554, text
    assert b"blocked using half.test" in text and b"blocked using other-half.test" in text, text
    raw.close()


def test_threshold_is_configurable(dnsbl):
    server = dnsbl("threshold = 0.5")
    raw = session(server, "127.0.0.3")
    code, text = rcpt(raw)
    assert code == 554 and b"half.test" in text, text
    raw.close()


def test_allowed_networks_are_not_checked(dnsbl, dns_zone):
    server = dnsbl('allow = ["127.0.0.2/32"]')
    raw = session(server, "127.0.0.2")
    assert rcpt(raw)[0] == 250
    raw.close()
    assert dns_zone.servers[-1].asked("2.0.0.127.bl.test") == 0


def test_error_code_answer_is_not_a_listing(dnsbl):
    server = dnsbl()
    raw = session(server, "127.0.0.4")
    assert rcpt(raw)[0] == 250
    raw.close()
    assert "refused the query of 4.0.0.127.bl.test" in server.log.read_text()


def test_servfail_zone_does_not_reject(dnsbl, dns_zone):
    server = dnsbl()
    raw = session(server, "127.0.0.6")
    assert rcpt(raw)[0] == 250
    raw.close()
    assert dns_zone.servers[-1].asked("6.0.0.127.bl.test", "A") >= 1
    assert "6.0.0.127.bl.test failed" in server.log.read_text()


def test_domain_zone_lists_the_sender_domain_and_the_helo_name(dnsbl):
    server = dnsbl()
    raw = session(server, "127.0.0.5", sender="bob@spam.example")
    code, text = rcpt(raw)
    assert code == 554, text
    assert b"sender domain spam.example blocked using dbl.test; spam domain" in text, text
    # A new transaction with a clean sender is accepted.
    assert raw.cmd(b"RSET")[0] == 250
    assert raw.cmd(b"MAIL FROM:<alice@client.test>")[0] == 250
    assert rcpt(raw)[0] == 250
    raw.close()

    raw = session(server, "127.0.0.5", helo="helo.spam.example")
    code, text = rcpt(raw)
    assert code == 554 and b"HELO name helo.spam.example blocked using dbl.test" in text, text
    raw.close()

    # 127.0.1.255 is not among the zone's `answers`.
    raw = session(server, "127.0.0.5", sender="carol@other.example")
    assert rcpt(raw)[0] == 250
    raw.close()


def test_reject_at_connect(dnsbl):
    server = dnsbl('reject_at = "connect"')
    raw = Raw(server.port, source="127.0.0.2")
    code, text = raw.reply()
    assert code == 554, text
    assert b"5.7.1" in text and REASON.encode() in text, text
    raw.close()
    # A domain listing refuses at the command that revealed it.
    raw = Raw(server.port, source="127.0.0.5")
    assert raw.reply()[0] == 220
    code, text = raw.cmd(b"EHLO helo.spam.example")
    assert code == 554 and b"HELO name helo.spam.example" in text, text
    raw.close()
    raw = session(server, "127.0.0.5")
    code, text = raw.cmd(b"RSET")
    assert code == 250
    code, text = raw.cmd(b"MAIL FROM:<x@spam.example>")
    assert code == 554 and b"sender domain spam.example" in text, text
    raw.close()


def test_bad_config_is_refused_at_start(tmp_path, dns_zone):
    import subprocess

    from conftest import BIN, suite_config

    dns_port = dns_zone(zone())
    cfg = tmp_path / "sluice.toml"
    cfg.write_text(suite_config(dnsbl_config(free_port(), tmp_path / "data", dns_port, "threshold = 0")))
    result = subprocess.run([BIN, "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "dnsbl: threshold: 0 must be a finite number above 0" in result.stderr + result.stdout

"""The client's reverse name in the Received field: a PTR lookup at connect,
forward-confirmed (the name's A records must hold the client's address),
against the local DNS server (dns_server.py); `[server] reverse_lookup =
false` skips it.

Clients connect from 127.0.0.1. With `[dns] nameservers` set, the PTR of a
loopback address is asked of the configured server rather than answered
`localhost` by the resolver itself, so the zone names the client."""
import smtplib
import time

from conftest import Server, config, free_port

PTR = "1.0.0.127.in-addr.arpa"


def start(tmp_path, dns_port, server_extra=""):
    port = free_port()
    dns = f'[dns]\nnameservers = ["127.0.0.1:{dns_port}"]\ntimeout = "2s"\nattempts = 1\n'
    server = Server(tmp_path, config(port, tmp_path / "data", server_extra=server_extra, extra=dns))
    return server.start(port)


def received_from(server):
    """The `from` clause of the Received field sluice put on top of the
    message it delivered to bob@localhost."""
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as smtp:
        smtp.ehlo("helo.example.test")
        smtp.sendmail("alice@example.org", ["bob@localhost"],
                      b"From: alice@example.org\r\nSubject: who\r\n\r\nhello\r\n")
    deadline = time.time() + 15
    while not server.maildir("bob") and time.time() < deadline:
        time.sleep(0.1)
    [delivered] = server.maildir("bob")
    head = delivered.read_bytes().split(b"\r\n\r\n", 1)[0]
    received = head.split(b"\r\nReceived: ", 1)[1]
    return received.split(b"\r\n", 1)[0]


def test_confirmed_reverse_name_is_in_received(tmp_path, dns_zone):
    dns_port = dns_zone({
        PTR: {"PTR": ["Client.Example.Test."]},
        "client.example.test": {"A": ["127.0.0.1"]},
    })
    server = start(tmp_path, dns_port)
    try:
        line = received_from(server)
    finally:
        server.stop()
    assert line == b"from helo.example.test (client.example.test [127.0.0.1])", line
    assert dns_zone.servers[-1].asked(PTR, "PTR") >= 1


def test_unconfirmed_reverse_name_is_left_out(tmp_path, dns_zone):
    dns_port = dns_zone({
        PTR: {"PTR": ["client.example.test"]},
        "client.example.test": {"A": ["127.0.0.99"]},
    })
    server = start(tmp_path, dns_port)
    try:
        line = received_from(server)
    finally:
        server.stop()
    assert line == b"from helo.example.test ([127.0.0.1])", line
    # The name was looked up and then checked, not skipped.
    assert dns_zone.servers[-1].asked("client.example.test", "A") >= 1


def test_reverse_lookup_can_be_switched_off(tmp_path, dns_zone):
    dns_port = dns_zone({
        PTR: {"PTR": ["client.example.test"]},
        "client.example.test": {"A": ["127.0.0.1"]},
    })
    server = start(tmp_path, dns_port, server_extra="reverse_lookup = false")
    try:
        line = received_from(server)
    finally:
        server.stop()
    assert line == b"from helo.example.test ([127.0.0.1])", line
    assert dns_zone.servers[-1].asked(PTR) == 0

"""Outbound STARTTLS against a real Postfix MX: a route with tls = "required"
delivers only over a verified TLS session (the route's next_hop host is the
name checked in the certificate, against [delivery] ca_file), "opportunistic"
uses TLS when offered, and a required route to a peer without STARTTLS
defers and keeps the message queued rather than sending it in clear."""
import re
import smtplib

import pytest

from peers import wait_for

TLS_LINE = r"Anonymous TLS connection established from \S+: TLSv1\.3 with cipher"


def routes(mx, tls, ca_file=True):
    delivery = f'[delivery]\nca_file = "{mx.ca_file}"\n\n' if ca_file and mx.ca_file else ""
    return (f'{delivery}[[delivery.route]]\ndomain = "example.net"\n'
            f'next_hop = "127.0.0.1:{mx.port}"\ntls = "{tls}"\n')


def send(server, msg_id, rcpt="user@example.net"):
    body = (f"From: a@example.org\r\nTo: {rcpt}\r\nMessage-ID: <{msg_id}@example.org>\r\n"
            f"Subject: {msg_id}\r\n\r\nover TLS\r\n")
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as smtp:
        assert smtp.sendmail("a@example.org", [rcpt], body) == {}


def assert_arrived_over_tls(mx, msg_id):
    messages = mx.sink.wait(1, timeout=60)
    assert len(messages) == 1, f"not delivered to Postfix's sink; Postfix log:\n{mx.log()}"
    content = messages[0].original_content
    assert f"Message-ID: <{msg_id}@example.org>".encode() in content
    assert messages[0].rcpt_tos == ["user@example.net"]
    # Postfix's Received header for this very message names the TLS session
    assert b"(using TLSv1.3 with cipher" in content, \
        f"delivered, but not over TLS (Postfix's Received header names no TLS session):\n{content[:400]!r}"
    assert mx.wait_log(TLS_LINE), f"no TLS session in Postfix's log:\n{mx.log()}"


def test_required_tls_route_delivers_over_verified_starttls(sluice, postfix_mx):
    mx = postfix_mx()
    server = sluice(extra=routes(mx, "required"))
    send(server, "required-tls")
    assert_arrived_over_tls(mx, "required-tls")


@pytest.mark.parametrize("ca_file", [True, False], ids=["trusted-ca", "unverifiable-cert"])
def test_opportunistic_route_uses_starttls_when_offered(sluice, postfix_mx, ca_file):
    # opportunistic TLS encrypts even when the certificate cannot be verified
    # (RFC 7435): the usual case of an MX with a self-signed certificate
    mx = postfix_mx()
    server = sluice(extra=routes(mx, "opportunistic", ca_file=ca_file))
    send(server, "opportunistic-tls")
    assert_arrived_over_tls(mx, "opportunistic-tls")


def test_required_tls_route_defers_when_starttls_is_not_offered(sluice, postfix_mx):
    plain = postfix_mx(starttls=False)
    # a TLS-capable Postfix for the same port, started later: its CA goes
    # into the config now
    tls_later = postfix_mx(port=plain.port, run=False)
    server = sluice(extra=routes(tls_later, "required"))
    send(server, "never-in-clear")
    # two delivery attempts (retry is 1s): sluice connects, sees no STARTTLS
    # in the EHLO reply and leaves without sending the message
    attempt = r"disconnect from \S+ ehlo=.*"
    wait_for(lambda: len(re.findall(attempt, plain.log())) >= 2 or plain.sink.messages, timeout=60)
    assert plain.sink.messages == [], "delivered in clear on a tls = \"required\" route"
    attempts = re.findall(attempt, plain.log())
    assert not [line for line in attempts if "mail=" in line], attempts
    assert len(attempts) >= 2, f"sluice did not try the next hop twice; Postfix log:\n{plain.log()}"
    assert plain.queue_files() == 0
    # the message is still queued in sluice: once the next hop offers
    # STARTTLS it is delivered, over TLS
    plain.stop()
    tls_later.start()
    assert_arrived_over_tls(tls_later, "never-in-clear")
    assert plain.sink.messages == []

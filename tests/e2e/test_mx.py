"""MX routing and delivery status notifications, against a local DNS server
and SMTP sinks on 127.0.0.x addresses (all on one port, as MX hosts all
listen on port 25)."""
import email
import email.policy
import smtplib
import time

import pytest
from conftest import Refuser, Server, Sink, config, free_port
from dns_server import SERVFAIL

ZONE = {
    # Two MX hosts; the less preferred one is reached through a CNAME.
    "example.net": {"MX": [(10, "mx1.example.net"), (20, "mx2.example.net")]},
    "mx1.example.net": {"A": ["127.0.0.10"]},
    "mx2.example.net": {"CNAME": "relay.example.net"},
    "relay.example.net": {"A": ["127.0.0.11"]},
    # No MX: the domain's own address is the mail host.
    "implicit.test": {"A": ["127.0.0.12"]},
    # RFC 7505 null MX.
    "nullmx.test": {"MX": [(0, ".")], "A": ["127.0.0.13"]},
}

MESSAGE = b"From: alice@localhost\r\nTo: bob@example.net\r\nSubject: routed\r\nMessage-ID: <routed@localhost>\r\n\r\nhello\r\n"


def start(sluice_factory, tmp_path, zone, smtp_port, queue_extra="", servfail=()):
    records = dict(ZONE)
    records.update({name: SERVFAIL for name in servfail})
    dns_port = zone(records)
    port = free_port()
    text = config(
        port,
        tmp_path / "data",
        extra=f"{queue_extra}\n[dns]\nnameservers = [\"127.0.0.1:{dns_port}\"]\ntimeout = \"2s\"\n"
        # The MX hosts are on loopback, which MX delivery skips by default.
        f"[delivery]\nsmtp_port = {smtp_port}\nignore_target_hosts = []\n",
    )
    server = Server(tmp_path, text)
    sluice_factory.append(server)
    return server.start(port)


def send(server, to, sender="alice@localhost", message=MESSAGE):
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.sendmail(sender, to, message)


def wait_for(predicate, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    return predicate()


def dsns(server, count=1, timeout=30):
    files = wait_for(lambda: len(server.maildir("alice")) >= count and server.maildir("alice"), timeout)
    assert files, f"no DSN arrived; log:\n{server.log.read_text()[-3000:]}"
    return [email.message_from_bytes(f.read_bytes(), policy=email.policy.compat32) for f in files]


def delivery_status(dsn):
    """The per-recipient field groups of the message/delivery-status part."""
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    parts = dsn.get_payload()
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    groups = parts[1].get_payload()
    per_message, per_recipient = groups[0], groups[1:]
    assert per_message["Reporting-MTA"] == "dns; mx.example.test"
    return per_recipient, parts[2].get_payload()


@pytest.fixture
def servers():
    started = []
    yield started
    for s in started:
        s.stop()


def test_preferred_mx_gets_the_mail(servers, tmp_path, dns_zone):
    port = free_port()
    mx1 = Sink(port, host="127.0.0.10").start()
    mx2 = Sink(port, host="127.0.0.11").start()
    try:
        server = start(servers, tmp_path, dns_zone, port)
        for _ in range(3):
            send(server, ["bob@example.net"])
        assert len(mx1.wait(3)) == 3
        assert mx2.messages == []
        assert mx1.messages[0].rcpt_tos == ["bob@example.net"]
    finally:
        mx1.stop()
        mx2.stop()


def test_next_mx_when_the_preferred_one_is_down(servers, tmp_path, dns_zone):
    port = free_port()
    mx2 = Sink(port, host="127.0.0.11").start()
    try:
        server = start(servers, tmp_path, dns_zone, port)
        send(server, ["bob@example.net"])
        assert len(mx2.wait(1)) == 1
    finally:
        mx2.stop()


def test_next_mx_when_the_preferred_one_answers_421(servers, tmp_path, dns_zone):
    port = free_port()
    busy = Refuser("127.0.0.10", port).start()
    mx2 = Sink(port, host="127.0.0.11").start()
    try:
        server = start(servers, tmp_path, dns_zone, port)
        send(server, ["bob@example.net"])
        assert len(mx2.wait(1)) == 1
        assert busy.connections >= 1
    finally:
        busy.stop()
        mx2.stop()


def test_no_mx_falls_back_to_the_address_record(servers, tmp_path, dns_zone):
    port = free_port()
    host = Sink(port, host="127.0.0.12").start()
    try:
        server = start(servers, tmp_path, dns_zone, port)
        send(server, ["carol@implicit.test"])
        assert host.wait(1)[0].rcpt_tos == ["carol@implicit.test"]
    finally:
        host.stop()


def test_null_mx_bounces_with_a_dsn(servers, tmp_path, dns_zone):
    port = free_port()
    decoy = Sink(port, host="127.0.0.13").start()
    try:
        server = start(servers, tmp_path, dns_zone, port)
        send(server, ["dave@nullmx.test"])
        [dsn] = dsns(server)
        assert dsn["From"].startswith("Mail Delivery System <MAILER-DAEMON@")
        [rcpt], headers = delivery_status(dsn)
        assert rcpt["Final-Recipient"] == "rfc822; dave@nullmx.test"
        assert rcpt["Action"] == "failed"
        assert rcpt["Status"] == "5.1.10"
        assert "Message-ID: <routed@localhost>" in headers
        assert "hello" not in headers
        # The null MX is final: the domain's A record is never tried.
        assert decoy.messages == []
    finally:
        decoy.stop()


def test_unknown_domain_bounces_and_servfail_defers(servers, tmp_path, dns_zone):
    port = free_port()
    server = start(servers, tmp_path, dns_zone, port, servfail=["broken.test"])
    send(server, ["erin@no-such-domain.test", "frank@broken.test"])
    [dsn] = dsns(server)
    rcpts, _ = delivery_status(dsn)
    # Only the NXDOMAIN recipient is reported: SERVFAIL is temporary.
    assert [r["Final-Recipient"] for r in rcpts] == ["rfc822; erin@no-such-domain.test"]
    assert rcpts[0]["Status"] == "5.1.2"
    time.sleep(2)
    assert len(server.maildir("alice")) == 1
    assert "4.4.3" in server.log.read_text()


def test_mx_pointing_back_at_this_server_is_a_loop(servers, tmp_path, dns_zone):
    dns_port = dns_zone({"loop.test": {"MX": [(10, "self.loop.test")]}, "self.loop.test": {"A": ["127.0.0.1"]}})
    port = free_port()
    # Its own listener is where MX delivery would go: a loop.
    text = config(
        port,
        tmp_path / "data",
        extra=f"[dns]\nnameservers = [\"127.0.0.1:{dns_port}\"]\n[delivery]\nsmtp_port = {port}\nignore_target_hosts = []\n",
    )
    server = Server(tmp_path, text)
    servers.append(server)
    server.start(port)
    send(server, ["gina@loop.test"])
    [dsn] = dsns(server)
    [rcpt], _ = delivery_status(dsn)
    assert rcpt["Status"] == "5.4.6"


def test_mixed_replies_bounce_one_recipient_and_retry_the_other(servers, tmp_path, dns_zone):
    port = free_port()
    mx1 = Sink(
        port,
        host="127.0.0.10",
        rcpt_replies={
            "temp@example.net": "451 4.2.1 mailbox busy",
            "gone@example.net": "550 5.1.1 no such user",
        },
    ).start()
    try:
        server = start(servers, tmp_path, dns_zone, port)
        send(server, ["temp@example.net", "gone@example.net", "ok@example.net"])
        first = mx1.wait(1)
        assert first[0].rcpt_tos == ["ok@example.net"]
        [dsn] = dsns(server)
        [rcpt], _ = delivery_status(dsn)
        assert rcpt["Final-Recipient"] == "rfc822; gone@example.net"
        assert rcpt["Status"] == "5.1.1"
        assert rcpt["Remote-MTA"] == "dns; mx1.example.net"
        assert "550 5.1.1 no such user" in rcpt["Diagnostic-Code"]
        # The mailbox recovers; the retry schedule (1s) brings the rest.
        assert wait_for(lambda: mx1.rcpt_seen.count("temp@example.net") >= 2)
        mx1.rcpt_replies.clear()
        assert len(mx1.wait(2)) == 2
        assert mx1.messages[1].rcpt_tos == ["temp@example.net"]
        # Exactly one DSN: the deferred recipient never produced one.
        assert len(server.maildir("alice")) == 1
    finally:
        mx1.stop()


def test_delay_warning_is_sent_once(servers, tmp_path, dns_zone):
    port = free_port()
    mx1 = Sink(port, host="127.0.0.10", rcpt_replies={"slow@example.net": "452 4.2.2 over quota"}).start()
    try:
        server = start(servers, tmp_path, dns_zone, port, queue_extra='warn_after = "1s"')
        send(server, ["slow@example.net"])
        [dsn] = dsns(server)
        [rcpt], _ = delivery_status(dsn)
        assert rcpt["Action"] == "delayed"
        assert rcpt["Status"] == "4.2.2"
        assert rcpt["Will-Retry-Until"]
        assert dsn["Subject"].startswith("Delayed Mail")
        # More retries, still one warning.
        attempts = len(mx1.rcpt_seen)
        assert wait_for(lambda: len(mx1.rcpt_seen) >= attempts + 2)
        assert len(server.maildir("alice")) == 1
    finally:
        mx1.stop()


def test_no_dsn_for_the_null_reverse_path(servers, tmp_path, dns_zone):
    port = free_port()
    mx1 = Sink(port, host="127.0.0.10", rcpt_replies={"gone@example.net": "550 5.1.1 no such user"}).start()
    try:
        server = start(servers, tmp_path, dns_zone, port)
        send(server, ["gone@example.net"], sender="")
        assert wait_for(lambda: "gone@example.net" in mx1.rcpt_seen)
        send(server, ["gone@example.net"], sender="alice@localhost")
        # The second message's DSN arrives; the first (from <>) made none.
        [dsn] = dsns(server)
        time.sleep(1)
        assert len(server.maildir("alice")) == 1
        assert server.log.read_text().count("delivery status notification queued") == 1
    finally:
        mx1.stop()

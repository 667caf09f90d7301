"""No backscatter by default. config/production.toml verifies recipients at
RCPT, so mail for an unknown user of ours is refused in the session (550
5.1.1) instead of bounced later. Maildir delivery gives mail only to local
parts that have a mailbox (its directory exists, or postmaster): any other
name bounces and no directory is created, unless `[delivery.maildir]
catch_all` names the mailbox that takes it."""
import smtplib
import time

from conftest import Server, config, free_port
from test_open_relay_nmap import shipped_config


def wait_for(predicate, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_production_config_refuses_an_unknown_local_user_at_rcpt(tmp_path, dns_zone):
    port = free_port()
    # shipped_config gives the recipients file alice@example.org (and the
    # sales alias) and loopback listeners; DNS knows nothing.
    text = shipped_config("production.toml", port, tmp_path / "data", dns_zone({}))
    server = Server(tmp_path, text).start(port)
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp.ehlo("client.example.net")
            assert smtp.mail("someone@example.net")[0] == 250
            code, reply = smtp.rcpt("nobody@example.org")
            assert (code, reply[:5]) == (550, b"5.1.1"), reply
            assert smtp.rcpt("alice@example.org")[0] == 250
            assert smtp.rcpt("Postmaster@example.org")[0] == 250
    finally:
        server.stop()


def maildir_config(port, data, maildir):
    # The suite's configs create mailboxes on demand; these name their own
    # [delivery.maildir], so they get sluice's default or the catch-all.
    return config(port, data).replace("[delivery.maildir]\ncreate_mailboxes = true\n", "") + maildir


def test_maildir_bounces_a_local_part_without_mailbox_and_creates_nothing(tmp_path):
    port, data = free_port(), tmp_path / "data"
    text = maildir_config(port, data, "\n[delivery.maildir]\n")
    assert "create_mailboxes" not in text
    # The sender's mailbox exists, so the bounce has somewhere to go.
    (data / "mail" / "example.org" / "sender").mkdir(parents=True)
    server = Server(tmp_path, text).start(port)
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp.sendmail("sender@example.org", ["nobody@localhost"], b"Subject: lost\r\n\r\nbody\r\n")
        assert wait_for(lambda: server.maildir("sender", "example.org")), server.log.read_text()
        bounce = server.maildir("sender", "example.org")[0].read_bytes()
        assert b"nobody@localhost" in bounce and b"5.1.1" in bounce, bounce[:2000]
        assert not (data / "mail" / "localhost" / "nobody").exists()
        assert server.maildir("nobody") == []
    finally:
        server.stop()


def test_maildir_catch_all_takes_mail_for_local_parts_without_mailbox(tmp_path):
    port, data = free_port(), tmp_path / "data"
    text = maildir_config(port, data, '\n[delivery.maildir]\ncatch_all = "everything"\n')
    (data / "mail" / "localhost" / "alice").mkdir(parents=True)
    server = Server(tmp_path, text).start(port)
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp.sendmail("sender@example.org", ["nobody@localhost"], b"Subject: caught\r\n\r\nbody\r\n")
            smtp.sendmail("sender@example.org", ["alice@localhost"], b"Subject: own\r\n\r\nbody\r\n")
        assert wait_for(lambda: server.maildir("everything") and server.maildir("alice")), server.log.read_text()
        assert b"Subject: caught" in server.maildir("everything")[0].read_bytes()
        assert b"Subject: own" in server.maildir("alice")[0].read_bytes()
        assert not (data / "mail" / "localhost" / "nobody").exists()
    finally:
        server.stop()

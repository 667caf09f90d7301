"""Local delivery by LMTP to a real Dovecot ([delivery] local = { lmtp = ...}),
over TCP and over a unix socket: each local recipient lands in its Dovecot
mailbox (not in sluice's own Maildir), and Dovecot's per-recipient answers
count: an unknown user fails with Dovecot's 550 while the known one in the
same message is delivered."""
import email
import smtplib

import pytest

from conftest import Sink, free_port
from peers import wait_for


def lmtp_config(dovecot, transport, sink_port=None):
    target = f"127.0.0.1:{dovecot.port}" if transport == "tcp" else f"unix:{dovecot.socket_path}"
    text = f'[delivery]\nlocal = {{ lmtp = "{target}" }}\n'
    if sink_port:
        # the senders' domain, where DSNs go
        text += f'\n[[delivery.route]]\ndomain = "example.test"\nnext_hop = "127.0.0.1:{sink_port}"\n'
    return text


def wait_mailbox(dovecot, server, user, count=1):
    """Waits for user's Dovecot mailbox to hold count messages, or for the
    message to show up in sluice's own Maildir instead (a quick failure)."""
    local, domain = user.split("@")
    wait_for(lambda: len(dovecot.messages(user)) >= count or server.maildir(local, domain), timeout=60)
    assert server.maildir(local, domain) == [], f"{user}'s mail went to sluice's Maildir, not to Dovecot"
    messages = dovecot.messages(user)
    assert len(messages) == count, f"{user} has {len(messages)} messages; Dovecot log:\n{dovecot.log()}"
    return messages


def send(server, rcpts, msg_id, sender="sender@example.test"):
    body = (f"From: {sender}\r\nTo: {', '.join(rcpts)}\r\nMessage-ID: <{msg_id}@example.test>\r\n"
            f"Subject: {msg_id}\r\n\r\nfor the mailbox server\r\n")
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as smtp:
        assert smtp.sendmail(sender, rcpts, body) == {}


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_message_to_two_users_lands_in_both_dovecot_mailboxes(sluice, dovecot_lmtp, transport):
    dovecot = dovecot_lmtp()
    server = sluice(extra=lmtp_config(dovecot, transport))
    send(server, ["alice@example.org", "bob@example.org"], f"two-users-{transport}")
    for user in ("alice@example.org", "bob@example.org"):
        messages = wait_mailbox(dovecot, server, user)
        assert f"Message-ID: <two-users-{transport}@example.test>".encode() in messages[0]
        assert messages[0].endswith(b"\r\n\r\nfor the mailbox server\r\n") or \
            messages[0].endswith(b"\n\nfor the mailbox server\n")
        # Dovecot itself reads it back
        assert f"<two-users-{transport}@example.test>".encode() in dovecot.fetch(user)


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_unknown_user_fails_known_user_delivered(sluice, dovecot_lmtp, transport):
    dovecot = dovecot_lmtp()
    server = sluice(extra=lmtp_config(dovecot, transport))
    send(server, ["alice@example.org", "nobody@example.org"], f"known-unknown-{transport}")
    messages = wait_mailbox(dovecot, server, "alice@example.org")
    assert f"<known-unknown-{transport}@example.test>".encode() in messages[0]
    assert dovecot.messages("nobody@example.org") == []
    assert server.maildir("nobody", "example.org") == []


def test_unknown_user_gets_a_dsn_with_dovecots_550(sluice, dovecot_lmtp):
    # the failure is final (5xx from Dovecot), so the sender hears of it
    dovecot = dovecot_lmtp()
    sink_port = free_port()
    sink = Sink(sink_port).start()
    try:
        server = sluice(extra=lmtp_config(dovecot, "tcp", sink_port))
        send(server, ["alice@example.org", "nobody@example.org"], "dsn")
        wait_mailbox(dovecot, server, "alice@example.org")
        bounces = sink.wait(1, timeout=60)
        assert len(bounces) == 1, "no DSN for the recipient Dovecot refused"
        # aiosmtpd keeps the null reverse-path as "<>"
        assert bounces[0].mail_from in ("", "<>") and bounces[0].rcpt_tos == ["sender@example.test"]
        report = email.message_from_bytes(bounces[0].original_content)
        assert report.get_content_type() == "multipart/report"
        status = [p for p in report.walk() if p.get_content_type() == "message/delivery-status"]
        assert len(status) == 1
        # per-message fields first, then one block per recipient: only the refused one
        per_recipient = status[0].get_payload()[1:]
        assert len(per_recipient) == 1, [str(b) for b in per_recipient]
        block = per_recipient[0]
        assert block["Final-Recipient"].lower().endswith("nobody@example.org")
        assert block["Action"].strip() == "failed"
        assert block["Status"].strip().startswith("5.1.1")
        assert "550" in block["Diagnostic-Code"]
    finally:
        sink.stop()

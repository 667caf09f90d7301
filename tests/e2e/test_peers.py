"""The real-peer fixtures work on their own, before any test trusts them with
sluice: Postfix takes mail over verified STARTTLS and relays it to its sink,
Dovecot takes LMTP (TCP and unix socket) per recipient, smtp-source reaches
smtp-sink and the sink's dump can be counted."""
import smtplib
import ssl

BODY = "From: a@example.org\r\nTo: b@example.net\r\nMessage-ID: <{id}@example.org>\r\nSubject: {id}\r\n\r\nhello\r\n"


def test_postfix_mx_takes_mail_over_starttls_and_relays_to_its_sink(postfix_mx):
    mx = postfix_mx()
    context = ssl.create_default_context(cafile=str(mx.ca_file))
    with smtplib.SMTP(mx.address, mx.port, timeout=30) as smtp:
        smtp.ehlo("client.example.org")
        assert smtp.has_extn("starttls")
        smtp.starttls(context=context)
        smtp.ehlo("client.example.org")
        assert smtp.sendmail("a@example.org", ["b@example.net"], BODY.format(id="tls-self-check")) == {}
    messages = mx.sink.wait(1)
    assert len(messages) == 1
    assert messages[0].rcpt_tos == ["b@example.net"]
    assert b"Message-ID: <tls-self-check@example.org>" in messages[0].original_content
    assert b"(using TLSv1.3 with cipher" in messages[0].original_content
    lines = mx.wait_log(r"Anonymous TLS connection established from \S+: TLSv1\.3 with cipher")
    assert lines, mx.log()


def test_postfix_mx_without_starttls_does_not_offer_it(postfix_mx):
    mx = postfix_mx(starttls=False)
    with smtplib.SMTP(mx.address, mx.port, timeout=30) as smtp:
        smtp.ehlo("client.example.org")
        assert not smtp.has_extn("starttls")
        assert smtp.sendmail("a@example.org", ["b@example.net"], BODY.format(id="clear")) == {}
    assert len(mx.sink.wait(1)) == 1
    assert "TLS connection established" not in mx.log()


def _lmtp_deliver(client, rcpts, msg_id):
    client.ehlo("mx.example.test")  # smtplib.LMTP sends LHLO
    code, _ = client.mail("sender@example.test")
    assert code == 250
    accepted = {}
    for rcpt in rcpts:
        accepted[rcpt] = client.rcpt(rcpt)
    good = [r for r, (code, _) in accepted.items() if code == 250]
    if good:
        client.putcmd("data")
        code, _ = client.getreply()
        assert code == 354
        client.send(BODY.format(id=msg_id).encode() + b".\r\n")
        # LMTP: one reply per accepted recipient after the final dot
        replies = [client.getreply() for _ in good]
        assert [code for code, _ in replies] == [250] * len(good), replies
    return accepted


def test_dovecot_lmtp_over_tcp_delivers_per_recipient(dovecot_lmtp):
    dovecot = dovecot_lmtp()
    with smtplib.LMTP("127.0.0.1", dovecot.port, timeout=30) as lmtp:
        accepted = _lmtp_deliver(lmtp, ["alice@example.org", "Bob@Example.org", "nobody@example.org"], "lmtp-tcp")
    assert accepted["alice@example.org"][0] == 250
    assert accepted["Bob@Example.org"][0] == 250
    assert accepted["nobody@example.org"][0] == 550, accepted
    for user in ("alice@example.org", "bob@example.org"):
        messages = dovecot.wait_messages(user)
        assert len(messages) == 1
        assert b"Message-ID: <lmtp-tcp@example.org>" in messages[0]
    assert b"Message-ID: <lmtp-tcp@example.org>" in dovecot.fetch("alice@example.org")
    assert dovecot.messages("nobody@example.org") == []


def test_dovecot_lmtp_over_unix_socket(dovecot_lmtp):
    dovecot = dovecot_lmtp()
    with smtplib.LMTP(str(dovecot.socket_path), timeout=30) as lmtp:
        accepted = _lmtp_deliver(lmtp, ["bob@example.org"], "lmtp-unix")
    assert accepted["bob@example.org"][0] == 250
    messages = dovecot.wait_messages("bob@example.org")
    assert len(messages) == 1 and b"<lmtp-unix@example.org>" in messages[0]


def test_smtp_source_into_smtp_sink(smtp_sink_proc):
    from peers import smtp_source

    sink = smtp_sink_proc()
    result = smtp_source(sink.port, messages=50, sessions=5, size=2048)
    assert result.returncode == 0, result.stderr
    from peers import wait_for
    assert wait_for(lambda: sink.count() >= 50, 30)
    assert sink.count() == 50

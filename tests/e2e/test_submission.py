"""Message submission (RFC 6409) and outbound DKIM signing with real
clients: smtplib over STARTTLS with AUTH on an `auth = "required"`
listener relaying to a sink; sender ownership at MAIL and at DATA; Date
and Message-ID added on submission listeners only; signatures made with a
key from `sluice dkim keygen`, verified by dkimpy against the local DNS
server publishing the record that command printed."""
import email
import os
import re
import signal
import smtplib
import stat
import subprocess
import time

import dkim
import dns.resolver
import pytest

from conftest import BIN, Raw, Sink, config, free_port
from tlsenv import TlsEnv, client_context, require_tool

ALICE = ("alice@example.org", "plum-orbit-window-47")
BOB = ("bob@example.org", "cedar-lamp-river-93")


@pytest.fixture
def sink():
    s = Sink(free_port()).start()
    yield s
    s.stop()


@pytest.fixture
def env(tmp_path):
    envs = []

    def start(**kw):
        e = TlsEnv(tmp_path, submission_auth="required", **kw)
        envs.append(e)
        e.add_user(*ALICE)
        e.add_user(*BOB)
        return e

    yield start
    for e in envs:
        e.stop()


def keygen(directory, domain, selector, algorithm):
    directory.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([BIN, "dkim", "keygen", domain, selector, "--algorithm", algorithm, "--out", str(directory)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    key = directory / f"{domain}.{selector}.pem"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    record = done.stdout.strip()
    name, txt = record.split(" IN TXT ", 1)
    assert name == f"{selector}._domainkey.{domain}."
    strings = re.findall(r'"([^"]*)"', txt)
    assert all(len(s) <= 255 for s in strings), record
    return key, "".join(strings)


def dkim_config(*entries):
    return "".join(
        f'[[dkim.sign]]\ndomain = "{d}"\nselector = "{s}"\nkey = "{k}"\nalgorithm = "{a}"\n'
        for d, s, k, a in entries
    )


def submit(e, user, mail_from, message, rcpt="friend@example.test"):
    with smtplib.SMTP("127.0.0.1", e.submission, timeout=30) as client:
        client.ehlo("client.test")
        client.starttls(context=client_context())
        client.ehlo("client.test")
        client.login(*user)
        client.sendmail(mail_from, [rcpt], message)


def headers_of(content: bytes):
    return email.message_from_bytes(content)


def dns_lookup(port):
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = port

    def lookup(name, timeout=5):
        answer = resolver.resolve(name.decode().rstrip("."), "TXT", lifetime=timeout)
        return b"".join(b"".join(r.strings) for r in answer)

    return lookup


@pytest.mark.parametrize("algorithm,name", [("rsa", "rsa-sha256"), ("ed25519", "ed25519-sha256")])
def test_submitted_mail_is_dkim_signed_and_verifies(tmp_path, env, sink, dns_zone, algorithm, name):
    key, txt = keygen(tmp_path / "keys", "example.org", "s1", algorithm)
    dns_port = dns_zone({"s1._domainkey.example.org": {"TXT": [txt]}})
    e = env(sink_port=sink.port, extra=dkim_config(("example.org", "s1", key, name)))
    submit(e, ALICE, ALICE[0],
           b"From: Alice <alice@example.org>\r\nTo: friend@example.test\r\nSubject: signed\r\n\r\n"
           b"Hello,\r\n.dot-stuffed line\r\n\r\n\r\n")
    [message] = sink.wait(1)
    content = message.content
    assert content.count(b"DKIM-Signature:") == 1, content
    assert f"a={name};".encode() in content
    assert b"c=relaxed/relaxed" in content
    # The hop's own Received field is above the signature, unsigned.
    assert content.index(b"Received:") < content.index(b"DKIM-Signature:")
    assert dkim.verify(content, dnsfunc=dns_lookup(dns_port)), content
    # Changing a signed header breaks it: the check is not vacuous.
    tampered = content.replace(b"Subject: signed", b"Subject: signeD")
    assert not dkim.verify(tampered, dnsfunc=dns_lookup(dns_port))


def test_other_domains_and_unauthenticated_mail_are_not_signed(tmp_path, env, sink):
    key, _ = keygen(tmp_path / "keys", "example.org", "s1", "ed25519")
    e = env(sink_port=sink.port, extra=dkim_config(("example.org", "s1", key, "ed25519-sha256")),
            trusted='["127.0.0.1/32"]')
    # Relayed for a trusted network without AUTH on the port-25 listener:
    # [dkim] trusted_networks is empty, so no signature.
    raw = Raw(e.mx)
    assert raw.reply()[0] == 220
    for line in (b"EHLO client.test", b"MAIL FROM:<alice@example.org>", b"RCPT TO:<friend@example.test>"):
        assert raw.cmd(line)[0] == 250, line
    assert raw.cmd(b"DATA")[0] == 354
    assert raw.cmd(b"From: alice@example.org\r\nSubject: unsigned\r\n\r\nx\r\n.")[0] == 250
    raw.close()
    [message] = sink.wait(1)
    assert b"DKIM-Signature" not in message.content


def test_date_and_message_id_are_added_on_submission(env, sink):
    e = env(sink_port=sink.port)
    submit(e, ALICE, ALICE[0], b"From: alice@example.org\r\nSubject: bare\r\n\r\nhello\r\n")
    [message] = sink.wait(1)
    parsed = headers_of(message.content)
    assert parsed["Date"], message.content
    assert email.utils.parsedate_to_datetime(parsed["Date"]) is not None
    assert re.fullmatch(r"<\d+\.[0-9a-f]{32}@mx\.example\.test>", parsed["Message-ID"]), parsed["Message-ID"]


def test_existing_date_and_message_id_are_kept(env, sink):
    e = env(sink_port=sink.port)
    submit(e, ALICE, ALICE[0],
           b"From: alice@example.org\r\nDate: Mon, 2 Nov 2026 10:00:00 +0000\r\n"
           b"Message-ID: <mine@client.test>\r\nSubject: full\r\n\r\nhello\r\n")
    [message] = sink.wait(1)
    assert message.content.count(b"Date:") == 1
    assert message.content.count(b"Message-ID:") == 1
    assert b"Message-ID: <mine@client.test>" in message.content


def test_port_25_listener_adds_no_date_or_message_id(env, sink):
    e = env(sink_port=sink.port, trusted='["127.0.0.1/32"]')
    raw = Raw(e.mx)
    assert raw.reply()[0] == 220
    for line in (b"EHLO client.test", b"MAIL FROM:<someone@elsewhere.test>", b"RCPT TO:<friend@example.test>"):
        assert raw.cmd(line)[0] == 250, line
    assert raw.cmd(b"DATA")[0] == 354
    assert raw.cmd(b"From: someone@elsewhere.test\r\nSubject: relayed\r\n\r\nx\r\n.")[0] == 250
    raw.close()
    [message] = sink.wait(1)
    assert b"\r\nDate:" not in message.content
    assert b"Message-ID:" not in message.content


def test_sending_as_someone_else_is_refused_at_mail(env, sink):
    e = env(sink_port=sink.port)
    with smtplib.SMTP("127.0.0.1", e.submission, timeout=30) as client:
        client.ehlo("client.test")
        client.starttls(context=client_context())
        client.ehlo("client.test")
        client.login(*ALICE)
        code, text = client.mail(BOB[0])
        assert (code, text[:5]) == (553, b"5.7.1"), text
        # The null reverse-path stays allowed (MDNs), and the session goes on.
        assert client.mail("")[0] == 250
        client.rset()
        assert client.mail("ALICE@Example.ORG")[0] == 250
    assert sink.messages == []


def test_foreign_from_header_is_refused_at_data(env, sink):
    e = env(sink_port=sink.port)
    with pytest.raises(smtplib.SMTPDataError) as refused:
        submit(e, ALICE, ALICE[0], b"From: Bob <bob@example.org>\r\nSubject: forged\r\n\r\nx\r\n")
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error.startswith(b"5.7.1"), refused.value.smtp_error
    # A second From address that is not hers is refused too.
    with pytest.raises(smtplib.SMTPDataError) as refused:
        submit(e, ALICE, ALICE[0], b"From: alice@example.org, bob@example.org\r\n\r\nx\r\n")
    assert refused.value.smtp_code == 550
    with pytest.raises(smtplib.SMTPDataError) as refused:
        submit(e, ALICE, ALICE[0], b"Subject: no from\r\n\r\nx\r\n")
    assert refused.value.smtp_code == 550
    time.sleep(0.5)
    assert sink.messages == []


def test_senders_map_grants_addresses_and_domains(env, sink):
    e = env(sink_port=sink.port, extra="""
[submission]
senders = { "alice@example.org" = ["@example.org", "alice@other.test"] }
""")
    submit(e, ALICE, BOB[0], b"From: bob@example.org\r\nSubject: for bob\r\n\r\nx\r\n")
    submit(e, ALICE, "alice@other.test", b"From: alice@other.test\r\n\r\nx\r\n")
    sink.wait(2)
    # Bob has no entry: only his own address.
    with smtplib.SMTP("127.0.0.1", e.submission, timeout=30) as client:
        client.ehlo("client.test")
        client.starttls(context=client_context())
        client.ehlo("client.test")
        client.login(*BOB)
        assert client.mail(ALICE[0])[0] == 553
        assert client.mail(BOB[0])[0] == 250


def test_submission_config_errors_name_the_key(tmp_path):
    path = tmp_path / "bad.toml"
    text = config(free_port(), tmp_path / "data", extra=f"""
[submission]
senders = {{ "alice@example.org" = ["not an address"] }}

[[dkim.sign]]
domain = "example.org"
selector = "s1"
key = "{tmp_path / 'missing.pem'}"
""")
    path.write_text(text)
    line = text.splitlines().index("[submission]") + 2
    done = subprocess.run([BIN, "check-config", str(path)], capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert "submission.senders" in done.stderr and f":{line}:" in done.stderr, done.stderr
    assert "dkim.sign" in done.stderr and "missing.pem" in done.stderr, done.stderr


def test_trusted_network_mail_is_signed_without_auth(tmp_path, env, sink, dns_zone):
    key, txt = keygen(tmp_path / "keys", "example.org", "s2", "ed25519")
    dns_port = dns_zone({"s2._domainkey.example.org": {"TXT": [txt]}})
    extra = '[dkim]\ntrusted_networks = ["127.0.0.1"]\n' + dkim_config(("example.org", "s2", key, "ed25519-sha256"))
    e = env(sink_port=sink.port, extra=extra, trusted='["127.0.0.1/32"]')
    raw = Raw(e.mx)
    assert raw.reply()[0] == 220
    for line in (b"EHLO app.test", b"MAIL FROM:<app@example.org>", b"RCPT TO:<friend@example.test>"):
        assert raw.cmd(line)[0] == 250, line
    assert raw.cmd(b"DATA")[0] == 354
    assert raw.cmd(b"From: app@example.org\r\nSubject: from the app\r\n\r\nx\r\n.")[0] == 250
    raw.close()
    [message] = sink.wait(1)
    assert b"DKIM-Signature:" in message.content
    assert dkim.verify(message.content, dnsfunc=dns_lookup(dns_port)), message.content


def test_implicit_tls_submission_checks_the_sender_too(env, sink):
    e = env(sink_port=sink.port)
    with smtplib.SMTP_SSL("127.0.0.1", e.smtps, timeout=30, context=client_context()) as client:
        client.ehlo("client.test")
        client.login(*ALICE)
        assert client.mail(BOB[0])[0] == 553
        client.rset()
        client.sendmail(ALICE[0], ["friend@example.test"], b"From: alice@example.org\r\nSubject: 465\r\n\r\nx\r\n")
    [message] = sink.wait(1)
    assert b"Message-ID: <" in message.content


def test_signature_is_in_the_queue_and_survives_a_restart(tmp_path, env, dns_zone):
    key, txt = keygen(tmp_path / "keys", "example.org", "s1", "rsa")
    dns_port = dns_zone({"s1._domainkey.example.org": {"TXT": [txt]}})
    signing = dkim_config(("example.org", "s1", key, "rsa-sha256"))
    sink_port = free_port()  # nobody listens yet: the message waits in the queue
    e = env(sink_port=sink_port, extra=signing)
    submit(e, ALICE, ALICE[0], b"From: alice@example.org\r\nSubject: queued\r\n\r\nwait for it\r\n")
    e.wait_log("DKIM-signed")
    e.server.stop()
    # Restarted without any signing key: what is delivered was signed
    # before it was spooled.
    e.server.config_text = e.server.config_text.replace(signing, "")
    sink = Sink(sink_port).start()
    try:
        e.server.start(e.mx)
        [message] = sink.wait(1, timeout=60)
        assert message.content.count(b"DKIM-Signature:") == 1
        assert dkim.verify(message.content, dnsfunc=dns_lookup(dns_port)), message.content
    finally:
        sink.stop()


def test_authenticated_user_is_signed_only_for_its_own_from(tmp_path, env, sink):
    # Not a submission listener: the From is not checked at DATA, so the
    # signature must not vouch for another author.
    key, _ = keygen(tmp_path / "keys", "example.org", "s1", "ed25519")
    e = env(sink_port=sink.port, extra=dkim_config(("example.org", "s1", key, "ed25519-sha256")),
            submission_extra="submission = false")
    submit(e, ALICE, ALICE[0], b"From: bob@example.org\r\nSubject: not hers\r\n\r\nx\r\n")
    submit(e, ALICE, ALICE[0], b"From: alice@example.org\r\nSubject: hers\r\n\r\nx\r\n")
    messages = sink.wait(2)
    by_subject = {headers_of(m.content)["Subject"]: m.content for m in messages}
    assert b"DKIM-Signature" not in by_subject["not hers"]
    assert b"DKIM-Signature" in by_subject["hers"]
    # Not a submission listener: no Date or Message-ID added either.
    assert b"\r\nMessage-ID:" not in by_subject["hers"]


def test_swaks_submission_is_signed_and_foreign_sender_refused(tmp_path, env, sink, dns_zone):
    require_tool("swaks", perl_module="Net::SSLeay")
    key, txt = keygen(tmp_path / "keys", "example.org", "sw", "rsa")
    dns_port = dns_zone({"sw._domainkey.example.org": {"TXT": [txt]}})
    e = env(sink_port=sink.port, extra=dkim_config(("example.org", "sw", key, "rsa-sha256")))

    def swaks(sender):
        return subprocess.run(
            ["swaks", "--server", f"127.0.0.1:{e.submission}", "--tls", "--auth", "PLAIN",
             "--auth-user", ALICE[0], "--auth-password", ALICE[1],
             "--from", sender, "--to", "friend@example.test", "--timeout", "30"],
            capture_output=True, text=True, timeout=60,
        )

    refused = swaks(BOB[0])
    assert refused.returncode != 0
    assert "553 5.7.1" in refused.stdout, refused.stdout
    done = swaks(ALICE[0])
    assert done.returncode == 0, done.stdout + done.stderr
    [message] = sink.wait(1)
    assert dkim.verify(message.content, dnsfunc=dns_lookup(dns_port)), message.content


def test_sighup_rereads_a_rotated_key(tmp_path, env, sink, dns_zone):
    old_key, old_txt = keygen(tmp_path / "old", "example.org", "s1", "ed25519")
    new_key, new_txt = keygen(tmp_path / "new", "example.org", "s1", "ed25519")
    old_dns = dns_lookup(dns_zone({"s1._domainkey.example.org": {"TXT": [old_txt]}}))
    new_dns = dns_lookup(dns_zone({"s1._domainkey.example.org": {"TXT": [new_txt]}}))
    live = tmp_path / "live.pem"
    live.write_bytes(old_key.read_bytes())
    e = env(sink_port=sink.port, extra=dkim_config(("example.org", "s1", live, "ed25519-sha256")))
    submit(e, ALICE, ALICE[0], b"From: alice@example.org\r\nSubject: one\r\n\r\nx\r\n")
    # A file that does not load keeps the previous key.
    live.write_text("not a key")
    e.server.proc.send_signal(signal.SIGHUP)
    e.wait_log("DKIM keys not reloaded")
    submit(e, ALICE, ALICE[0], b"From: alice@example.org\r\nSubject: two\r\n\r\nx\r\n")
    live.write_bytes(new_key.read_bytes())
    e.server.proc.send_signal(signal.SIGHUP)
    e.wait_log("DKIM keys reloaded")
    submit(e, ALICE, ALICE[0], b"From: alice@example.org\r\nSubject: three\r\n\r\nx\r\n")
    messages = sink.wait(3)
    by_subject = {headers_of(m.content)["Subject"]: m.content for m in messages}
    assert dkim.verify(by_subject["one"], dnsfunc=old_dns)
    assert dkim.verify(by_subject["two"], dnsfunc=old_dns)
    assert dkim.verify(by_subject["three"], dnsfunc=new_dns)
    assert not dkim.verify(by_subject["three"], dnsfunc=old_dns)

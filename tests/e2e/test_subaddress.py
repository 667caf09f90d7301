"""Subaddressing, `[domains] recipient_delimiter = "+"`: `alice+news@` is
delivered to alice's Maildir INBOX with `Delivered-To: alice+news@...`
(`postmaster+x@` to postmaster's), while a detail does not make an unknown
name deliverable; builtin:recipients, taking the delimiter from [domains],
accepts `alice+news@` at RCPT and refuses `bob+x@`; LMTP delivery hands a real
Dovecot the full address, which Dovecot splits with its own delimiter and
files in alice's INBOX, and whose Sieve (Pigeonhole) sees the detail and
files `+news` mail into alice's `news` folder."""
import shutil
import smtplib
import subprocess

from conftest import Raw, Server, config, free_port
from peers import peer_dir, require, wait_for
from test_dovecot_lmtp import lmtp_config

DOMAINS = 'local = ["localhost", "example.org"]\n'


def subaddress_config(port, data, extra="", delimiter="+"):
    """The suite's config with the delimiter under [domains] and sluice's
    default mailbox rules (no mailbox made on demand)."""
    text = config(port, data, extra=extra + "\n[delivery.maildir]\n")
    assert "create_mailboxes" not in text
    return text.replace(DOMAINS, DOMAINS + f'recipient_delimiter = "{delimiter}"\n', 1)


def start(tmp_path, extra="", mailboxes=("alice", "sender")):
    port, data = free_port(), tmp_path / "data"
    for local in mailboxes:
        (data / "mail" / "example.org" / local).mkdir(parents=True)
    return Server(tmp_path, subaddress_config(port, data, extra)).start(port)


def send(server, rcpts, subject, sender="sender@example.org"):
    body = f"From: {sender}\r\nMessage-ID: <{subject}@example.org>\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as smtp:
        return smtp.sendmail(sender, rcpts, body)


def only_message(server, local):
    files = server.maildir(local, "example.org")
    assert len(files) == 1, (local, files, server.log.read_text())
    return files[0].read_bytes()


def test_maildir_delivers_a_detail_to_the_base_mailbox(tmp_path):
    server = start(tmp_path)
    try:
        assert send(server, ["alice+news@example.org", "postmaster+x@example.org", "bob+x@example.org"],
                    "tagged") == {}
        # bob has no mailbox: his bounce reaches the sender's
        assert wait_for(lambda: server.maildir("alice", "example.org") and server.maildir("postmaster", "example.org")
                        and server.maildir("sender", "example.org"), timeout=60), server.log.read_text()
        alice = only_message(server, "alice")
        assert alice.startswith(b"Return-Path: <sender@example.org>\r\nDelivered-To: alice+news@example.org\r\n"), \
            alice[:300]
        assert b"Subject: tagged" in alice
        postmaster = only_message(server, "postmaster")
        assert b"\r\nDelivered-To: postmaster+x@example.org\r\n" in postmaster, postmaster[:300]
        bounce = only_message(server, "sender")
        assert b"bob+x@example.org" in bounce and b"5.1.1" in bounce, bounce[:2000]
        mail = tmp_path / "data" / "mail" / "example.org"
        assert sorted(p.name for p in mail.iterdir()) == ["alice", "postmaster", "sender"]
    finally:
        server.stop()


def test_maildir_without_a_delimiter_keeps_the_detail_in_the_name(tmp_path):
    port, data = free_port(), tmp_path / "data"
    for local in ("alice", "sender"):
        (data / "mail" / "example.org" / local).mkdir(parents=True)
    server = Server(tmp_path, subaddress_config(port, data, delimiter="")).start(port)
    try:
        assert send(server, ["alice+news@example.org", "alice@example.org"], "plain") == {}
        assert wait_for(lambda: server.maildir("alice", "example.org") and server.maildir("sender", "example.org"),
                        timeout=60), server.log.read_text()
        # alice@ is delivered without a Delivered-To; alice+news@ is nobody's
        alice = only_message(server, "alice")
        assert b"Delivered-To" not in alice, alice[:300]
        assert b"alice+news@example.org" in only_message(server, "sender")
    finally:
        server.stop()


RECIPIENTS = """
[plugins.recipients]
path = "builtin:recipients"

[plugins.recipients.config]
users = ["alice@example.org", "sender@example.org"]
"""


def test_recipients_plugin_verifies_the_base_name_at_rcpt(tmp_path):
    # No recipient_delimiter in the plugin's config: it takes [domains]'s.
    port, data = free_port(), tmp_path / "data"
    for local in ("alice", "sender"):
        (data / "mail" / "example.org" / local).mkdir(parents=True)
    text = subaddress_config(port, data, RECIPIENTS).replace(
        'rcpt = ["relay"]', 'rcpt = ["recipients", "relay"]', 1)
    server = Server(tmp_path, text).start(port)
    try:
        raw = Raw(server.port)
        try:
            assert raw.reply()[0] == 220
            raw.cmd(b"EHLO client.test")
            assert raw.cmd(b"MAIL FROM:<sender@example.org>")[0] == 250
            replies = [raw.cmd(b"RCPT TO:<" + r + b">")
                       for r in (b"alice+news@example.org", b"Alice+Other@example.org", b"bob+x@example.org",
                                 b"bob@example.org", b"+alice@example.org")]
        finally:
            raw.close()
        assert [code for code, _ in replies] == [250, 250, 550, 550, 550], replies
        assert replies[2][1] == b"550 5.1.1 no such user", replies
        # accepted at RCPT, then filed in alice's mailbox with the detail kept
        refused = send(server, ["alice+news@example.org", "bob+x@example.org"], "verified")
        assert list(refused) == ["bob+x@example.org"], refused
        assert wait_for(lambda: server.maildir("alice", "example.org"), timeout=60), server.log.read_text()
        assert b"\r\nDelivered-To: alice+news@example.org\r\n" in only_message(server, "alice")
        assert not (data / "mail" / "example.org" / "bob").exists()
    finally:
        server.stop()


def test_lmtp_hands_dovecot_the_full_address(tmp_path, dovecot_lmtp):
    dovecot = dovecot_lmtp()
    port, data = free_port(), tmp_path / "data"
    server = Server(tmp_path, subaddress_config(port, data, lmtp_config(dovecot, "tcp"))).start(port)
    try:
        assert send(server, ["alice+news@example.org"], "lmtp-tagged") == {}
        messages = dovecot.wait_messages("alice@example.org", timeout=60)
        assert len(messages) == 1, dovecot.log()
        # Dovecot was given alice+news@ and filed it in alice's INBOX
        assert b"Delivered-To: alice+news@example.org" in messages[0], messages[0][:600]
        assert b"Subject: lmtp-tagged" in messages[0]
        assert server.maildir("alice", "example.org") == []
        assert b"lmtp-tagged" in dovecot.fetch("alice@example.org")
        # Dovecot split off the detail itself: the user it delivered for is alice@
        assert "lmtp(alice@example.org)" in dovecot.log() and "saved mail to INBOX" in dovecot.log(), dovecot.log()
    finally:
        server.stop()


SIEVE_PLUGIN = "/usr/lib/dovecot/modules/lib90_sieve_plugin.so"

# Run for every recipient before the user's own scripts: the envelope's
# detail decides the folder.
SIEVE_SCRIPT = """\
require ["envelope", "subaddress", "fileinto", "mailbox"];
if envelope :detail "to" "news" {
  fileinto :create "news";
}
"""


def test_dovecot_sieve_files_by_the_detail(tmp_path, dovecot_lmtp):
    require(SIEVE_PLUGIN, "sievec")
    scripts = peer_dir("sluice-sieve-")
    try:
        script = scripts / "before.sieve"
        script.write_text(SIEVE_SCRIPT)
        # Dovecot (as nobody) may not save a global script's binary itself.
        compiled = subprocess.run(["sievec", str(script)], capture_output=True)
        assert compiled.returncode == 0, compiled.stderr.decode(errors="replace")
        dovecot = dovecot_lmtp(conf_extra=(
            "protocol lmtp {\n  mail_plugins = $mail_plugins sieve\n}\n"
            f"plugin {{\n  sieve_before = {script}\n  recipient_delimiter = +\n}}\n"))
        port, data = free_port(), tmp_path / "data"
        server = Server(tmp_path, subaddress_config(port, data, lmtp_config(dovecot, "tcp"))).start(port)
        try:
            assert send(server, ["alice+news@example.org"], "sieve-news") == {}
            assert send(server, ["alice@example.org"], "sieve-plain") == {}
            news = dovecot.maildir("alice@example.org") / ".news"
            filed = wait_for(lambda: [f for sub in ("new", "cur") if (news / sub).exists()
                                      for f in (news / sub).iterdir()], timeout=60)
            assert len(filed) == 1, dovecot.log()
            assert b"Subject: sieve-news" in filed[0].read_bytes()
            inbox = dovecot.wait_messages("alice@example.org", timeout=60)
            assert len(inbox) == 1 and b"Subject: sieve-plain" in inbox[0], dovecot.log()
            log = dovecot.log()
            assert "msgid=<sieve-news@example.org>: fileinto action: stored mail into mailbox 'news'" in log, log
            assert "Error" not in log, log
        finally:
            server.stop()
    finally:
        shutil.rmtree(scripts, ignore_errors=True)

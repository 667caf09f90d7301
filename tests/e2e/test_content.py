"""builtin:content through the real server: every matcher (header regex on
an RFC 2047 subject, body regex on base64 and quoted-printable parts,
attachment extension and type in multipart messages built with Python's
email package, message size) and every action (reject, quarantine, add a
header, discard), a bad pattern failing the start, and skip_authenticated
for a submission listener."""
import base64
import json
import smtplib
import subprocess
import time
from email.message import EmailMessage

import pytest

from conftest import BIN, Server, config, free_port
from tlsenv import TlsEnv, client_context

RULES = """
[plugins.content]
path = "builtin:content"

[plugins.content.config]
skip_authenticated = {skip}

[[plugins.content.config.rule]]
name = "pills"
header = "Subject"
pattern = "(?i)viagra"
action = "reject"

[[plugins.content.config.rule]]
name = "flag-offers"
header = "*"
pattern = "(?i)special offer"
action = "add_header"
add_header = "X-Spam-Flag: YES"

[[plugins.content.config.rule]]
name = "lottery"
body = "(?i)you won the l[oö]ttery"
action = "quarantine"

[[plugins.content.config.rule]]
name = "executables"
attachment_extension = ["exe", "js", "scr"]
action = "reject"
reply = "554 5.7.0 executable attachments are not accepted"

[[plugins.content.config.rule]]
name = "msdownload"
attachment_type = ["application/x-msdownload"]
action = "reject"

[[plugins.content.config.rule]]
name = "silence"
body = "(?i)unsubscribe-me-silently"
action = "discard"

[[plugins.content.config.rule]]
name = "too-big"
max_size = "20KiB"
action = "reject"
reply = "message too large for this mailbox"
"""


def rules(skip="false"):
    return RULES.replace("{skip}", skip)


@pytest.fixture
def server(tmp_path):
    port = free_port()
    s = Server(tmp_path, config(port, tmp_path / "data", extra=rules(), pipeline_extra='data = ["content"]'))
    s.start(port)
    yield s
    s.stop()


def message(subject="hello", body="plain words", charset="utf-8", cte=None):
    msg = EmailMessage()
    msg["From"] = "alice@example.org"
    msg["To"] = "bob@localhost"
    msg["Subject"] = subject
    msg.set_content(body, charset=charset, cte=cte)
    return msg


def send(port, msg):
    """Sends one message; returns the DATA reply (code, text)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("alice@example.org")
        code, text = smtp.rcpt("bob@localhost")
        assert code == 250, text
        return smtp.data(msg.as_bytes() if isinstance(msg, EmailMessage) else msg)


def wait_delivered(server, count, local="bob"):
    deadline = time.time() + 30
    while time.time() < deadline and len(server.maildir(local)) < count:
        time.sleep(0.05)
    files = server.maildir(local)
    assert len(files) == count, files
    return [f.read_bytes() for f in files]


def test_subject_regex_on_an_encoded_subject_rejects_with_the_rule_name(server):
    # Encoded-words in base64 and Q: only a decoder sees the word.
    for subject in ["Cheap =?utf-8?b?" + base64.b64encode("VIAGRA t\u00f6day".encode()).decode() + "?=",
                    "=?iso-8859-1?q?Cheap_V=49AGRA?= =?utf-8?q?_today?="]:
        assert "VIAGRA" not in subject
        raw = message("placeholder").as_bytes().replace(b"Subject: placeholder", b"Subject: " + subject.encode())
        code, text = send(server.port, raw)
        assert code == 550 and b"5.7.1" in text and b"pills" in text, text
    # A clean message still goes through.
    assert send(server.port, message("hello"))[0] == 250
    wait_delivered(server, 1)


@pytest.mark.parametrize("cte", ["base64", "quoted-printable"])
def test_body_regex_matches_decoded_parts_and_quarantines(server, cte):
    # The rule wants "l[oö]ttery" case-insensitively: only the decoded text
    # has the "Ö", in either transfer encoding.
    msg = message(body="Dear friend, YOU WON THE L\u00d6TTERY! Claim now.\n" + "x" * 100, cte=cte)
    raw = msg.as_bytes()
    assert "L\u00d6TTERY".encode() not in raw, raw
    code, text = send(server.port, msg)
    assert code == 250, text
    entries = queue_entries(server)
    assert len(entries) == 1, entries
    assert "quarantined" in json.dumps(entries[0]), entries
    assert "lottery" in json.dumps(entries[0]), entries
    assert server.maildir("bob") == []


def queue_entries(server):
    deadline = time.time() + 30
    while True:
        result = subprocess.run([BIN, "queue", "list", "--json", "--config", str(server.tmp / "sluice.toml")],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        entries = json.loads(result.stdout)["entries"]
        if entries or time.time() > deadline:
            return entries
        time.sleep(0.1)


def with_attachment(filename, maintype, subtype, nested=False):
    msg = message("report", "see attached")
    data = b"MZ\x90\x00" + b"\x00" * 64
    if nested:
        inner = message("forwarded", "inner text")
        inner.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
        msg.add_attachment(inner)
    else:
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg


@pytest.mark.parametrize("filename,nested", [
    ("invoice.pdf.exe", False),
    ("SCRIPT.JS", False),
    ("screensaver.scr", True),
])
def test_attachment_extension_rejects_with_the_configured_reply(server, filename, nested):
    code, text = send(server.port, with_attachment(filename, "application", "octet-stream", nested))
    assert code == 554 and b"5.7.0 executable attachments are not accepted" in text, text


def test_attachment_type_rejects(server):
    code, text = send(server.port, with_attachment("setup.bin", "application", "x-msdownload"))
    assert code == 550 and b"msdownload" in text, text
    # A harmless attachment passes.
    assert send(server.port, with_attachment("report.pdf", "application", "pdf"))[0] == 250
    wait_delivered(server, 1)


def test_max_size_rejects_large_messages(server):
    code, text = send(server.port, message("big", "y" * 30_000))
    assert code == 550 and b"message too large for this mailbox" in text, text
    assert send(server.port, message("small", "y" * 10_000))[0] == 250


def test_add_header_is_visible_in_delivered_mail_and_the_rules_go_on(server):
    assert send(server.port, message("A special offer for you"))[0] == 250
    delivered = wait_delivered(server, 1)[0]
    head = delivered.split(b"\r\n\r\n", 1)[0] if b"\r\n\r\n" in delivered else delivered.split(b"\n\n", 1)[0]
    assert b"X-Spam-Flag: YES" in head, delivered
    # Flagged and then quarantined by a later rule: the header rule went on.
    code, _ = send(server.port, message("special offer", "you won the lottery"))
    assert code == 250
    assert len(queue_entries(server)) == 1


def test_discard_answers_250_and_drops_the_message(server):
    code, text = send(server.port, message("news", "click unsubscribe-me-silently"))
    assert code == 250, text
    # The next message is delivered; the discarded one never is.
    assert send(server.port, message("after"))[0] == 250
    delivered = wait_delivered(server, 1)
    assert b"Subject: after" in delivered[0]
    assert queue_entries_now(server) == []


def queue_entries_now(server):
    result = subprocess.run([BIN, "queue", "list", "--json", "--config", str(server.tmp / "sluice.toml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["entries"]


def test_a_bad_pattern_fails_the_start_naming_the_rule(tmp_path):
    text = config(free_port(), tmp_path / "data", pipeline_extra='data = ["content"]', extra="""
[plugins.content]
path = "builtin:content"

[[plugins.content.config.rule]]
name = "broken-rule"
body = "(unclosed"
action = "reject"
""")
    path = tmp_path / "sluice.toml"
    path.write_text(text)
    # The pipeline is built (and each plugin's init run) at start.
    start = subprocess.run([BIN, "serve", "--config", str(path)], capture_output=True, text=True, timeout=120)
    output = start.stdout + start.stderr
    assert start.returncode != 0, output
    assert "broken-rule" in output and "not a valid regex" in output, output


@pytest.mark.parametrize("skip", ["true", "false"])
def test_skip_authenticated_lets_submission_through(tmp_path, skip):
    env = TlsEnv(tmp_path, extra=rules(skip), pipeline_extra='data = ["content"]')
    try:
        env.add_user("alice@example.org", "plum-orbit-window-47")
        spam = message("viagra for all").as_bytes()
        with smtplib.SMTP("127.0.0.1", env.submission, timeout=30) as client:
            client.ehlo("client.test")
            client.starttls(context=client_context())
            client.ehlo("client.test")
            client.login("alice@example.org", "plum-orbit-window-47")
            client.mail("alice@example.org")
            assert client.rcpt("bob@localhost")[0] == 250
            code, text = client.data(spam)
        if skip == "true":
            assert code == 250, text
        else:
            assert code == 550 and b"pills" in text, text
        # Unauthenticated on the MX listener: always checked.
        code, text = send(env.mx, spam)
        assert code == 550 and b"pills" in text, text
    finally:
        env.stop()

"""Recipients a data-stage plugin adds, through the real server: they need
the operator's `allow = ["recipients"]`, are parsed like RCPT arguments (a
CR/LF in one cannot smuggle anything into the envelope), and count toward
`max_recipients`. A refused change is the plugin's fault: its `on_error`
answers the client and nothing is queued. The plugin is fixture-verdict,
configured to add recipients as written."""
import json
import smtplib
import time

from conftest import Server, config, fixture, free_port


def start(tmp_path, add, allow='["recipients"]', on_error=None, max_recipients=100):
    port = free_port()
    plugin = f"""
[plugins.adder]
path = "{fixture('fixture_verdict')}"
{f'allow = {allow}' if allow is not None else ''}
{f'on_error = "{on_error}"' if on_error else ''}
[plugins.adder.config]
add_recipients = {json.dumps(add)}
"""
    text = config(port, tmp_path / "data", extra=plugin, pipeline_extra='data = ["adder"]',
                  server_extra=f"max_recipients = {max_recipients}")
    return Server(tmp_path, text).start(port)


def send(server, recipients):
    """(code, text) of the reply to the message's final dot."""
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("alice@example.org")
        for rcpt in recipients:
            code, text = smtp.rcpt(rcpt)
            assert code == 250, text
        return smtp.data(b"Subject: list\r\n\r\nhello\r\n")


def mail_files(server):
    return sorted((server.data / "mail").rglob("new/*")) if (server.data / "mail").exists() else []


def wait_delivered(server, local, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline and not server.maildir(local):
        time.sleep(0.05)
    return server.maildir(local)


def test_a_granted_valid_recipient_is_delivered_too(tmp_path):
    server = start(tmp_path, ["Copy@LOCALHOST"])
    try:
        code, text = send(server, ["bob@localhost"])
        assert code == 250, text
        assert len(wait_delivered(server, "bob")) == 1
        # Maildir folds the local part; the domain was taken apart like a
        # RCPT argument's.
        copies = wait_delivered(server, "copy")
        assert len(copies) == 1, mail_files(server)
        assert b"Subject: list" in copies[0].read_bytes()
    finally:
        server.stop()


def test_a_recipient_with_crlf_is_refused_by_on_error(tmp_path):
    # Without the check this line would become a recipient of its own, and
    # written to an SMTP next hop it would be a second RCPT command.
    smuggled = "copy@localhost\r\nRCPT TO:<victim@example.net>"
    server = start(tmp_path, [smuggled], on_error="reject")
    try:
        code, text = send(server, ["bob@localhost"])
        assert code == 550, (code, text)
        time.sleep(1)
        assert mail_files(server) == []
        log = server.log.read_text()
        assert "invalid recipient" in log and "control character in address" in log, log
    finally:
        server.stop()


def test_an_invalid_recipient_tempfails_by_default(tmp_path):
    server = start(tmp_path, ["no-domain"])
    try:
        code, text = send(server, ["bob@localhost"])
        assert code == 451 and b"4.3.0" in text, (code, text)
        assert "missing domain" in server.log.read_text()
    finally:
        server.stop()


def test_without_the_grant_an_added_recipient_is_the_plugins_fault(tmp_path):
    server = start(tmp_path, ["copy@localhost"], allow='["kv"]')
    try:
        code, text = send(server, ["bob@localhost"])
        assert code == 451 and b"4.3.0" in text, (code, text)
        time.sleep(1)
        assert mail_files(server) == []
        assert "not allowed: recipients (plugins.adder.allow does not list it)" in server.log.read_text()
    finally:
        server.stop()


def test_skip_drops_the_plugins_changes_and_delivers_the_rest(tmp_path):
    server = start(tmp_path, ["copy@localhost"], allow=None, on_error="skip")
    try:
        code, text = send(server, ["bob@localhost"])
        assert code == 250, (code, text)
        assert len(wait_delivered(server, "bob")) == 1
        time.sleep(1)
        assert server.maildir("copy") == []
    finally:
        server.stop()


def test_added_recipients_count_toward_max_recipients(tmp_path):
    server = start(tmp_path, ["copy@localhost"], max_recipients=2)
    try:
        # Two recipients are within the limit; the plugin's third is not.
        code, text = send(server, ["bob@localhost", "carol@localhost"])
        assert code == 452 and b"4.5.3" in text, (code, text)
        time.sleep(1)
        assert mail_files(server) == []
        assert "added recipients over max_recipients" in server.log.read_text()
        # A recipient the plugin adds that is already there is no new one.
        code, text = send(server, ["bob@localhost", "copy@localhost"])
        assert code == 250, (code, text)
    finally:
        server.stop()

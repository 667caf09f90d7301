"""builtin:recipients through the real server: a local recipient must exist
before RCPT gets 250 (550 5.1.1 otherwise), from the static `users` list,
from a granted recipients file with aliases (a rewritten file counts from
the next session), or from a callout to a real Dovecot LMTP server or an
SMTP server with per-recipient replies; callout answers are cached, and
postmaster always exists."""
import smtplib
import subprocess
import time

import pytest

from conftest import BIN, Raw, Server, Sink, config, free_port


def start(tmp_path, plugin, rcpt='["recipients", "relay"]'):
    port = free_port()
    server = Server(tmp_path, config(port, tmp_path / "data", rcpt=rcpt, extra=plugin))
    return server.start(port)


@pytest.fixture
def servers():
    started = []
    yield started
    for server in started:
        server.stop()


def rcpt(server, *recipients):
    """(code, text) of RCPT for each recipient, in one new session."""
    raw = Raw(server.port)
    try:
        assert raw.reply()[0] == 220
        raw.cmd(b"EHLO client.test")
        assert raw.cmd(b"MAIL FROM:<sender@example.test>")[0] == 250
        return [raw.cmd(b"RCPT TO:<" + r.encode() + b">") for r in recipients]
    finally:
        raw.close()


def codes(server, *recipients):
    return [code for code, _ in rcpt(server, *recipients)]


STATIC = """
[plugins.recipients]
path = "builtin:recipients"

[plugins.recipients.config]
users = ["alice@example.org", "Bob@Example.org", "@localhost"]
recipient_delimiter = "+"
"""


def test_static_list(tmp_path, servers):
    server = start(tmp_path, STATIC)
    servers.append(server)
    replies = rcpt(server, "alice@example.org", "BOB@example.org", "alice+news@example.org",
                   "carol@example.org", "anyone@localhost", "postmaster@example.org", "<postmaster>"[1:-1],
                   "friend@example.test")
    assert [c for c, _ in replies] == [250, 250, 250, 550, 250, 250, 250, 250], replies
    code, text = replies[3]
    assert text == b"550 5.1.1 no such user", text
    # A known recipient's mail is delivered.
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as smtp:
        refused = smtp.sendmail("sender@example.test", ["alice@example.org", "carol@example.org"],
                                b"Subject: hi\r\n\r\nhello\r\n")
    assert list(refused) == ["carol@example.org"], refused
    deadline = time.time() + 30
    while time.time() < deadline and not server.maildir("alice", "example.org"):
        time.sleep(0.05)
    assert len(server.maildir("alice", "example.org")) == 1


def test_other_domains_are_left_to_the_relay_check(tmp_path, servers):
    # Untrusted client: the relay plugin refuses foreign domains, the
    # recipients plugin has no opinion on them.
    port = free_port()
    text = config(port, tmp_path / "data", rcpt='["recipients", "relay"]', trusted="[]", extra=STATIC)
    server = Server(tmp_path, text).start(port)
    servers.append(server)
    assert codes(server, "friend@example.test", "alice@example.org", "nobody@example.org") == [554, 250, 550]


def file_plugin(path, grant=True):
    files = f'files = ["{path}"]' if grant else ""
    return f"""
[plugins.recipients]
path = "builtin:recipients"
{files}

[plugins.recipients.config]
file = "{path}"
"""


def test_file_with_aliases_and_reload_on_change(tmp_path, servers):
    path = tmp_path / "recipients"
    path.write_text("# mailboxes\nalice@example.org\n\nsales@example.org: alice@example.org, bob@example.org\n"
                    "hostmaster: alice@example.org   # every local domain\n")
    server = start(tmp_path, file_plugin(path))
    servers.append(server)
    assert codes(server, "alice@example.org", "sales@example.org", "hostmaster@localhost",
                 "carol@example.org") == [250, 250, 250, 550]
    path.write_text(path.read_text() + "carol@example.org\n")
    deadline = time.time() + 30
    while time.time() < deadline and codes(server, "carol@example.org") != [250]:
        time.sleep(0.1)
    assert codes(server, "carol@example.org", "sales@example.org") == [250, 250]
    # Removing a line removes the recipient.
    path.write_text("carol@example.org\n")
    deadline = time.time() + 30
    while time.time() < deadline and codes(server, "alice@example.org") != [550]:
        time.sleep(0.1)
    assert codes(server, "alice@example.org", "carol@example.org") == [550, 250]


def test_a_file_not_granted_to_the_plugin_fails_the_start(tmp_path):
    path = tmp_path / "recipients"
    path.write_text("alice@example.org\n")
    cfg = tmp_path / "sluice.toml"
    cfg.write_text(config(free_port(), tmp_path / "data", rcpt='["recipients", "relay"]',
                          extra=file_plugin(path, grant=False)))
    result = subprocess.run([BIN, "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "[plugins.recipients] files" in output, output


def test_a_bad_line_in_the_file_fails_the_start_naming_the_line(tmp_path):
    path = tmp_path / "recipients"
    path.write_text("alice@example.org\nnot an address\n")
    cfg = tmp_path / "sluice.toml"
    cfg.write_text(config(free_port(), tmp_path / "data", rcpt='["recipients", "relay"]',
                          extra=file_plugin(path)))
    result = subprocess.run([BIN, "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "line 2" in output and "not an address" in output, output


def callout_plugin(protocol, target, extra=""):
    return f"""
[plugins.recipients]
path = "builtin:recipients"
callouts = ["{protocol}:{target}"]
timeout = "5s"

[plugins.recipients.config]
callout = {{ {protocol} = "{target}" }}
{extra}
"""


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_callout_to_dovecot_lmtp(tmp_path, servers, dovecot_lmtp, transport):
    dovecot = dovecot_lmtp(users=("alice@example.org", "bob@example.org"))
    target = f"127.0.0.1:{dovecot.port}" if transport == "tcp" else f"unix:{dovecot.socket_path}"
    server = start(tmp_path, callout_plugin("lmtp", target))
    servers.append(server)
    replies = rcpt(server, "alice@example.org", "bob@example.org", "mallory@example.org",
                   "postmaster@example.org")
    assert [c for c, _ in replies] == [250, 250, 550, 250], replies
    assert replies[2][1].startswith(b"550 5.1.1"), replies


def test_callout_to_smtp_with_per_recipient_replies_and_cache(tmp_path, servers):
    sink = Sink(free_port(), rcpt_replies={
        "gone@example.org": "550 5.1.1 mailbox unknown",
        "busy@example.org": "451 4.3.0 try later",
    }).start()
    try:
        server = start(tmp_path, callout_plugin("smtp", f"127.0.0.1:{sink.port}"))
        servers.append(server)
        replies = rcpt(server, "alice@example.org", "gone@example.org", "busy@example.org")
        assert [c for c, _ in replies] == [250, 550, 450], replies
        assert replies[1][1].startswith(b"550 5.1.1") and replies[2][1].startswith(b"450 4.1.1"), replies
        assert sink.rcpt_seen == ["alice@example.org", "gone@example.org", "busy@example.org"]
        # Answers are cached (positive and negative); a tempfail is not.
        assert codes(server, "alice@example.org", "gone@example.org", "busy@example.org") == [250, 550, 450]
        assert sorted(sink.rcpt_seen) == sorted(["alice@example.org", "gone@example.org",
                                                 "busy@example.org", "busy@example.org"]), sink.rcpt_seen
        # Ten more sessions for the same unknown address: still one callout.
        for _ in range(10):
            assert codes(server, "gone@example.org") == [550]
        assert sink.rcpt_seen.count("gone@example.org") == 1
    finally:
        sink.stop()


def test_callout_unreachable_tempfails_or_fails_open(tmp_path, servers):
    dead = free_port()
    server = start(tmp_path, callout_plugin("smtp", f"127.0.0.1:{dead}"))
    servers.append(server)
    code, text = rcpt(server, "alice@example.org")[0]
    assert code == 450 and text.startswith(b"450 4.1.1"), text

    other = tmp_path / "open"
    other.mkdir()
    server = start(other, callout_plugin("smtp", f"127.0.0.1:{dead}", "callout_fail_open = true"))
    servers.append(server)
    # Fail open: no opinion, and the relay check takes local domains.
    assert codes(server, "alice@example.org") == [250]


def test_callout_target_must_be_granted(tmp_path):
    # Granted for LMTP, configured for SMTP: not the same grant.
    plugin = callout_plugin("smtp", "127.0.0.1:2525").replace('callouts = ["smtp:', 'callouts = ["lmtp:')
    cfg = tmp_path / "sluice.toml"
    cfg.write_text(config(free_port(), tmp_path / "data", rcpt='["recipients", "relay"]', extra=plugin))
    result = subprocess.run([BIN, "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "callout smtp:127.0.0.1:2525 is not granted" in output and "callouts" in output, output


def test_aliases_are_delivered_to_their_targets_from_the_data_stage(tmp_path, servers):
    path = tmp_path / "recipients"
    path.write_text("alice@example.org\nbob@example.org\nsales@example.org: alice, team@example.org\n"
                    "team@example.org: bob@example.org\n")
    port = free_port()
    # Expanding aliases changes the recipients: the operator grants it.
    plugin = file_plugin(path).replace('path = "builtin:recipients"\n',
                                       'path = "builtin:recipients"\nallow = ["recipients"]\n')
    text = config(port, tmp_path / "data", rcpt='["recipients", "relay"]', extra=plugin,
                  pipeline_extra='data = ["recipients"]')
    server = Server(tmp_path, text).start(port)
    servers.append(server)
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as smtp:
        assert smtp.sendmail("sender@example.test", ["Sales@example.org"], b"Subject: team\r\n\r\nhi\r\n") == {}
    deadline = time.time() + 30
    while time.time() < deadline and not (server.maildir("alice", "example.org")
                                          and server.maildir("bob", "example.org")):
        time.sleep(0.05)
    assert len(server.maildir("alice", "example.org")) == 1
    assert len(server.maildir("bob", "example.org")) == 1
    assert server.maildir("sales", "example.org") == []
    assert server.maildir("Sales", "example.org") == []

"""builtin:greylist through the real binary: an unknown triplet gets
451 4.7.1 at RCPT with a retry hint, a retry after the delay is accepted
and delivered, an unretried triplet expires, a network is auto-allowed
after enough passed triplets, allow lists skip greylisting. The state is
sled (the default backend); test_redis_state.py runs it on Redis."""
import re
import smtplib
import time

from conftest import Raw


def greylist(allow_networks="[]", **settings):
    lines = "\n".join(f"{k} = {v}" for k, v in settings.items())
    return f"""
[plugins.greylist]
path = "builtin:greylist"

[plugins.greylist.config]
allow_networks = {allow_networks}
{lines}
"""


def start(sluice, **kw):
    # After relay, as Postfix puts its policy service after
    # reject_unauth_destination: relay attempts are refused, not greylisted.
    return sluice(rcpt='["relay", "greylist"]', extra=greylist(**kw))


def rcpt(port, to="bob@localhost", sender="alice@example.org", source="127.0.0.1"):
    """One transaction up to RCPT; sends the message when accepted.
    Returns the RCPT reply (code, text)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=(source, 0)) as smtp:
        smtp.ehlo("client.test")
        smtp.mail(sender)
        code, text = smtp.rcpt(to)
        if code == 250:
            smtp.data(b"Subject: t\r\n\r\nhello\r\n")
        return code, text


def retry_hint(text):
    match = re.search(rb"try again in (\d+) seconds", text)
    assert match, text
    return int(match.group(1))


def until_accepted(port, deadline_s=20, **kw):
    """Retries (polled) until the RCPT is accepted; returns the replies."""
    replies = []
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        code, text = rcpt(port, **kw)
        replies.append((code, text))
        if code == 250:
            return replies
        assert code == 451, (code, text)
        time.sleep(0.3)
    raise AssertionError(f"never accepted: {replies[-3:]}")


def test_first_attempt_greylisted_then_accepted_after_delay(sluice):
    server = start(sluice, delay='"1s"')
    code, text = rcpt(server.port)
    assert code == 451 and b"4.7.1" in text and b"reylisted" in text, (code, text)
    assert 1 <= retry_hint(text) <= 1
    until_accepted(server.port)
    # Known now: accepted at once, from another address of the /24 too.
    assert rcpt(server.port, source="127.0.0.9")[0] == 250
    deadline = time.time() + 10
    while time.time() < deadline and len(server.maildir("bob")) < 2:
        time.sleep(0.1)
    assert len(server.maildir("bob")) >= 2
    # Another recipient is another triplet.
    assert rcpt(server.port, to="carol@localhost")[0] == 451
    # Relaying from an untrusted address is refused before greylisting.
    code, text = rcpt(server.port, to="x@remote.test", source="127.0.0.2")
    assert code == 554, (code, text)


def test_session_goes_on_after_451(sluice):
    server = start(sluice, delay='"1h"')
    raw = Raw(server.port)
    raw.reply()
    raw.cmd(b"EHLO client.test")
    assert raw.cmd(b"MAIL FROM:<alice@example.org>")[0] == 250
    code, text = raw.cmd(b"RCPT TO:<bob@localhost>")
    assert code == 451 and 3500 < retry_hint(text) <= 3600, text
    # An early retry keeps the first-seen time: the hint does not grow.
    code, text = raw.cmd(b"RCPT TO:<bob@localhost>")
    assert code == 451 and retry_hint(text) <= 3600
    assert raw.cmd(b"QUIT")[0] == 221
    raw.close()


def test_unretried_triplet_expires(sluice):
    # expire < delay: the triplet is forgotten before it could pass, so
    # every retry starts over and none is ever accepted.
    server = start(sluice, delay='"2s"', expire='"1s"')
    hints = []
    deadline = time.time() + 6
    while time.time() < deadline:
        code, text = rcpt(server.port)
        assert code == 451, (code, text)
        hints.append(retry_hint(text))
        time.sleep(0.3)
    # Retried well past the delay, and never further than the delay away.
    assert len(hints) >= 5 and max(hints) <= 2, hints


def test_auto_allow_after_passed_triplets(sluice):
    server = start(sluice, delay='"1s"', auto_allow_after="2")
    for to in ("a@localhost", "b@localhost"):
        assert rcpt(server.port, to=to)[0] == 451
        until_accepted(server.port, to=to)
    # The network is allowed now: a new sender and recipient pass at once.
    code, text = rcpt(server.port, to="c@localhost", sender="new@example.com", source="127.0.0.5")
    assert code == 250, (code, text)


def test_allow_lists(sluice):
    server = start(
        sluice,
        allow_networks='["127.0.0.2/32"]',
        allow_senders='["friend.test", "bob@pal.test"]',
        allow_recipients='["postmaster@localhost"]',
        delay='"1h"',
    )
    assert rcpt(server.port, source="127.0.0.2")[0] == 250
    assert rcpt(server.port, source="127.0.0.3")[0] == 451
    assert rcpt(server.port, sender="x@mail.friend.test")[0] == 250
    assert rcpt(server.port, sender="Bob@Pal.test")[0] == 250
    assert rcpt(server.port, sender="eve@pal.test")[0] == 451
    assert rcpt(server.port, to="postmaster@localhost")[0] == 250


def test_loopback_allowed_by_default(sluice):
    server = sluice(
        rcpt='["relay", "greylist"]',
        extra='\n[plugins.greylist]\npath = "builtin:greylist"\n',
    )
    assert rcpt(server.port)[0] == 250


def test_bad_config_refuses_to_start(tmp_path):
    import subprocess
    from conftest import BIN, config, free_port

    cfg = tmp_path / "bad.toml"
    cfg.write_text(config(free_port(), tmp_path / "data", rcpt='["relay", "greylist"]') + greylist(delay='"5 minutes"'))
    out = subprocess.run([BIN, "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "greylist: delay" in out.stdout + out.stderr, out


def test_authenticated_clients_are_not_greylisted(tmp_path):
    import base64
    import subprocess
    from conftest import BIN, Server, config, free_port

    port, submission = free_port(), free_port()
    listener = f"""
[[listener]]
name = "submission"
address = "127.0.0.1:{submission}"
pipeline = "inbound"
tls = "starttls"
auth = "optional"
auth_without_tls = true
"""
    text = config(port, tmp_path / "data", rcpt='["relay", "greylist"]', extra=greylist(delay='"1h"') + listener)
    (tmp_path / "sluice.toml").write_text(text)
    user, password = "carol@example.org", "quartz-lantern-meadow-19"
    added = subprocess.run([BIN, "user", "add", user, "--config", str(tmp_path / "sluice.toml"), "--password-stdin"],
                           input=password + "\n", capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    server = Server(tmp_path, text).start(port)
    try:
        raw = Raw(submission)
        raw.reply()
        raw.cmd(b"EHLO client.test")
        token = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())
        assert raw.cmd(b"AUTH PLAIN " + token)[0] == 235
        assert raw.cmd(b"MAIL FROM:<carol@example.org>")[0] == 250
        code, text = raw.cmd(b"RCPT TO:<bob@localhost>")
        assert code == 250, text
        raw.cmd(b"QUIT")
        raw.close()
        # The same triplet without AUTH is greylisted.
        code, _ = rcpt(submission, sender="carol@example.org")
        assert code == 451
    finally:
        server.stop()

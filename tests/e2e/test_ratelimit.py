"""builtin:ratelimit through the real binary: connections refused at
connect (421 4.7.0, then closed), recipients at RCPT and messages at DATA
(451 4.7.1), each with a retry hint, counted per address, network, sender;
windows reset; loopback exempt unless configured otherwise. The state is
sled (the default backend); test_redis_state.py runs it on Redis."""
import re
import smtplib
import time

from conftest import Raw


def ratelimit(limits, exempt="[]", extra=""):
    body = "\n".join(
        f"""
[[plugins.ratelimit.config.limit]]
key = "{key}"
what = "{what}"
max = {mx}
window = "{window}"
"""
        for key, what, mx, window in limits
    )
    return f"""
[plugins.ratelimit]
path = "builtin:ratelimit"

[plugins.ratelimit.config]
exempt_networks = {exempt}
{extra}
{body}
"""


def start(sluice, limits, **kw):
    return sluice(
        rcpt='["ratelimit", "relay"]',
        pipeline_extra='connect = ["ratelimit"]\ndata = ["ratelimit"]',
        extra=ratelimit(limits, **kw),
        trusted='["127.0.0.0/8"]',
    )


def greet(port, source="127.0.0.1"):
    """Connects and returns the greeting (code, text) and the socket."""
    raw = Raw(port, source)
    return raw.reply(), raw


def retry_hint(text):
    match = re.search(rb"try again in (\d+) seconds", text)
    assert match, text
    return int(match.group(1))


def send(port, rcpts=("bob@localhost",), sender="alice@example.org", source="127.0.0.1"):
    """One message; returns the DATA reply (code, text) or raises."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=(source, 0)) as smtp:
        smtp.ehlo("client.test")
        smtp.mail(sender)
        for rcpt in rcpts:
            code, text = smtp.rcpt(rcpt)
            assert code == 250, (code, text)
        smtp.putcmd("data")
        code, text = smtp.getreply()
        assert code == 354, (code, text)
        smtp.send(b"Subject: t\r\n\r\nhello\r\n.\r\n")
        return smtp.getreply()


def test_connections_per_ip_disconnect_with_421(sluice):
    # The readiness probe of the fixture was connection 1 of this hour.
    server = start(sluice, [("ip", "connections", 3, "1h")])
    for _ in range(2):
        (code, _), raw = greet(server.port)
        assert code == 220
        raw.close()
    (code, text), raw = greet(server.port)
    assert code == 421 and b"4.7.0" in text, text
    assert b"too many connections from 127.0.0.1" in text, text
    assert 0 < retry_hint(text) <= 3600
    raw.sock.settimeout(5)
    assert raw.sock.recv(100) == b"", "connection left open after 421"
    raw.close()
    # Another address is counted apart.
    (code, _), raw = greet(server.port, "127.0.0.2")
    assert code == 220
    raw.close()


def test_connection_window_resets(sluice):
    server = start(sluice, [("ip", "connections", 1, "2s")])
    refused = False
    deadline = time.time() + 15
    while time.time() < deadline and not refused:
        (code, text), raw = greet(server.port)
        raw.close()
        refused = code == 421
    assert refused, "never refused"
    assert retry_hint(text) <= 2
    # A new window lets the client in again (polled, not timed).
    deadline = time.time() + 15
    while time.time() < deadline:
        (code, _), raw = greet(server.port)
        raw.close()
        if code == 220:
            break
        time.sleep(0.2)
    assert code == 220


def test_recipients_per_sender_at_rcpt(sluice):
    server = start(sluice, [("sender", "recipients", 2, "1h")])
    (code, _), raw = greet(server.port)
    raw.cmd(b"EHLO client.test")
    assert raw.cmd(b"MAIL FROM:<alice@example.org>")[0] == 250
    assert raw.cmd(b"RCPT TO:<a@localhost>")[0] == 250
    assert raw.cmd(b"RCPT TO:<b@localhost>")[0] == 250
    code, text = raw.cmd(b"RCPT TO:<c@localhost>")
    assert code == 451 and b"4.7.1" in text, text
    assert b"too many recipients from sender alice@example.org" in text
    retry_hint(text)
    # The session goes on; another sender has its own count.
    raw.cmd(b"RSET")
    assert raw.cmd(b"MAIL FROM:<carol@example.org>")[0] == 250
    assert raw.cmd(b"RCPT TO:<a@localhost>")[0] == 250
    # The same sender from another connection is still over.
    raw.cmd(b"RSET")
    assert raw.cmd(b"MAIL FROM:<Alice@Example.org>")[0] == 250
    assert raw.cmd(b"RCPT TO:<d@localhost>")[0] == 451
    raw.cmd(b"QUIT")
    raw.close()


def test_messages_per_network_at_data_and_window_reset(sluice):
    server = start(sluice, [("network", "messages", 1, "2s")])
    # 127.0.0.2 and 127.0.0.3 share 127.0.0.0/24: one count. Whichever
    # message falls in a window after the first gets 451.
    over = None
    deadline = time.time() + 15
    sources = ["127.0.0.2", "127.0.0.3"]
    i = 0
    while time.time() < deadline and over is None:
        code, text = send(server.port, source=sources[i % 2])
        i += 1
        if code == 451:
            over = text
        else:
            assert code == 250, (code, text)
    assert over is not None and b"4.7.1" in over, over
    assert b"too many messages from network 127.0.0.0/24" in over, over
    assert retry_hint(over) <= 2
    # The window ends; mail flows again.
    deadline = time.time() + 15
    while time.time() < deadline:
        code, _ = send(server.port, source="127.0.0.3")
        if code == 250:
            break
        time.sleep(0.2)
    assert code == 250


def test_messages_per_ip_counts_each_address(sluice):
    server = start(sluice, [("ip", "messages", 1, "1h")])
    assert send(server.port, source="127.0.0.2")[0] == 250
    assert send(server.port, source="127.0.0.3")[0] == 250
    code, text = send(server.port, source="127.0.0.2")
    assert code == 451 and b"from 127.0.0.2" in text
    # Two accepted messages were delivered, the refused one was not.
    deadline = time.time() + 10
    while time.time() < deadline and len(server.maildir("bob")) < 2:
        time.sleep(0.1)
    time.sleep(0.3)
    assert len(server.maildir("bob")) == 2


def test_loopback_is_exempt_by_default(sluice):
    server = sluice(
        rcpt='["ratelimit", "relay"]',
        pipeline_extra='connect = ["ratelimit"]',
        extra="""
[plugins.ratelimit]
path = "builtin:ratelimit"

[[plugins.ratelimit.config.limit]]
key = "ip"
what = "connections"
max = 1
window = "1h"
""",
    )
    for _ in range(3):
        (code, _), raw = greet(server.port)
        assert code == 220
        raw.close()


def test_bad_config_refuses_to_start(tmp_path):
    # The plugin's init validates its config when the pipeline is built.
    import subprocess
    from conftest import BIN, config, free_port

    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        config(free_port(), tmp_path / "data", rcpt='["ratelimit", "relay"]')
        + ratelimit([("user", "connections", 1, "1m")])
    )
    out = subprocess.run([BIN, "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "ratelimit: limit 1" in out.stdout + out.stderr, out


def authed_server(tmp_path, limits, extra=""):
    """A server with an AUTH-without-TLS listener and one user; returns
    (server, submission port, AUTH PLAIN token)."""
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
    text = config(port, tmp_path / "data", rcpt='["ratelimit", "relay"]', extra=ratelimit(limits, extra=extra) + listener)
    (tmp_path / "sluice.toml").write_text(text)
    user, password = "dave@example.org", "copper-violet-harbor-83"
    added = subprocess.run([BIN, "user", "add", user, "--config", str(tmp_path / "sluice.toml"), "--password-stdin"],
                           input=password + "\n", capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    token = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())
    return Server(tmp_path, text).start(port), submission, token


def authed_rcpts(port, token, n):
    raw = Raw(port)
    raw.reply()
    raw.cmd(b"EHLO client.test")
    assert raw.cmd(b"AUTH PLAIN " + token)[0] == 235
    assert raw.cmd(b"MAIL FROM:<dave@example.org>")[0] == 250
    replies = [raw.cmd(b"RCPT TO:<r%d@localhost>" % i) for i in range(n)]
    raw.cmd(b"QUIT")
    raw.close()
    return replies


def test_recipients_per_user(tmp_path):
    server, submission, token = authed_server(tmp_path, [("user", "recipients", 2, "1h")])
    try:
        replies = authed_rcpts(submission, token, 3)
        assert [c for c, _ in replies] == [250, 250, 451], replies
        assert b"too many recipients from user dave@example.org" in replies[2][1]
        # Unauthenticated sessions have no user: not counted.
        assert send(submission, rcpts=("a@localhost", "b@localhost", "c@localhost"))[0] == 250
    finally:
        server.stop()


def test_exempt_authenticated(tmp_path):
    server, submission, token = authed_server(
        tmp_path, [("ip", "recipients", 1, "1h")], extra="exempt_authenticated = true"
    )
    try:
        assert [c for c, _ in authed_rcpts(submission, token, 3)] == [250, 250, 250]
        # The same address without AUTH is limited.
        with smtplib.SMTP("127.0.0.1", submission, timeout=10) as smtp:
            smtp.ehlo("client.test")
            smtp.mail("x@example.org")
            assert smtp.rcpt("a@localhost")[0] == 250
            assert smtp.rcpt("b@localhost")[0] == 451
    finally:
        server.stop()

"""SMTP AUTH (PLAIN, LOGIN) with real clients (Python smtplib, swaks),
authenticated relay, the TLS requirement, lockout, and the `sluice user`
command line working against a running server."""
import base64
import smtplib
import ssl
import subprocess

import pytest

from conftest import BIN, Raw, Sink, free_port
from tlsenv import TlsEnv, TlsRaw, client_context, require_tool

ALICE = ("alice@example.org", "plum-orbit-window-47")


@pytest.fixture
def env(tmp_path):
    envs = []

    def start(**kw):
        e = TlsEnv(tmp_path, **kw)
        envs.append(e)
        return e

    yield start
    for e in envs:
        e.stop()


@pytest.fixture
def sink():
    s = Sink(free_port()).start()
    yield s
    s.stop()


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def plain(user, password) -> bytes:
    return b64(b"\0" + user.encode() + b"\0" + password.encode())


def tls_session(e, ehlo=True):
    raw = TlsRaw(e.submission)
    assert raw.reply()[0] == 220
    raw.cmd(b"EHLO client.test")
    assert raw.cmd(b"STARTTLS")[0] == 220
    raw.starttls()
    if ehlo:
        assert raw.cmd(b"EHLO client.test")[0] == 250
    return raw


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_smtplib_starttls_login_relays_with_esmtpsa(env, sink, mechanism):
    e = env(sink_port=sink.port)
    e.add_user(*ALICE)
    with smtplib.SMTP("127.0.0.1", e.submission, timeout=30) as client:
        client.ehlo("client.test")
        assert not client.has_extn("auth")
        client.starttls(context=client_context())
        client.ehlo("client.test")
        assert client.has_extn("auth")
        assert "PLAIN" in client.esmtp_features["auth"] and "LOGIN" in client.esmtp_features["auth"]
        # login() picks from what was advertised: offer it one mechanism.
        client.esmtp_features["auth"] = mechanism
        code, text = client.login(*ALICE)
        assert (code, text[:5]) == (235, b"2.7.0"), text
        client.sendmail(ALICE[0], ["friend@example.test"],
                        b"Subject: submitted\r\nFrom: alice@example.org\r\n\r\nhello\r\n")
    messages = sink.wait(1)
    assert len(messages) == 1
    head = messages[0].content.split(b"\r\n\r\n", 1)[0]
    received = head.split(b"\r\nReceived:")[0]
    assert b"with ESMTPSA id" in received, head
    assert b"(using TLSv1.3 with cipher TLS13_" in received, head
    assert messages[0].rcpt_tos == ["friend@example.test"]
    e.wait_log('authenticated session=')


def test_unauthenticated_client_cannot_relay(env, sink):
    e = env(sink_port=sink.port)
    raw = tls_session(e)
    assert raw.cmd(b"MAIL FROM:<a@example.org>")[0] == 250
    code, text = raw.cmd(b"RCPT TO:<friend@example.test>")
    assert code == 554, text


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("mode", ["--tls", "--tlsc"])
def test_swaks(env, sink, mechanism, mode):
    require_tool("swaks", perl_module="Net::SSLeay")
    e = env(sink_port=sink.port)
    e.add_user(*ALICE)
    port = e.submission if mode == "--tls" else e.smtps
    done = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{port}", mode, "--auth", mechanism,
         "--auth-user", ALICE[0], "--auth-password", ALICE[1],
         "--from", ALICE[0], "--to", "friend@example.test", "--timeout", "30"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "235 2.7.0" in done.stdout, done.stdout
    messages = sink.wait(1)
    assert len(messages) == 1
    assert b"with ESMTPSA id" in messages[0].content.split(b"\r\n\r\n", 1)[0]


def test_auth_needs_tls(env):
    e = env()
    raw = TlsRaw(e.submission)
    raw.reply()
    code, text = raw.cmd(b"EHLO client.test")
    assert b"AUTH" not in text
    code, text = raw.cmd(b"AUTH PLAIN " + plain(*ALICE))
    assert (code, text[4:10]) == (538, b"5.7.11"), text
    raw.cmd(b"STARTTLS")
    raw.starttls()
    code, text = raw.cmd(b"EHLO client.test")
    assert b"250-AUTH PLAIN LOGIN" in text, text


def test_bad_password_and_lockout(env):
    e = env(extra='[auth]\nmax_failures = 3\nlockout = "10m"\n')
    e.add_user(*ALICE)
    raw = tls_session(e)
    for _ in range(3):
        code, text = raw.cmd(b"AUTH PLAIN " + plain(ALICE[0], "wrong-password-123"))
        assert (code, text[4:9]) == (535, b"5.7.8"), text
    # Locked out: even the right password is refused, from any session of
    # this client, with a temporary failure.
    code, text = raw.cmd(b"AUTH PLAIN " + plain(*ALICE))
    assert (code, text[4:9]) == (454, b"4.7.0"), text
    other = tls_session(e)
    code, text = other.cmd(b"AUTH PLAIN " + plain(*ALICE))
    assert (code, text[4:9]) == (454, b"4.7.0"), text
    e.wait_log("client locked out")


def test_user_lockout_across_clients(env):
    e = env(extra='[auth]\nmax_failures = 2\nlockout = "10m"\n')
    e.add_user(*ALICE)
    for source in ("127.0.0.2", "127.0.0.3"):
        raw = TlsRaw(e.submission, source=source)
        raw.reply()
        raw.cmd(b"EHLO c.test")
        raw.cmd(b"STARTTLS")
        raw.starttls()
        raw.cmd(b"EHLO c.test")
        code, _ = raw.cmd(b"AUTH PLAIN " + plain(ALICE[0], "wrong-password-123"))
        assert code == 535
    raw = tls_session(e)
    # The user is locked: same reply as a wrong password.
    code, text = raw.cmd(b"AUTH PLAIN " + plain(*ALICE))
    assert (code, text[4:9]) == (535, b"5.7.8"), text
    e.wait_log("user locked out")


def test_exchange_errors(env):
    e = env()
    e.add_user(*ALICE)
    raw = tls_session(e)
    # PLAIN after an empty challenge, then cancel.
    assert raw.cmd(b"AUTH PLAIN") == (334, b"334 ")
    code, text = raw.cmd(b"*")
    assert (code, text[4:9]) == (501, b"5.0.0"), text
    # LOGIN's two challenges, cancelled at the second.
    assert raw.cmd(b"AUTH LOGIN") == (334, b"334 VXNlcm5hbWU6")
    assert raw.cmd(b64(ALICE[0].encode())) == (334, b"334 UGFzc3dvcmQ6")
    assert raw.cmd(b"*")[0] == 501
    # Bad base64, as initial response and as a response.
    code, text = raw.cmd(b"AUTH PLAIN !!!!")
    assert (code, text[4:9]) == (501, b"5.5.2"), text
    assert raw.cmd(b"AUTH PLAIN")[0] == 334
    code, text = raw.cmd(b"not base64 at all")
    assert (code, text[4:9]) == (501, b"5.5.2"), text
    code, text = raw.cmd(b"AUTH CRAM-MD5")
    assert code == 504, text
    # During a transaction: 503.
    assert raw.cmd(b"MAIL FROM:<a@example.org>")[0] == 250
    code, text = raw.cmd(b"AUTH PLAIN " + plain(*ALICE))
    assert code == 503, text
    assert raw.cmd(b"RSET")[0] == 250
    # LOGIN succeeds; a second AUTH is 503 5.5.1.
    assert raw.cmd(b"AUTH LOGIN")[0] == 334
    assert raw.cmd(b64(ALICE[0].encode()))[0] == 334
    code, text = raw.cmd(b64(ALICE[1].encode()))
    assert (code, text[4:9]) == (235, b"2.7.0"), text
    code, text = raw.cmd(b"AUTH PLAIN " + plain(*ALICE))
    assert (code, text[4:9]) == (503, b"5.5.1"), text


def test_auth_required_listener(env):
    e = env()
    e.add_user(*ALICE)
    raw = TlsRaw(e.smtps, implicit=True)
    assert raw.reply()[0] == 220
    raw.cmd(b"EHLO client.test")
    code, text = raw.cmd(b"MAIL FROM:<alice@example.org>")
    assert (code, text[4:9]) == (530, b"5.7.0"), text
    assert raw.cmd(b"AUTH PLAIN " + plain(*ALICE))[0] == 235
    assert raw.cmd(b"MAIL FROM:<alice@example.org>")[0] == 250


def test_auth_required_on_starttls_listener(env):
    e = env(submission_auth="required")
    e.add_user(*ALICE)
    raw = TlsRaw(e.submission)
    raw.reply()
    raw.cmd(b"EHLO client.test")
    code, text = raw.cmd(b"MAIL FROM:<alice@example.org>")
    assert (code, text[4:9]) == (530, b"5.7.0") and b"STARTTLS" in text, text
    raw.cmd(b"STARTTLS")
    raw.starttls()
    raw.cmd(b"EHLO client.test")
    code, text = raw.cmd(b"MAIL FROM:<alice@example.org>")
    assert (code, text[4:9]) == (530, b"5.7.0") and b"Authentication required" in text, text
    assert raw.cmd(b"AUTH PLAIN " + plain(*ALICE))[0] == 235
    assert raw.cmd(b"MAIL FROM:<alice@example.org>")[0] == 250


def test_auth_without_tls_for_loopback_testing(env):
    e = env(submission_extra="auth_without_tls = true")
    e.add_user(*ALICE)
    raw = Raw(e.submission)
    raw.reply()
    code, text = raw.cmd(b"EHLO client.test")
    assert b"250-AUTH PLAIN LOGIN" in text and b"STARTTLS" in text, text
    code, text = raw.cmd(b"AUTH PLAIN " + plain(*ALICE))
    assert code == 235, text


def test_user_added_while_running_logs_in_without_restart(env):
    e = env()
    raw = tls_session(e)
    bob = ("bob@example.org", "tangerine-lighthouse-88")
    code, _ = raw.cmd(b"AUTH PLAIN " + plain(*bob))
    assert code == 535
    e.add_user(*bob)
    code, text = raw.cmd(b"AUTH PLAIN " + plain(*bob))
    assert code == 235, text
    # passwd and del take effect too.
    done = e.user("passwd", bob[0], password="another-long-phrase-91")
    assert done.returncode == 0, done.stderr
    again = tls_session(e)
    assert again.cmd(b"AUTH PLAIN " + plain(*bob))[0] == 535
    assert again.cmd(b"AUTH PLAIN " + plain(bob[0], "another-long-phrase-91"))[0] == 235
    assert e.user("del", bob[0]).returncode == 0
    third = tls_session(e)
    assert third.cmd(b"AUTH PLAIN " + plain(bob[0], "another-long-phrase-91"))[0] == 535


def test_user_cli(tmp_path):
    cfg = tmp_path / "sluice.toml"
    cfg.write_text(
        f'[server]\ndata_dir = "{tmp_path}/data"\n[[listener]]\nname = "mx"\naddress = "127.0.0.1:2525"\n'
        'pipeline = "p"\n[pipeline.p]\n[auth]\nmin_password_length = 16\n'
    )

    def user(*args, password=None):
        cmd = [BIN, "user", *args, "--config", str(cfg)]
        if password is not None:
            cmd.append("--password-stdin")
        return subprocess.run(cmd, input=None if password is None else password + "\n",
                              capture_output=True, text=True, timeout=60)

    common = user("add", "carol", password="1QAZ2WSX3EDC4RFV")
    assert common.returncode != 0
    assert "common passwords" in common.stderr, common.stderr
    short = user("add", "carol", password="fifteen-chars-x")
    assert short.returncode != 0
    assert "too short" in short.stderr and "16" in short.stderr, short.stderr
    bad_name = user("add", "car ol", password="a-perfectly-fine-phrase")
    assert bad_name.returncode != 0 and "invalid user name" in bad_name.stderr, bad_name.stderr

    assert user("add", "Carol@Example.ORG", password="a-perfectly-fine-phrase").returncode == 0
    dup = user("add", "carol@example.org", password="a-perfectly-fine-phrase")
    assert dup.returncode != 0 and "already exists" in dup.stderr, dup.stderr
    assert user("add", "dave", password="another-perfectly-fine-one").returncode == 0
    listed = user("list")
    assert listed.stdout.split() == ["carol@example.org", "dave"]

    users = tmp_path / "data" / "users"
    assert users.stat().st_mode & 0o777 == 0o600
    text = users.read_text()
    assert "a-perfectly-fine-phrase" not in text
    assert all(line.split(":", 1)[1].startswith("$argon2id$") for line in text.splitlines())

    missing = user("del", "erin")
    assert missing.returncode != 0 and "no user" in missing.stderr
    assert user("del", "dave").returncode == 0
    assert user("list").stdout.split() == ["carol@example.org"]

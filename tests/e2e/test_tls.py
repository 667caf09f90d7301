"""Inbound TLS: STARTTLS and implicit TLS with real clients (Python ssl,
openssl s_client), the STARTTLS injection defense, certificate reload on
SIGHUP, the generated self-signed certificate, and config errors."""
import os
import signal
import ssl
import subprocess
import warnings

import pytest

from conftest import BIN, Raw, Sink, free_port
from tlsenv import TlsEnv, TlsRaw, cert_der, client_context, make_cert, require_tool


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


def ehlo_lines(raw, name=b"client.test"):
    code, text = raw.cmd(b"EHLO " + name)
    assert code == 250, text
    return [line[4:] for line in text.split(b"\n")]


def test_starttls_advertised_only_before_tls(env):
    e = env()
    raw = TlsRaw(e.submission)
    assert raw.reply()[0] == 220
    assert b"STARTTLS" in ehlo_lines(raw)
    assert raw.cmd(b"STARTTLS")[0] == 220
    raw.starttls()
    assert raw.sock.version() in ("TLSv1.3", "TLSv1.2")
    lines = ehlo_lines(raw)
    assert b"STARTTLS" not in lines
    # Already in TLS: 503.
    code, text = raw.cmd(b"STARTTLS")
    assert code == 503, text
    assert raw.cmd(b"QUIT")[0] == 221


def test_starttls_errors(env):
    e = env()
    raw = TlsRaw(e.submission)
    assert raw.reply()[0] == 220
    ehlo_lines(raw)
    code, text = raw.cmd(b"STARTTLS now")
    assert code == 501, text
    # The plain listener has no TLS: not advertised, 454.
    plain = Raw(e.mx)
    assert plain.reply()[0] == 220
    assert b"STARTTLS" not in ehlo_lines(plain)
    code, text = plain.cmd(b"STARTTLS")
    assert (code, text[4:9]) == (454, b"4.7.0"), text


def test_starttls_resets_the_session(env):
    e = env()
    raw = TlsRaw(e.submission)
    raw.reply()
    ehlo_lines(raw)
    assert raw.cmd(b"MAIL FROM:<a@example.org>")[0] == 250
    assert raw.cmd(b"STARTTLS")[0] == 220
    raw.starttls()
    # HELO and the transaction are forgotten (RFC 3207 §4.2).
    code, text = raw.cmd(b"MAIL FROM:<a@example.org>")
    assert code == 503, text
    ehlo_lines(raw)
    assert raw.cmd(b"MAIL FROM:<a@example.org>")[0] == 250
    assert raw.cmd(b"RCPT TO:<postmaster@localhost>")[0] == 250


def test_starttls_command_injection_is_discarded(env):
    """CVE-2011-0411: commands pipelined in cleartext after STARTTLS must not
    be executed inside the TLS session."""
    e = env()
    raw = TlsRaw(e.submission)
    raw.reply()
    ehlo_lines(raw)
    raw.send(b"STARTTLS\r\nNOOP\r\nMAIL FROM:<evil@attacker.test>\r\n")
    code, text = raw.reply()
    assert code == 220, text
    assert raw.buf == b"", f"the server answered the injected commands: {raw.buf!r}"
    raw.starttls()
    assert raw.silent(1.0), f"a reply to an injected command arrived: {raw.buf!r}"
    # The first reply in TLS is the one to EHLO, not to NOOP or MAIL.
    code, text = raw.cmd(b"EHLO client.test")
    assert code == 250 and b"greets" in text.split(b"\n")[0], text
    assert raw.cmd(b"MAIL FROM:<a@example.org>")[0] == 250
    e.wait_log("discarded cleartext sent after STARTTLS")


def test_implicit_tls_greets_after_handshake(env):
    e = env()
    raw = TlsRaw(e.smtps, implicit=True)
    code, text = raw.reply()
    assert code == 220 and b"ESMTP" in text, text
    lines = ehlo_lines(raw)
    assert b"STARTTLS" not in lines
    assert any(line.startswith(b"AUTH ") for line in lines)
    assert raw.cmd(b"STARTTLS")[0] == 503


def test_failed_handshake_ends_only_that_session(env):
    e = env()
    other = TlsRaw(e.submission)
    other.reply()
    ehlo_lines(other)
    # Cleartext garbage where a ClientHello should be.
    bad = Raw(e.submission)
    bad.reply()
    ehlo_lines(bad)
    assert bad.cmd(b"STARTTLS")[0] == 220
    bad.send(b"this is not a TLS ClientHello\r\n" * 4)
    bad.sock.settimeout(10)
    try:
        while bad.sock.recv(4096):
            pass
    except (ConnectionError, TimeoutError):
        pass
    e.wait_log("TLS handshake failed")
    # Implicit listener, client that hangs up mid-handshake.
    s = Raw(e.smtps)
    s.close()
    assert other.cmd(b"NOOP")[0] == 250
    assert other.cmd(b"STARTTLS")[0] == 220
    other.starttls()
    ehlo_lines(other)


def test_stalled_handshake_is_bounded_by_its_own_timeout(env):
    # tls_handshake, not the (here ten minutes) command timeout.
    e = env(server_extra='[server.timeouts]\ncommand = "10m"\ntls_handshake = "1s"\n')
    # Connected to the implicit listener, never sends a ClientHello.
    stalled = Raw(e.smtps)
    stalled.sock.settimeout(60)
    assert stalled.sock.recv(4096) == b"", "the server must hang up"
    e.wait_log("TLS handshake failed: TLS handshake timed out")
    # The same after STARTTLS.
    raw = Raw(e.submission)
    raw.reply()
    assert raw.cmd(b"STARTTLS")[0] == 220
    raw.sock.settimeout(60)
    assert raw.sock.recv(4096) == b""
    e.wait_log("TLS handshake failed: TLS handshake timed out", count=2)


@pytest.mark.parametrize("flag,version", [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")])
def test_openssl_s_client_negotiates(env, flag, version):
    require_tool("openssl")
    e = env()
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{e.submission}", "-starttls", "smtp", flag, "-brief"],
        input=b"EHLO openssl.test\r\nQUIT\r\n", capture_output=True, timeout=30,
    )
    out = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    assert f"Protocol version: {version}" in out, out
    # The EHLO sent through the tunnel was answered.
    assert "250 HELP" in out, out
    e.wait_log(f"version=TLSv1.{version[-1]}")


def test_openssl_s_client_tls1_1_is_refused(env):
    require_tool("openssl")
    e = env()
    # SECLEVEL=0 so the client really offers TLS 1.1: the refusal must come
    # from the server, not from the client's own policy.
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{e.submission}", "-starttls", "smtp",
         "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0", "-brief"],
        input=b"QUIT\r\n", capture_output=True, timeout=30,
    )
    out = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    assert done.returncode != 0, out
    assert "Protocol version: TLSv1.1" not in out, out
    # rustls refused the TLS 1.1 ClientHello (not a client-side refusal).
    e.wait_log("TLS handshake failed: peer is incompatible")


def test_python_client_cannot_use_tls1_1(env):
    e = env()
    raw = TlsRaw(e.smtps, implicit=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = client_context(minimum=ssl.TLSVersion.TLSv1, maximum=ssl.TLSVersion.TLSv1_1)
    ctx.set_ciphers("DEFAULT@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        raw.starttls(ctx)
    e.wait_log("TLS handshake failed: peer is incompatible")


def test_received_header_records_tls(env, tmp_path):
    sink_port = free_port()
    sink = Sink(sink_port).start()
    try:
        e = env(sink_port=sink_port, trusted='["127.0.0.1/32"]')
        raw = TlsRaw(e.submission)
        raw.reply()
        ehlo_lines(raw)
        raw.cmd(b"STARTTLS")
        raw.starttls(client_context(maximum=ssl.TLSVersion.TLSv1_2))
        ehlo_lines(raw)
        assert raw.cmd(b"MAIL FROM:<a@example.org>")[0] == 250
        assert raw.cmd(b"RCPT TO:<b@example.test>")[0] == 250
        assert raw.cmd(b"DATA")[0] == 354
        assert raw.cmd(b"Subject: tls\r\n\r\nbody\r\n.")[0] == 250
        messages = sink.wait(1)
        assert len(messages) == 1
        content = messages[0].content
        head = content.split(b"\r\n\r\n", 1)[0]
        assert b"with ESMTPS id" in head, head
        assert b"(using TLSv1.2 with cipher TLS_ECDHE_" in head, head
    finally:
        sink.stop()


def test_self_signed_certificate_is_generated_once(tmp_path):
    e = TlsEnv(tmp_path)
    try:
        cert = tmp_path / "data" / "tls" / "cert.pem"
        key = tmp_path / "data" / "tls" / "key.pem"
        assert cert.exists() and key.exists()
        assert os.stat(key).st_mode & 0o077 == 0
        first = cert.read_bytes()
        raw = TlsRaw(e.smtps, implicit=True)
        assert raw.sock.getpeercert(binary_form=True) == cert_der(cert)
        raw.close()
    finally:
        e.stop()
    e2 = TlsEnv(tmp_path)
    try:
        assert cert.read_bytes() == first
    finally:
        e2.stop()


def test_sighup_reloads_the_certificate_without_dropping_sessions(env, tmp_path):
    certs = tmp_path / "certs"
    cert, key = make_cert(certs, "live", "first.test")
    e = env(extra=f'[tls]\ncertificate = "{cert}"\nkey = "{key}"\n')
    first_der = cert_der(cert)

    old = TlsRaw(e.submission)
    old.reply()
    ehlo_lines(old)
    old.cmd(b"STARTTLS")
    old.starttls()
    assert old.sock.getpeercert(binary_form=True) == first_der
    ehlo_lines(old)
    assert old.cmd(b"MAIL FROM:<a@example.org>")[0] == 250

    # Replace both files (an RSA PKCS#1 key this time) and signal.
    new_cert, new_key = make_cert(certs, "next", "second.test", rsa=True)
    os.replace(new_key, key)
    os.replace(new_cert, cert)
    second_der = cert_der(cert)
    assert second_der != first_der
    e.server.proc.send_signal(signal.SIGHUP)
    e.wait_log("certificate reloaded")

    fresh = TlsRaw(e.smtps, implicit=True)
    assert fresh.sock.getpeercert(binary_form=True) == second_der
    assert fresh.reply()[0] == 220
    # The session opened before the reload goes on.
    assert old.cmd(b"RCPT TO:<postmaster@localhost>")[0] == 250
    assert old.cmd(b"DATA")[0] == 354
    assert old.cmd(b"Subject: still here\r\n\r\nbody\r\n.")[0] == 250

    # A broken file: logged, the last good certificate stays.
    cert.write_text("not a certificate\n")
    e.server.proc.send_signal(signal.SIGHUP)
    e.wait_log("certificate not reloaded")
    again = TlsRaw(e.smtps, implicit=True)
    assert again.sock.getpeercert(binary_form=True) == second_der
    assert e.server.proc.poll() is None


def test_config_errors_name_key_and_line(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        '[[listener]]\nname = "mx"\naddress = "127.0.0.1:2525"\npipeline = "p"\ntls = "starttls"\n'
        f'certificate = "{tmp_path}/missing-cert.pem"\nkey = "{tmp_path}/missing-key.pem"\n'
        '[pipeline.p]\n'
    )
    done = subprocess.run([BIN, "check-config", str(cfg)], capture_output=True, text=True)
    assert done.returncode != 0
    assert f"{cfg}:6:" in done.stderr and "listener[0].certificate" in done.stderr, done.stderr
    assert "missing-cert.pem" in done.stderr and "No such file" in done.stderr, done.stderr
    assert f"{cfg}:7:" in done.stderr and "listener[0].key" in done.stderr, done.stderr

    cert, key = make_cert(tmp_path, "ok", "ok.test")
    cfg.write_text(
        '[[listener]]\nname = "mx"\naddress = "127.0.0.1:2525"\npipeline = "p"\nauth = "required"\n'
        f'[pipeline.p]\n[tls]\ncertificate = "{cert}"\nkey = "{cert}"\n'
    )
    done = subprocess.run([BIN, "check-config", str(cfg)], capture_output=True, text=True)
    assert done.returncode != 0
    assert "listener[0].auth" in done.stderr and "only offered over TLS" in done.stderr, done.stderr
    assert f"{cfg}:9:" in done.stderr and "tls.key" in done.stderr and "no private key" in done.stderr, done.stderr

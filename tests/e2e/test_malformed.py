import subprocess

from conftest import BIN, Raw, Sink, free_port


def session(server):
    raw = Raw(server.port)
    assert raw.reply()[0] == 220
    return raw


def test_overlong_command_then_session_still_works(sluice):
    raw = session(sluice())
    assert raw.cmd(b"NOOP " + b"x" * 600)[0] == 500
    assert raw.cmd(b"NOOP")[0] == 250


def test_out_of_order_and_bad_syntax(sluice):
    raw = session(sluice())
    assert raw.cmd(b"MAIL FROM:<a@example.org>")[0] == 503
    assert raw.cmd(b"EHLO client.test")[0] == 250
    assert raw.cmd(b"RCPT TO:<bob@localhost>")[0] == 503
    assert raw.cmd(b"DATA")[0] == 503
    assert raw.cmd(b"FOO bar")[0] == 500
    assert raw.cmd(b"NO\x00OP")[0] in (500, 501)
    for bad in (b"<a@b@c>", b"<@>", b'<"unterminated@x>', b"a@example.org"):
        assert raw.cmd(b"MAIL FROM:" + bad)[0] == 501, bad
    assert raw.cmd(b"VRFY bob")[0] == 252
    assert raw.cmd(b"HELP")[0] == 214
    assert raw.cmd(b"QUIT")[0] == 221


def test_size_and_recipient_limits(sluice):
    raw = session(sluice(server_extra='max_message_size = 2000\nmax_recipients = 2'))
    raw.cmd(b"EHLO client.test")
    assert raw.cmd(b"MAIL FROM:<a@example.org> SIZE=999999")[0] == 552
    assert raw.cmd(b"MAIL FROM:<a@example.org>")[0] == 250
    assert raw.cmd(b"RCPT TO:<a@localhost>")[0] == 250
    assert raw.cmd(b"RCPT TO:<b@localhost>")[0] == 250
    code, text = raw.cmd(b"RCPT TO:<c@localhost>")
    assert code == 452 and b"4.5.3" in text
    assert raw.cmd(b"DATA")[0] == 354
    raw.send(b"Subject: big\r\n\r\n" + (b"y" * 70 + b"\r\n") * 100 + b".\r\n")
    code, text = raw.reply()
    assert code == 552 and b"5.3.4" in text
    assert raw.cmd(b"NOOP")[0] == 250


def test_binarymime_is_refused_and_not_offered(sluice):
    """RFC 3030 §3: BINARYMIME needs CHUNKING; neither is advertised, so
    BODY=BINARYMIME is an unrecognised parameter (RFC 5321 §4.1.1.11)."""
    raw = session(sluice())
    code, text = raw.cmd(b"EHLO client.test")
    assert code == 250
    assert b"BINARYMIME" not in text.upper() and b"CHUNKING" not in text.upper()
    assert raw.cmd(b"MAIL FROM:<a@example.org> BODY=BINARYMIME")[0] == 555
    assert raw.cmd(b"RCPT TO:<bob@localhost>")[0] == 503
    assert raw.cmd(b"MAIL FROM:<a@example.org> BODY=8BITMIME")[0] == 250
    assert raw.cmd(b"RCPT TO:<bob@localhost>")[0] == 250


def test_received_loop_is_refused(sluice):
    raw = session(sluice())
    raw.cmd(b"EHLO client.test")
    raw.cmd(b"MAIL FROM:<a@example.org>")
    raw.cmd(b"RCPT TO:<bob@localhost>")
    assert raw.cmd(b"DATA")[0] == 354
    raw.send(b"Received: from x by y; Mon, 1 Jan 2024 00:00:00 +0000\r\n" * 51 + b"\r\nbody\r\n.\r\n")
    code, text = raw.reply()
    assert code == 554 and b"5.4.6" in text


def test_smuggling_variants_never_end_data(sluice):
    sink_port = free_port()
    server = sluice(extra=f'[[delivery.route]]\ndomain = "example.test"\nnext_hop = "127.0.0.1:{sink_port}"\n')
    sink = Sink(sink_port).start()
    try:
        for fake_end in (b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n"):
            raw = session(server)
            raw.cmd(b"EHLO client.test")
            raw.cmd(b"MAIL FROM:<a@example.org>")
            raw.cmd(b"RCPT TO:<user@example.test>")
            assert raw.cmd(b"DATA")[0] == 354
            smuggled = (b"Subject: smuggle\r\n\r\nbody" + fake_end +
                        b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\n"
                        b"Subject: smuggled\r\n\r\nevil\r\n.\r\n")
            raw.send(smuggled)
            code, text = raw.reply()
            assert code == 250, text
            assert raw.cmd(b"QUIT")[0] == 221, fake_end
            raw.close()
        messages = sink.wait(5, timeout=30)
        assert len(messages) == 5
        for m in messages:
            assert m.rcpt_tos == ["user@example.test"]
            assert m.mail_from == "a@example.org"
    finally:
        sink.stop()


def test_garbage_does_not_crash_the_server(sluice):
    server = sluice()
    import random
    rng = random.Random(5)
    for _ in range(5):
        raw = session(server)
        raw.send(bytes(rng.randrange(256) for _ in range(3000)) + b"\r\n")
        raw.close()
    raw = session(server)
    assert raw.cmd(b"NOOP")[0] == 250
    assert server.proc.poll() is None


def test_check_config(tmp_path):
    good = subprocess.run([BIN, "check-config", "config/minimal.toml"], capture_output=True)
    assert good.returncode == 0, good.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nhostname = "a.test"\nhostnme = "x"\n')
    result = subprocess.run([BIN, "check-config", str(bad)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "hostnme" in result.stderr and ":3:" in result.stderr

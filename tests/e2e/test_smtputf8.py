"""SMTPUTF8 (RFC 6531) end to end through the real binary: a UTF-8
envelope and UTF-8 headers from smtplib's SMTPUTF8 client into a Maildir
named by the UTF-8 local part, relayed to a next hop that offers SMTPUTF8
(aiosmtpd with it enabled), and refused for a next hop that does not: that
recipient fails with a DSN (5.6.7), never a silent downgrade. Without the
SMTPUTF8 parameter a UTF-8 address is refused at MAIL/RCPT."""
import smtplib

from aiosmtpd.controller import Controller

from conftest import Raw, Recorder, Server, config, free_port
from peers import wait_for

SENDER = "sénder@localhost"
LOCAL = "jösé"


def message(subject="Grüße aus Köln"):
    return (f"From: Sénder <{SENDER}>\r\nTo: {LOCAL}@localhost\r\nSubject: {subject}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\nHallo — ünïcödé body\r\n").encode()


class Hop:
    def __init__(self, smtputf8):
        self.port = free_port()
        self.recorder = Recorder()
        self.controller = Controller(self.recorder, hostname="127.0.0.1", port=self.port,
                                     enable_SMTPUTF8=smtputf8, decode_data=False)
        self.controller.start()

    def stop(self):
        self.controller.stop()


def wait(condition, timeout=30):
    value = wait_for(condition, timeout)
    assert value, "timed out"
    return value


def start(tmp_path, extra=""):
    port = free_port()
    return Server(tmp_path, config(port, tmp_path / "data", extra=extra)).start(port)


def test_a_utf8_envelope_and_headers_reach_the_maildir(tmp_path):
    server = start(tmp_path)
    try:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as s:
            s.ehlo("client.test")
            assert s.has_extn("smtputf8")
            s.sendmail(SENDER, [f"{LOCAL}@localhost"], message(), mail_options=["SMTPUTF8"])
        delivered = wait(lambda: server.maildir(LOCAL))
        data = delivered[0].read_bytes()
        assert "Subject: Grüße aus Köln".encode() in data, data
        assert "ünïcödé body".encode() in data
        assert f"Return-Path: <{SENDER}>".encode() in data, data[:300]
        # RFC 6531 §3.7.3 registers UTF8SMTP (and UTF8SMTPS, UTF8SMTPA, UTF8SMTPSA).
        assert b"with UTF8SMTP id" in data, data[:600]
    finally:
        server.stop()


def test_without_the_parameter_a_utf8_address_is_refused(tmp_path):
    server = start(tmp_path)
    try:
        raw = Raw(server.port)
        raw.reply()
        assert raw.cmd(b"EHLO client.test")[0] == 250
        # RFC 6531 §3.5: 553 5.6.7.
        code, text = raw.cmd(f"MAIL FROM:<{SENDER}>".encode())
        assert (code, text[4:9]) == (553, b"5.6.7"), text
        assert raw.cmd(b"MAIL FROM:<a@example.org>")[0] == 250
        code, text = raw.cmd(f"RCPT TO:<{LOCAL}@localhost>".encode())
        assert (code, text[4:9]) == (553, b"5.6.7"), text
        raw.cmd(b"QUIT")
    finally:
        server.stop()


def test_relay_to_a_next_hop_with_and_without_smtputf8(tmp_path):
    with_utf8, without = Hop(True), Hop(False)
    routes = (f'[[delivery.route]]\ndomain = "utf8.example"\nnext_hop = "127.0.0.1:{with_utf8.port}"\n'
              f'[[delivery.route]]\ndomain = "ascii.example"\nnext_hop = "127.0.0.1:{without.port}"\n')
    server = start(tmp_path, extra=routes)
    try:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as s:
            s.sendmail(SENDER, ["ünï@utf8.example", "plain@ascii.example"], message("zwei Wege"),
                       mail_options=["SMTPUTF8"])
        got = wait(lambda: with_utf8.recorder.messages)
        assert got[0].mail_from == SENDER and got[0].rcpt_tos == ["ünï@utf8.example"], got[0]
        assert "SMTPUTF8" in [o.upper() for o in got[0].mail_options], got[0].mail_options
        assert "Subject: zwei Wege".encode() in got[0].content
        # The other hop cannot take a UTF-8 envelope: a bounce, not a downgrade.
        bounce = wait(lambda: server.maildir("sénder"), timeout=60)
        dsn = bounce[0].read_bytes()
        assert b"plain@ascii.example" in dsn and b"5.6.7" in dsn, dsn
        assert without.recorder.messages == []
    finally:
        server.stop()
        with_utf8.stop()
        without.stop()

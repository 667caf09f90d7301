import smtplib

import pytest

from conftest import Raw, Sink, free_port, strip_trace

TRICKS = [
    b"<user%example.test@localhost>",
    b"<example.test!user@localhost>",
    b"<@localhost:user@example.test>",
    b'<"user@example.test"@localhost>',
    b"<user@example.test.>",
    b"<user@EXAMPLE.TEST>",
    b"<user@[127.0.0.1]>",
    b"<user@example.test@localhost>",
    b"<user@example.test>",
]


@pytest.mark.parametrize("rcpt", TRICKS)
def test_untrusted_client_cannot_relay(sluice, rcpt):
    sink_port = free_port()
    server = sluice(extra=f'[[delivery.route]]\ndomain = "example.test"\nnext_hop = "127.0.0.1:{sink_port}"\n')
    sink = Sink(sink_port).start()
    try:
        raw = Raw(server.port, source="127.0.0.2")
        assert raw.reply()[0] == 220
        assert raw.cmd(b"EHLO attacker.test")[0] == 250
        assert raw.cmd(b"MAIL FROM:<a@attacker.test>")[0] == 250
        code, text = raw.cmd(b"RCPT TO:" + rcpt)
        assert code in (501, 553, 554), text
        if code == 554:
            assert b"5.7.1" in text
        assert raw.cmd(b"DATA")[0] in (503, 554)
        raw.close()
        assert sink.messages == []
    finally:
        sink.stop()


def test_trusted_client_relays_to_next_hop(sluice):
    sink_port = free_port()
    server = sluice(extra=f'[[delivery.route]]\ndomain = "example.test"\nnext_hop = "127.0.0.1:{sink_port}"\n')
    sink = Sink(sink_port).start()
    try:
        body = b"Subject: relayed\r\n\r\nhello there\r\n"
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as smtp:
            assert smtp.sendmail("a@example.org", ["user@example.test"], body) == {}
        messages = sink.wait(1)
        assert len(messages) == 1
        assert messages[0].rcpt_tos == ["user@example.test"]
        assert strip_trace(messages[0].original_content.replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n")) == body
    finally:
        sink.stop()


def test_next_hop_connection_is_reused(sluice):
    sink_port = free_port()
    server = sluice(extra=f'[[delivery.route]]\ndomain = "example.test"\nnext_hop = "127.0.0.1:{sink_port}"\n')
    sink = Sink(sink_port).start()
    try:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as smtp:
            for i in range(3):
                smtp.sendmail("a@example.org", ["user@example.test"], b"Subject: %d\r\n\r\nx\r\n" % i)
                assert len(sink.wait(i + 1)) == i + 1
        assert len(set(sink.peers)) == 1, sink.peers
    finally:
        sink.stop()

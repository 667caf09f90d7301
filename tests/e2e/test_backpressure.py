"""MAIL FROM is refused with 452 4.3.1 when the spool's filesystem has less
free space than [queue] min_free_space."""
import smtplib

from conftest import Raw


def test_mail_is_refused_when_free_space_is_below_the_minimum(sluice):
    # No filesystem here has a petabyte free.
    server = sluice(extra='min_free_space = "1000TB"')
    raw = Raw(server.port)
    assert raw.reply()[0] == 220
    assert raw.cmd(b"EHLO client.test")[0] == 250
    code, text = raw.cmd(b"MAIL FROM:<a@example.org>")
    assert (code, text) == (452, b"452 4.3.1 Insufficient system storage")
    # The session goes on: the client may retry, or quit politely.
    assert raw.cmd(b"RCPT TO:<user@localhost>")[0] == 503
    assert raw.cmd(b"QUIT")[0] == 221
    raw.close()
    assert server.maildir("user") == []


def test_mail_is_accepted_with_the_default_minimum(sluice):
    server = sluice()
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as smtp:
        assert smtp.sendmail("a@example.org", ["user@localhost"], b"Subject: ok\r\n\r\nhi\r\n") == {}

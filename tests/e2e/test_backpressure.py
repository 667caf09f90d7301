"""MAIL FROM is refused with 452 4.3.1 when the spool's filesystem has less
free space than [queue] min_free_space, or fewer free inodes than
min_free_inodes."""
import os
import smtplib

import pytest

from conftest import Raw


def assert_mail_refused_for_storage(server):
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


def test_mail_is_refused_when_free_space_is_below_the_minimum(sluice):
    # No filesystem here has a petabyte free.
    assert_mail_refused_for_storage(sluice(extra='min_free_space = "1000TB"'))


def test_mail_is_accepted_with_the_default_minimum(sluice):
    server = sluice()
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as smtp:
        assert smtp.sendmail("a@example.org", ["user@localhost"], b"Subject: ok\r\n\r\nhi\r\n") == {}


def test_mail_is_refused_when_free_inodes_are_below_the_minimum(sluice):
    # No filesystem here has a trillion free inodes; one without an inode
    # table (btrfs) is not checked, so the test has nothing to show there.
    if os.statvfs("/var/tmp").f_files == 0:
        pytest.skip("the filesystem has no fixed inode table")
    assert_mail_refused_for_storage(sluice(extra="min_free_space = 0\nmin_free_inodes = 1000000000000"))

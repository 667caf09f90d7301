import smtplib
import threading
import time

import pytest

from conftest import Raw, fixture


def bad_plugin(kind, on_error="tempfail"):
    return f"""
[plugins.bad]
path = "{fixture(kind)}"
on_error = "{on_error}"
timeout = "200ms"
memory = "16MiB"
[plugins.bad.config]
stage = "rcpt"
"""


def try_rcpt(port):
    raw = Raw(port)
    raw.reply()
    raw.cmd(b"EHLO client.test")
    raw.cmd(b"MAIL FROM:<a@example.org>")
    started = time.time()
    reply = raw.cmd(b"RCPT TO:<bob@localhost>")
    raw.close()
    return reply, time.time() - started


@pytest.mark.parametrize("kind", ["fixture_loop", "fixture_trap", "fixture_oom"])
def test_faulty_plugin_costs_a_451_and_others_keep_working(sluice, kind):
    server = sluice(rcpt='["relay", "bad"]', extra=bad_plugin(kind))
    results = []

    def good_sender():
        for _ in range(5):
            with smtplib.SMTP("127.0.0.1", server.port, timeout=20) as smtp:
                smtp.ehlo()
                smtp.mail("a@example.org")
                results.append(smtp.noop()[0])

    worker = threading.Thread(target=good_sender)
    worker.start()
    for _ in range(3):
        (code, text), elapsed = try_rcpt(server.port)
        assert code == 451 and b"4.3.0" in text, text
        assert elapsed < 5
    worker.join(60)
    assert results == [250] * 5
    assert server.proc.poll() is None


def test_on_error_skip_continues_the_chain(sluice):
    server = sluice(rcpt='["bad", "relay"]', extra=bad_plugin("fixture_trap", "skip"))
    (code, _), _ = try_rcpt(server.port)
    assert code == 250


def test_on_error_reject_refuses(sluice):
    server = sluice(rcpt='["relay", "bad"]', extra=bad_plugin("fixture_trap", "reject"))
    (code, _), _ = try_rcpt(server.port)
    assert 500 <= code < 600

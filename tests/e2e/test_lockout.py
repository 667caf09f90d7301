"""The AUTH lockout under concurrency, through the real binary over TLS:
attempts for one user that arrive at once are counted before their
passwords are checked, so at most max_failures argon2 checks run
(`sluice_auth_verifications_total`)."""
import threading
from collections import Counter

import pytest

from conftest import free_port
from test_auth import ALICE, plain
from test_metrics import scrape, value
from tlsenv import TlsEnv, TlsRaw

VERIFICATIONS = "sluice_auth_verifications_total"
WRONG = "wrong-password-123"


@pytest.fixture
def nodes(tmp_path):
    """Servers with a submission listener and a TCP admin endpoint, each in
    its own directory; returns (env, admin port)."""
    started = []

    def start(extra=""):
        directory = tmp_path / f"node{len(started)}"
        directory.mkdir()
        admin = free_port()
        e = TlsEnv(directory, extra=f'[admin]\naddress = "127.0.0.1:{admin}"\n' + extra)
        started.append(e)
        e.add_user(*ALICE)
        return e, admin

    yield start
    for e in started:
        e.stop()


def lockout(max_failures):
    return f'[auth]\nmax_failures = {max_failures}\nlockout = "10m"\n'


def greeted(port, source="127.0.0.1"):
    raw = TlsRaw(port, source=source)
    assert raw.reply()[0] == 220
    raw.cmd(b"EHLO client.test")
    assert raw.cmd(b"STARTTLS")[0] == 220
    raw.starttls()
    assert raw.cmd(b"EHLO client.test")[0] == 250
    return raw


def verifications(admin):
    return value(scrape(admin), VERIFICATIONS) or 0


def all_at_once(sessions, password):
    """Sends one AUTH on every session at the same moment; the replies."""
    barrier = threading.Barrier(len(sessions))
    replies = [None] * len(sessions)

    def attempt(i):
        barrier.wait(timeout=60)
        replies[i] = sessions[i].cmd(b"AUTH PLAIN " + plain(ALICE[0], password))

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(len(sessions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(r is not None for r in replies), replies
    return replies


def test_forty_concurrent_wrong_attempts_check_at_most_max_failures(nodes):
    e, admin = nodes(lockout(5))
    sessions = [greeted(e.submission) for _ in range(40)]
    replies = all_at_once(sessions, WRONG)
    codes = Counter(code for code, _ in replies)
    checked = verifications(admin)
    # Only checked attempts get 535; the rest are refused unchecked with
    # the client's lockout reply.
    assert 1 <= checked <= 5, (checked, codes)
    assert codes == {535: checked, 454: 40 - checked}, codes
    # Locked: the right password is refused too, from this client (454)
    # and, the user being locked, from another address (535), unchecked.
    assert greeted(e.submission).cmd(b"AUTH PLAIN " + plain(*ALICE))[0] == 454
    code, text = greeted(e.submission, source="127.0.0.2").cmd(b"AUTH PLAIN " + plain(*ALICE))
    assert (code, text[4:9]) == (535, b"5.7.8"), text
    assert verifications(admin) == checked
    e.wait_log("user locked out")

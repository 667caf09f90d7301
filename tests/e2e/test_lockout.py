"""The AUTH lockout under concurrency, through the real binary over TLS:
attempts for one user that arrive at once are counted before their
passwords are checked, so at most max_failures argon2 checks run
(`sluice_auth_verifications_total`); with `[state] backend = "redis"` two
servers on one redis-server share the counts; with Redis unreachable each
server counts on its own and says so."""
import threading
import time
from collections import Counter

import pytest

from conftest import free_port
from test_auth import ALICE, plain
from test_metrics import scrape, value
from test_redis_state import redis, redis_state  # noqa: F401 - redis is a fixture
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


def test_two_servers_on_one_redis_share_the_lockout(redis, nodes):
    r = redis()
    state = redis_state(r.url)
    (a, admin_a), (b, admin_b) = nodes(lockout(5) + state), nodes(lockout(5) + state)
    # 30 attempts at once, spread over both servers.
    sessions = [greeted(a.submission if i % 2 else b.submission) for i in range(30)]
    replies = all_at_once(sessions, WRONG)
    checked = verifications(admin_a) + verifications(admin_b)
    assert 1 <= checked <= 5, (checked, replies)
    assert Counter(code for code, _ in replies) == {535: checked, 454: 30 - checked}
    # Both servers refuse the right password now, unchecked.
    for e in (a, b):
        code, text = greeted(e.submission, source="127.0.0.2").cmd(b"AUTH PLAIN " + plain(*ALICE))
        assert (code, text[4:9]) == (535, b"5.7.8"), text
    assert verifications(admin_a) + verifications(admin_b) == checked
    # Refused attempts count nothing, so 127.0.0.2 has no key.
    keys = sorted(r.keys("*"))
    assert keys == [b"sluice-test::lockout:client:127.0.0.1",
                    b"sluice-test::lockout:user:alice@example.org"], keys


def test_a_failure_on_one_server_counts_on_the_other(redis, nodes):
    r = redis()
    state = redis_state(r.url)
    (a, _), (b, admin_b) = nodes(lockout(2) + state), nodes(lockout(2) + state)
    for source in ("127.0.0.2", "127.0.0.3"):
        assert greeted(a.submission, source).cmd(b"AUTH PLAIN " + plain(ALICE[0], WRONG))[0] == 535
    # b has seen no failure itself.
    assert greeted(b.submission, "127.0.0.4").cmd(b"AUTH PLAIN " + plain(*ALICE))[0] == 535
    assert verifications(admin_b) == 0
    b.wait_log("user locked out")


def test_success_on_one_server_releases_its_place_on_both(redis, nodes):
    r = redis()
    state = redis_state(r.url)
    (a, _), (b, _) = nodes(lockout(2) + state), nodes(lockout(2) + state)
    assert greeted(a.submission).cmd(b"AUTH PLAIN " + plain(ALICE[0], WRONG))[0] == 535
    assert greeted(b.submission).cmd(b"AUTH PLAIN " + plain(*ALICE))[0] == 235
    # The success cleared the user's failure and gave the client's place
    # back: one more wrong attempt does not lock either.
    assert greeted(b.submission, "127.0.0.2").cmd(b"AUTH PLAIN " + plain(ALICE[0], WRONG))[0] == 535
    assert greeted(a.submission, "127.0.0.3").cmd(b"AUTH PLAIN " + plain(*ALICE))[0] == 235


def test_unreachable_redis_falls_back_to_each_servers_own_counts(nodes):
    e, admin = nodes(lockout(3) + redis_state(f"redis://127.0.0.1:{free_port()}"))
    raw = greeted(e.submission)
    for _ in range(3):
        code, text = raw.cmd(b"AUTH PLAIN " + plain(ALICE[0], WRONG))
        assert (code, text[4:9]) == (535, b"5.7.8"), text
    code, text = raw.cmd(b"AUTH PLAIN " + plain(*ALICE))
    assert (code, text[4:9]) == (454, b"4.7.0"), text
    assert verifications(admin) == 3
    assert value(scrape(admin), "sluice_auth_lockout_fallbacks_total") == 4
    e.wait_log("AUTH lockout counted on this node alone")
    # Logged when the fallback starts, not once per attempt.
    assert e.log().count("counted on this node alone") == 1


def test_redis_back_shares_the_counts_again(redis, nodes):
    port = free_port()
    state = redis_state(f"redis://127.0.0.1:{port}")
    e, admin = nodes(lockout(2) + state)
    assert greeted(e.submission).cmd(b"AUTH PLAIN " + plain(ALICE[0], WRONG))[0] == 535
    assert value(scrape(admin), "sluice_auth_lockout_fallbacks_total") == 1
    r = redis(port)
    # Counting moves to Redis once it answers (reconnects are lazy).
    deadline = time.time() + 30
    while time.time() < deadline and not r.keys("sluice-test::lockout:*"):
        greeted(e.submission, "127.0.0.2").cmd(b"AUTH PLAIN " + plain(ALICE[0], WRONG))
        time.sleep(0.1)
    assert r.keys("sluice-test::lockout:user:*"), "lockout never counted in Redis"
    e.wait_log("AUTH lockout counts shared through redis again")

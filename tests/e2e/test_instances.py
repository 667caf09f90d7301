"""Instance policy: `instances = "per-session"` (a fresh instance and init
per session) versus `"pooled"` (at most pool_size instances, lent to one
session at a time and reused) and `"reused"` (kept for later sessions, at
most pool_size idle, never waited for), counted by
sluice_plugin_instances_total and sluice_plugin_instance_reuses_total."""
import threading
import time
import urllib.request

from conftest import Raw, fixture, free_port


def plugin(admin, policy="", timeout="5s"):
    return f"""
[admin]
address = "127.0.0.1:{admin}"

[plugins.v]
path = "{fixture('fixture_verdict')}"
timeout = "{timeout}"
on_error = "tempfail"
{policy}
[plugins.v.config]
mail = "next"
"""


def instances(admin, metric="sluice_plugin_instances_total"):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(metric + '{plugin="v"} '):
                return int(float(line.rsplit(" ", 1)[1]))
    return 0


def reuses(admin):
    return instances(admin, "sluice_plugin_instance_reuses_total")


def held_sessions(port, count):
    """`count` sessions that each took an instance (MAIL answered)."""
    held = []
    for _ in range(count):
        raw = Raw(port)
        raw.reply()
        raw.cmd(b"EHLO client.test")
        assert raw.cmd(b"MAIL FROM:<a@example.org>")[0] == 250
        held.append(raw)
    return held


def end(sessions):
    for raw in sessions:
        assert raw.cmd(b"QUIT")[0] == 221
        raw.close()


def wait_for(predicate, what):
    deadline = time.monotonic() + 10
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def session_mail(port):
    raw = Raw(port)
    raw.reply()
    raw.cmd(b"EHLO client.test")
    code = raw.cmd(b"MAIL FROM:<a@example.org>")[0]
    raw.cmd(b"QUIT")
    raw.close()
    return code


def run_sessions(port, threads=5, each=6):
    codes = []
    lock = threading.Lock()

    def worker():
        for _ in range(each):
            code = session_mail(port)
            with lock:
                codes.append(code)

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    return codes


def test_per_session_creates_an_instance_per_session(sluice):
    admin = free_port()
    server = sluice(pipeline_extra='mail = ["v"]', extra=plugin(admin))
    codes = run_sessions(server.port)
    assert codes == [250] * 30
    # 30 sessions plus the one that validated the configuration.
    assert instances(admin) == 31
    # A first start: compiled and stored in the component cache.
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as r:
        text = r.read().decode()
    assert 'sluice_plugin_loads_total{plugin="v",cache="stored"} 1' in text, text


def test_pooled_reuses_at_most_pool_size_instances(sluice):
    admin = free_port()
    server = sluice(
        pipeline_extra='mail = ["v"]',
        extra=plugin(admin, 'instances = "pooled"\npool_size = 2'),
    )
    codes = run_sessions(server.port)
    assert codes == [250] * 30
    created = instances(admin)
    assert 1 <= created <= 2, created


def test_exhausted_pool_gets_the_error_policy_then_recovers(sluice):
    admin = free_port()
    server = sluice(
        pipeline_extra='mail = ["v"]',
        extra=plugin(admin, 'instances = "pooled"\npool_size = 1', timeout="300ms"),
    )
    holder = Raw(server.port)
    holder.reply()
    holder.cmd(b"EHLO client.test")
    # The holder's session keeps the only instance until it ends.
    assert holder.cmd(b"MAIL FROM:<a@example.org>")[0] == 250
    assert session_mail(server.port) == 451
    holder.cmd(b"QUIT")
    holder.close()
    assert session_mail(server.port) == 250
    log = (server.log).read_text()
    assert "instance pool exhausted: all 1 instances busy" in log


def test_reused_keeps_instances_for_later_sessions(sluice):
    admin = free_port()
    server = sluice(pipeline_extra='mail = ["v"]', extra=plugin(admin, 'instances = "reused"'))
    codes = run_sessions(server.port)
    assert codes == [250] * 30
    # At most one per concurrent session plus the validating one; the rest
    # of the 30 sessions got a kept instance.
    created = instances(admin)
    assert 1 <= created <= 6, created
    assert reuses(admin) == 30 - (created - 1)


def test_reused_never_waits_and_keeps_at_most_pool_size_idle(sluice):
    admin = free_port()
    server = sluice(
        pipeline_extra='mail = ["v"]',
        extra=plugin(admin, 'instances = "reused"\npool_size = 1', timeout="300ms"),
    )
    # Three sessions at once with one kept instance: the first takes the
    # validating instance, the others get new ones at once (a pooled plugin
    # of size 1 would make them wait and fail).
    first = held_sessions(server.port, 3)
    assert instances(admin) == 3
    end(first)
    wait_for(lambda: reuses(admin) == 1, "first session reused the validating instance")
    # Only one of the three was kept: the next three make two more.
    second = held_sessions(server.port, 3)
    assert instances(admin) == 5
    assert reuses(admin) == 2
    end(second)
    assert "instance pool exhausted" not in server.log.read_text()

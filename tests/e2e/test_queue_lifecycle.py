"""A queued message's life end to end through the real binary: the "*"
smarthost route, a destination's connection cap, expiry after
`queue.max_age` with a bounce to the sender, and a quarantined message
released by the operator and delivered intact."""
import asyncio
import json
import smtplib
import time

from aiosmtpd.controller import Controller

from conftest import Server, Sink, config, free_port, queue
from peers import wait_for


def entries(server):
    result = queue(server, "list", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["entries"]


def wait(condition, timeout=30, what="condition"):
    value = wait_for(condition, timeout)
    assert value, f"{what} not met within {timeout}s"
    return value


def start(tmp_path, extra="", pipeline_extra="", trusted='["127.0.0.1/32"]'):
    port = free_port()
    server = Server(tmp_path, config(port, tmp_path / "data", extra=extra, trusted=trusted,
                                     pipeline_extra=pipeline_extra))
    return server.start(port)


def send(server, sender, recipients, body):
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as s:
        s.sendmail(sender, recipients, body)


def test_the_star_route_takes_every_remote_domain_and_local_mail_stays(tmp_path):
    sink = Sink(free_port()).start()
    server = start(tmp_path, extra=f'[[delivery.route]]\ndomain = "*"\nnext_hop = "127.0.0.1:{sink.port}"\n')
    try:
        send(server, "a@example.org", ["x@one.example", "y@two.example", "postmaster@localhost"],
             "Subject: star\r\n\r\nbody\r\n")
        wait(lambda: sink.messages, what="delivery to the smarthost")
        wait(lambda: server.maildir("postmaster"), what="local delivery")
        # One transaction per destination: the "*" route is one next hop.
        got = sorted(r for m in sink.messages for r in m.rcpt_tos)
        assert got == ["x@one.example", "y@two.example"], got
    finally:
        server.stop()
        sink.stop()


class SlowHop:
    """aiosmtpd whose DATA takes a second, counting sessions in DATA at once."""

    def __init__(self):
        self.port = free_port()
        self.active = self.peak = self.done = 0
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    async def handle_DATA(self, server, session, envelope):
        self.active += 1
        self.peak = max(self.peak, self.active)
        await asyncio.sleep(1)
        self.active -= 1
        self.done += 1
        return "250 OK"

    def stop(self):
        self.controller.stop()


def test_a_destination_gets_at_most_its_connection_cap(tmp_path):
    hop, other = SlowHop(), SlowHop()
    routes = (f'[delivery]\nmax_connections_per_domain = 2\n'
              f'[[delivery.route]]\ndomain = "slow.example"\nnext_hop = "127.0.0.1:{hop.port}"\n'
              f'[[delivery.route]]\ndomain = "other.example"\nnext_hop = "127.0.0.1:{other.port}"\n')
    server = start(tmp_path, extra=routes)
    try:
        for i in range(6):
            send(server, "a@example.org", [f"r{i}@slow.example"], f"Subject: {i}\r\n\r\nbody\r\n")
        send(server, "a@example.org", ["r@other.example"], "Subject: other\r\n\r\nbody\r\n")
        wait(lambda: other.done == 1, what="the other destination's delivery")
        wait(lambda: hop.done == 6, timeout=60, what="six deliveries")
        assert hop.peak == 2, hop.peak
    finally:
        server.stop()
        hop.stop()
        other.stop()


def test_max_age_expires_a_deferred_message_with_a_bounce(tmp_path):
    sink = Sink(free_port(), rcpt_replies={"gone@late.example": "451 4.3.0 try later"}).start()
    # config() puts `extra` right after [queue] retry = ["1s"].
    extra = (f'max_age = "4s"\n'
             f'[[delivery.route]]\ndomain = "late.example"\nnext_hop = "127.0.0.1:{sink.port}"\n')
    server = start(tmp_path, extra=extra)
    try:
        send(server, "sender@localhost", ["gone@late.example"], "Subject: too late\r\n\r\nbody\r\n")
        bounce = wait(lambda: server.maildir("sender"), timeout=60, what="the bounce")
        dsn = bounce[0].read_bytes()
        assert b"Action: failed" in dsn and b"gone@late.example" in dsn, dsn
        assert b"Subject: too late" in dsn, dsn
        wait(lambda: entries(server) == [], what="the expired message to leave the queue")
        assert len(sink.rcpt_seen) >= 2, sink.rcpt_seen
    finally:
        server.stop()
        sink.stop()


QUARANTINE = """
[plugins.content]
path = "builtin:content"

[[plugins.content.config.rule]]
name = "suspicious"
header = "Subject"
pattern = "(?i)suspicious"
action = "quarantine"
"""


def test_a_released_quarantined_message_is_delivered_intact(tmp_path):
    server = start(tmp_path, extra=QUARANTINE, pipeline_extra='data = ["content"]')
    try:
        body = "Subject: a suspicious offer\r\nMessage-ID: <q1@example.org>\r\n\r\n" + "line\r\n" * 500
        send(server, "a@example.org", ["postmaster@localhost"], body)
        listed = wait(lambda: entries(server), what="the quarantined entry")
        assert len(listed) == 1 and "quarantined" in json.dumps(listed[0]), listed
        qid = listed[0]["id"]
        time.sleep(2)
        assert server.maildir("postmaster") == [], "quarantined mail was delivered"
        # Flush does not deliver it; release does.
        queue(server, "flush", qid)
        time.sleep(2)
        assert server.maildir("postmaster") == []
        done = queue(server, "release", qid)
        assert done.returncode == 0, done.stderr
        delivered = wait(lambda: server.maildir("postmaster"), what="delivery after release")
        data = delivered[0].read_bytes()
        assert b"Message-ID: <q1@example.org>" in data and data.count(b"line\r\n") == 500, data[:500]
        wait(lambda: entries(server) == [], what="the released message to leave the queue")
    finally:
        server.stop()

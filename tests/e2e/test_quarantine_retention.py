"""`[queue] quarantine_retention` through the real server: a message that
builtin:content quarantined is removed once it is older than the retention
(and logged with its queue id, age and reason), while mail that is merely
deferred or held by the operator, just as old, stays in the queue."""
import json
import smtplib
import time
import urllib.request

from conftest import Refuser, Server, config, free_port, queue
from peers import wait_for

CONTENT = """
[plugins.content]
path = "builtin:content"

[[plugins.content.config.rule]]
name = "lottery"
body = "(?i)you won the lottery"
action = "quarantine"
"""


def start(tmp_path, refuser_port, retention, admin_port):
    port = free_port()
    route = f'[[delivery.route]]\ndomain = "example.test"\nnext_hop = "127.0.0.1:{refuser_port}"\n'
    admin = f'[admin]\naddress = "127.0.0.1:{admin_port}"\n'
    text = config(port, tmp_path / "data", extra=f'quarantine_retention = "{retention}"\n{route}{admin}{CONTENT}',
                  pipeline_extra='data = ["content"]')
    # Deferred mail is retried only hourly: nothing but the queue keeps it.
    text = text.replace('retry = ["1s"]', 'retry = ["1h"]')
    return Server(tmp_path, text).start(port)


def queue_ok(server, *args):
    result = queue(server, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def states(server):
    return {e["id"]: e["state"] for e in json.loads(queue_ok(server, "list", "--json"))["entries"]}


def expired_metric(admin_port):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    # A counter without labels has no series before its first count.
    return next((float(line.split()[-1]) for line in text.splitlines()
                 if line.startswith("sluice_quarantine_expired_total ")), 0)


def send(server, rcpt, subject, body):
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as smtp:
        smtp.sendmail("alice@example.org", [rcpt], f"Subject: {subject}\r\n\r\n{body}\r\n".encode())


def test_quarantined_mail_is_removed_after_its_retention_and_other_mail_stays(tmp_path):
    refuser_port = free_port()
    refuser = Refuser("127.0.0.1", refuser_port).start()
    admin_port = free_port()
    server = start(tmp_path, refuser_port, "3s", admin_port)
    try:
        send(server, "bob@example.test", "deferred", "see you")
        send(server, "carol@example.test", "held", "see you too")
        # Both deferred, not merely the first: a one-entry list is already truthy.
        deferred = wait_for(lambda: (lambda d: d if len(d) == 2 else None)(
            [i for i, s in states(server).items() if s == "deferred"]))
        assert deferred and len(deferred) == 2, states(server)
        kept_held = deferred[1]
        assert queue_ok(server, "hold", kept_held).strip() == f"{kept_held} held"

        sent = time.monotonic()
        send(server, "bob@localhost", "prize", "Dear friend, you won the lottery!")
        quarantined = [i for i, s in states(server).items() if s == "quarantined"]
        assert len(quarantined) == 1, states(server)
        qid = quarantined[0]
        assert expired_metric(admin_port) == 0

        assert wait_for(lambda: qid not in states(server), timeout=60), states(server)
        print(f"quarantined message gone {time.monotonic() - sent:.1f} s after it was sent (retention 3 s)")
        left = states(server)
        assert left == {deferred[0]: "deferred", kept_held: "held"}, left
        assert server.maildir("bob") == []

        log = server.log.read_text()
        line = next(line for line in log.splitlines() if "removed after its retention" in line)
        assert qid in line and "lottery" in line and "age=" in line, line
        assert expired_metric(admin_port) == 1
        # Past several more sweeps, the rest of the queue is still there.
        time.sleep(3)
        assert states(server) == left
    finally:
        server.stop()
        refuser.stop()


def test_retention_zero_keeps_quarantined_mail(tmp_path):
    refuser_port = free_port()
    server = start(tmp_path, refuser_port, "0s", free_port())
    try:
        send(server, "bob@localhost", "prize", "you won the lottery")
        quarantined = [i for i, s in states(server).items() if s == "quarantined"]
        assert len(quarantined) == 1, states(server)
        # Well past the shortest sweep interval and a one-second retention.
        time.sleep(3)
        assert states(server) == {quarantined[0]: "quarantined"}
        assert "removed after its retention" not in server.log.read_text()
    finally:
        server.stop()

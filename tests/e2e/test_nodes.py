"""Several sluice nodes as one MX: three nodes on 127.0.0.2, 127.0.0.3 and
127.0.0.4 (one port) behind three equal-preference MX records served by the
local DNS server, sharing one real redis-server, fed by a real Postfix that
finds them through that DNS server and picks among them.

Postfix resolves through the C library, which only reads /etc/resolv.conf
and only speaks to port 53: its SMTP client runs chrooted in its queue
directory, whose etc/resolv.conf names a DNS server of this test on port 53
of a loopback address of its own (peers.PostfixMX `nameserver`). The
transport map names `smtp:example.org:PORT`, which is an MX lookup with
the nodes' port, not a fixed next hop.

Under load one node is killed with SIGKILL and started again: every
message is delivered, each as it was sent, and the duplicates are counted
and bounded: each has a copy on the killed node, which either had
delivered it but not yet recorded that (removals after delivery are lazy,
so a kill redelivers them) or had made it durable before its 250 reached
Postfix (which then sent it again). A per-sender rate limit holds across the nodes (N accepted in
total, not 3N), a user locked out on one node is locked out on the
others, and a recipient callout answered for one node is not asked again
by another."""
import base64
import email
import random
import smtplib
import socket
import ssl
import subprocess
import threading
import time
from collections import Counter
from email.message import EmailMessage
from pathlib import Path

import pytest

from conftest import BIN, Server, Sink, config, free_port, suite_config
from dns_server import DnsServer
from peers import PostfixMX, wait_for
from test_metrics import scrape, value
from test_recipients import callout_plugin, codes
from test_redis_state import redis, redis_state  # noqa: F401 - redis is a fixture

NODES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
LOAD = 300
SENDER_LIMIT = 5
MAX_FAILURES = 3
ALICE = ("alice@example.org", "correct-horse-battery")
# Postfix's connections to one destination.
POSTFIX_CONCURRENCY = 6
# Messages one kill may duplicate: the transactions it interrupts and the
# deliveries not yet recorded (a handful; 1 in every run here).
MAX_DUPLICATES = 10


def node_config(address, port, submission, admin, data, name, state, dns_port):
    return suite_config(f"""
[server]
hostname = "{name}.example.org"
node_name = "{name}"
data_dir = "{data}"
reverse_lookup = false

[dns]
nameservers = ["127.0.0.1:{dns_port}"]

[domains]
local = ["example.org"]

[[listener]]
name = "mx"
address = "{address}:{port}"
pipeline = "inbound"

[[listener]]
name = "submission"
address = "{address}:{submission}"
pipeline = "inbound"
tls = "starttls"
auth = "optional"

[admin]
address = "127.0.0.1:{admin}"

[auth]
max_failures = {MAX_FAILURES}
lockout = "10m"

[pipeline.inbound]
rcpt = ["relay"]
data = ["ratelimit"]

[plugins.relay]
path = "builtin:relay"

[plugins.relay.config]
trusted_networks = []

[plugins.ratelimit]
path = "builtin:ratelimit"

[plugins.ratelimit.config]
exempt_networks = []

# A year-long window: the test never straddles its boundary.
[[plugins.ratelimit.config.limit]]
key = "sender"
what = "messages"
max = {SENDER_LIMIT}
window = "366d"

[queue]
retry = ["1s"]
{state}
""")


class Node(Server):
    """A sluice node listening on its own loopback address."""

    def __init__(self, tmp, address, port, state, dns_port):
        self.address, self.name = address, f"node-{address.rsplit('.', 1)[1]}"
        self.submission, self.admin = free_port(), free_port()
        super().__init__(tmp, node_config(address, port, self.submission, self.admin, Path(tmp) / "data",
                                          self.name, state, dns_port))
        self.port = port
        self.config_path = self.tmp / "sluice.toml"

    def start(self):
        self.config_path.write_text(self.config_text)
        self.proc = subprocess.Popen([BIN, "serve", "--config", str(self.config_path)], cwd=self.tmp,
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        assert wait_for(self._greets, 60), f"{self.name} did not greet:\n{self.log.read_text()[-3000:]}"
        return self

    def _greets(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited:\n{self.log.read_text()[-3000:]}")
        try:
            with socket.create_connection((self.address, self.port), timeout=2) as s:
                s.settimeout(5)
                if s.recv(512).startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return True
        except OSError:
            pass
        return False

    def add_user(self, name, password):
        done = subprocess.run([BIN, "user", "add", name, "--config", str(self.config_path), "--password-stdin"],
                              input=password + "\n", capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr

    def delivered(self):
        """Every message file in the node's Maildirs."""
        root = self.data / "mail" / "example.org"
        return [f for f in root.glob("*/*/*") if f.parent.name in ("new", "cur") and f.is_file()] \
            if root.exists() else []


def dns_on_port_53(records):
    """The zone on port 53 of a loopback address no one else uses."""
    for _ in range(20):
        address = f"127.0.53.{random.randint(1, 254)}"
        try:
            return DnsServer(records, port=53, ttl=0, address=address).start()
        except OSError:
            continue
    raise AssertionError("no loopback address with a free port 53")


@pytest.fixture
def cluster(tmp_path, redis):  # noqa: F811 - redis is a fixture
    """Redis, the DNS zone and three nodes; yields (nodes, zone, redis, state)."""
    r = redis()
    state = redis_state(r.url)
    port = free_port()
    records = {"example.org": {"MX": [(10, f"mx{i}.example.org") for i in range(1, 4)]}}
    for i, address in enumerate(NODES, 1):
        records[f"mx{i}.example.org"] = {"A": [address]}
    zone = dns_on_port_53(records)
    nodes = []
    try:
        for address in NODES:
            directory = tmp_path / address
            directory.mkdir()
            nodes.append(Node(directory, address, port, state, zone.port).start())
        yield nodes, zone, r
    finally:
        for n in nodes:
            n.stop()
        zone.stop()


def message(i):
    m = EmailMessage()
    m["From"] = f"load-{i}@example.net"
    m["To"] = f"user{i % 5}@example.org"
    m["Subject"] = f"load {i}"
    m["Message-ID"] = f"<load-{i}@nodes.test>"
    m.set_content(f"message {i}\n" + "".join(f"line {j} of message {i}\n" for j in range(i % 40)))
    return m


def test_postfix_spreads_over_the_nodes_and_loses_nothing_when_one_is_killed(cluster, tmp_path):
    nodes, zone, _ = cluster
    victim = nodes[1]
    postfix = PostfixMX(tmp_path, domain="example.org", starttls=False, nameserver=zone.address, main_extra=f"""
smtp_dns_support_level = enabled
smtp_host_lookup = dns
transport_maps = inline:{{ example.org=smtp:example.org:{victim.port} }}
smtp_destination_concurrency_limit = {POSTFIX_CONCURRENCY}
smtp_connect_timeout = 5s
""")
    sent = {}
    try:
        postfix.start()
        injected = threading.Event()
        halfway = threading.Event()
        errors = []

        def inject():
            try:
                with smtplib.SMTP("127.0.0.1", postfix.port, timeout=30) as client:
                    for i in range(LOAD):
                        m = message(i)
                        client.send_message(m)
                        sent[m["Message-ID"]] = m
                        if i == LOAD // 3:
                            halfway.set()
                        time.sleep(0.01)
            except Exception as e:  # reported by the test thread below
                errors.append(e)
            finally:
                halfway.set()
                injected.set()

        feeder = threading.Thread(target=inject)
        feeder.start()
        assert halfway.wait(120)
        # Killed in the middle of the load, started again a little later.
        victim.kill9()
        time.sleep(2)
        victim.start()
        feeder.join(180)
        assert injected.is_set() and not errors, errors

        def all_delivered():
            ids = Counter()
            for n in nodes:
                for f in n.delivered():
                    ids[email.message_from_bytes(f.read_bytes())["Message-ID"]] += 1
            return ids if set(ids) >= set(sent) and postfix.queue_files() == 0 else None

        ids = wait_for(all_delivered, 180, step=0.5)
        assert ids, (f"delivered {sum(len(n.delivered()) for n in nodes)} of {len(sent)}; postfix queue "
                     f"{postfix.queue_files()}\n{postfix.log()[-3000:]}")
        assert len(sent) == LOAD and set(ids) == set(sent), set(ids) ^ set(sent)
        duplicates = sum(n - 1 for n in ids.values())
        twice = {k for k, v in ids.items() if v > 1}
        where = {k: [n.name for n in nodes for f in n.delivered()
                     if email.message_from_bytes(f.read_bytes())["Message-ID"] == k] for k in twice}
        print(f"delivered {len(ids)} messages, {duplicates} duplicates: {where}")
        assert duplicates <= MAX_DUPLICATES, where
        assert all(victim.name in names for names in where.values()), where

        # Each as sent: the headers Postfix got, and the body line for line
        # (the Maildir keeps the CRLF of the wire).
        for n in nodes:
            for f in n.delivered():
                got = email.message_from_bytes(f.read_bytes())
                want = sent[got["Message-ID"]]
                for field in ("From", "To", "Subject"):
                    assert got[field] == want[field], (f, field)
                assert got.get_payload().replace("\r\n", "\n") == want.get_payload(), f

        # Postfix picked among the MX hosts (each node got mail) and failed
        # over from the dead one.
        per_node = {n.name: len(n.delivered()) for n in nodes}
        print(f"messages per node: {per_node}")
        assert all(per_node.values()), per_node
        assert zone.asked("example.org", "MX") >= 1
        log = postfix.log()
        assert "status=sent" in log
        assert f"{victim.address}]:{victim.port}: Connection refused" in log, log[-3000:]
    finally:
        postfix.stop()


def test_a_sender_limit_holds_across_the_nodes(cluster):
    nodes, _, r = cluster
    codes = []
    for i in range(3 * SENDER_LIMIT):
        n = nodes[i % 3]
        with smtplib.SMTP(n.address, n.port, timeout=30) as client:
            try:
                client.sendmail("limited@example.net", ["bob@example.org"], f"Subject: {i}\r\n\r\nbody {i}\r\n")
                codes.append(250)
            except smtplib.SMTPDataError as e:
                codes.append(e.smtp_code)
    assert Counter(codes) == {250: SENDER_LIMIT, 451: 2 * SENDER_LIMIT}, codes
    # Every node refused some: none counted on its own.
    assert {codes[i] for i in range(len(codes)) if i >= SENDER_LIMIT} == {451}
    assert r.keys("sluice-test:ratelimit:*limited@example.net*"), r.keys("*")


def auth(node, user, password, source="127.0.0.1"):
    """One AUTH PLAIN over STARTTLS; the reply code and text."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with smtplib.SMTP(node.address, node.submission, timeout=30, source_address=(source, 0)) as client:
        client.starttls(context=ctx)
        client.ehlo("client.test")
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        return client.docmd("AUTH", "PLAIN " + token)


def test_a_user_locked_out_on_one_node_is_locked_out_on_the_others(cluster):
    nodes, _, _ = cluster
    for n in nodes:
        n.add_user(*ALICE)
        n.add_user("bob@example.org", "another-long-password")
    a, b, c = nodes
    for _ in range(MAX_FAILURES):
        assert auth(a, ALICE[0], "wrong-password-123")[0] == 535
    # The right password, from other clients, on the other nodes: refused
    # because the user is locked (5.7.8), the password never checked.
    for n, source in ((b, "127.0.0.5"), (c, "127.0.0.6")):
        code, text = auth(n, *ALICE, source=source)
        assert (code, text[:5]) == (535, b"5.7.8"), (n.name, code, text)
    # Another user on the same nodes is not locked.
    assert auth(b, "bob@example.org", "another-long-password", source="127.0.0.7")[0] == 235


def test_node_name_in_queue_listing_and_metrics(cluster):
    nodes, _, _ = cluster
    for n in nodes:
        listing = subprocess.run([BIN, "queue", "list", "--json", "--config", str(n.config_path)],
                                 capture_output=True, text=True, timeout=30)
        assert listing.returncode == 0, listing.stderr
        assert f'"node": "{n.name}"' in listing.stdout, listing.stdout
        assert value(scrape(n.admin), f'sluice_node_info{{node="{n.name}"}}') == 1


def test_redis_stopped_and_started_again(cluster, redis):  # noqa: F811 - redis is a fixture
    nodes, _, r = cluster
    n = nodes[0]
    errors = f'sluice_state_errors_total{{plugin="ratelimit"}}'
    r.stop()

    def send(i):
        with smtplib.SMTP(n.address, n.port, timeout=30) as client:
            client.sendmail(f"outage-{i}@example.net", ["bob@example.org"], f"Subject: {i}\r\n\r\nbody\r\n")

    # Redis gone: the limiter fails open, the failure is counted and logged.
    send(0)
    assert (value(scrape(n.admin), errors) or 0) >= 1
    assert "plugin state unreachable" in n.log.read_text()
    # Redis back on its port: shared again without a restart.
    redis(r.port)
    wait_for(lambda: send(1) or "plugin state shared through redis" in n.log.read_text(), 30, step=0.5)
    assert "plugin state shared through redis" in n.log.read_text(), n.log.read_text()[-2000:]


def test_callout_answers_are_shared_by_the_nodes(tmp_path, redis):  # noqa: F811 - redis is a fixture
    r = redis()
    sink = Sink(free_port(), rcpt_replies={"gone@example.org": "550 5.1.1 mailbox unknown"}).start()
    servers = []
    try:
        for name in ("a", "b"):
            port = free_port()
            directory = tmp_path / name
            directory.mkdir()
            plugin = callout_plugin("smtp", f"127.0.0.1:{sink.port}") + redis_state(r.url)
            text = config(port, directory / "data", rcpt='["recipients", "relay"]', extra=plugin)
            servers.append(Server(directory, text).start(port))
        a, b = servers
        assert codes(a, "alice@example.org", "gone@example.org") == [250, 550]
        assert sink.rcpt_seen == ["alice@example.org", "gone@example.org"]
        # The other node answers from the shared cache: no callout of its own.
        assert codes(b, "alice@example.org", "gone@example.org") == [250, 550]
        assert sink.rcpt_seen == ["alice@example.org", "gone@example.org"]
        assert r.keys("sluice-test:recipients:callout:*"), r.keys("*")
    finally:
        for s in servers:
            s.stop()
        sink.stop()

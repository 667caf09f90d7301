"""A hostile or broken next hop costs its own deliveries, never the others':
tarpits that accept and then go silent, or stop reading in the middle of
DATA, or never answer the final dot; per-attempt caps on MX hosts and
addresses; and `[delivery] ignore_target_hosts` keeping MX-derived targets
off loopback. Everything runs on 127.0.0.0/8 with the real binary."""
import json
import smtplib
import socket
import subprocess
import threading
import time

import pytest
from conftest import BIN, Refuser, Server, Sink, config, free_port


class Tarpit:
    """A next hop that accepts connections and then stops cooperating.

    mode "silent": sends 220, then reads whatever comes and never answers.
    mode "stall_data": answers EHLO, MAIL, RCPT and DATA (354), then stops
    reading, so the client's writes of the message block.
    mode "no_final_reply": answers everything up to 354, reads the message
    to its final dot and never answers it.
    """

    def __init__(self, host, port, mode):
        self.mode = mode
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if mode == "stall_data":
            # Small buffers (inherited by accepted sockets), so the sender
            # blocks after little data.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.bind((host, port))
        self.sock.listen(256)
        self.lock = threading.Lock()
        self.connections = 0
        self.open = 0
        self.max_open = 0
        self.messages_read = 0
        self.stalled = 0
        self.stopping = threading.Event()
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                self.open += 1
                self.max_open = max(self.max_open, self.open)
                self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            conn.settimeout(1)
            conn.sendall(b"220 tarpit ESMTP\r\n")
            if self.mode == "silent":
                self._read_until_closed(conn)
            else:
                self._converse(conn)
        except OSError:
            pass
        finally:
            with self.lock:
                self.open -= 1
            conn.close()

    def _recv(self, conn):
        """Some bytes, b"" once closed, None when stopping."""
        while not self.stopping.is_set():
            try:
                return conn.recv(65536)
            except socket.timeout:
                continue
        return None

    def _read_until_closed(self, conn):
        while True:
            data = self._recv(conn)
            if not data:
                return

    def _converse(self, conn):
        buf = b""
        while True:
            while b"\r\n" not in buf:
                data = self._recv(conn)
                if not data:
                    return
                buf += data
            line, buf = buf.split(b"\r\n", 1)
            verb = line[:4].upper()
            if verb == b"EHLO":
                conn.sendall(b"250-tarpit\r\n250 8BITMIME\r\n")
            elif verb == b"DATA":
                conn.sendall(b"354 go ahead\r\n")
                break
            elif verb == b"QUIT":
                conn.sendall(b"221 bye\r\n")
                return
            else:
                conn.sendall(b"250 ok\r\n")
        if self.mode == "stall_data":
            with self.lock:
                self.stalled += 1
            # Never read again; hold the connection until the client drops it.
            while not self.stopping.is_set():
                try:
                    if conn.recv(1, socket.MSG_PEEK) == b"":
                        return
                except socket.timeout:
                    pass
                time.sleep(0.2)
            return
        while b"\r\n.\r\n" not in buf:
            data = self._recv(conn)
            if not data:
                return
            buf = buf[-4:] + data
        with self.lock:
            self.messages_read += 1
        self._read_until_closed(conn)

    def stop(self):
        self.stopping.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        with self.lock:
            for conn in self.conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture
def peers():
    """Tarpits, sinks, refusers and servers to stop after the test; the
    peers first, so the server's connections to them end at once."""
    started = []
    yield started
    for peer in sorted(started, key=lambda p: isinstance(p, Server)):
        peer.stop()


def start_server(peers, tmp_path, delivery, extra="", retry="1s"):
    port = free_port()
    text = config(port, tmp_path / "data", extra=f"{extra}\n[delivery]\n{delivery}\n")
    text = text.replace('retry = ["1s"]', f'retry = ["{retry}"]')
    server = Server(tmp_path, text)
    peers.append(server)
    return server.start(port)


def routes(**hops):
    return "".join(f'[[delivery.route]]\ndomain = "{d}"\nnext_hop = "127.0.0.1:{p}"\n' for d, p in hops.items())


def send(server, recipients, count=1, size=0):
    body = b"x" * 998 + b"\r\n"
    filler = body * (size // len(body))
    with smtplib.SMTP("127.0.0.1", server.port, timeout=60) as client:
        for i in range(count):
            message = f"From: a@example.org\r\nSubject: {i}\r\n\r\n".encode() + filler + b"end\r\n"
            client.sendmail("a@example.org", recipients, message)


def queue_entries(server):
    result = subprocess.run([BIN, "queue", "list", "--json", "--config", str(server.tmp / "sluice.toml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["entries"]


def wait_for(predicate, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    return predicate()


def deferred_replies(server, address):
    """Last replies of `address`'s deferred recipients, one per message."""
    replies = []
    for entry in queue_entries(server):
        for rcpt in entry["recipients"]:
            if rcpt["address"] == address and rcpt["status"] == "deferred" and rcpt["history"]:
                replies.append(rcpt["history"][-1]["reply"])
    return replies


def tail(server):
    return server.log.read_text()[-4000:]


def test_tarpit_next_hop_holds_only_its_own_slots(peers, tmp_path):
    tarpit_port, sink_port = free_port(), free_port()
    tarpit = Tarpit("127.0.0.1", tarpit_port, "silent")
    peers.append(tarpit)
    sink = Sink(sink_port).start()
    peers.append(sink)
    # The tarpit's replies would come after 120 s: only the caps protect
    # the others here, not the timeouts.
    server = start_server(
        peers, tmp_path,
        'max_connections_per_domain = 2\nmax_concurrent_deliveries = 4\n'
        '[delivery.timeouts]\ngreeting = "120s"\ncommand = "120s"\n',
        extra=routes(**{"tarpit.test": tarpit_port, "good.test": sink_port}))
    # More messages to the tarpit than both caps together.
    send(server, ["victim@tarpit.test"], count=12)
    assert wait_for(lambda: tarpit.connections >= 2), tail(server)
    time.sleep(1)
    send(server, ["user@good.test"], count=5)
    assert len(sink.wait(5, timeout=30)) == 5, tail(server)
    assert all(m.rcpt_tos == ["user@good.test"] for m in sink.messages)
    # The tarpit never got more than its own cap.
    assert tarpit.max_open == 2


def test_a_message_for_a_tarpit_and_another_hop_reaches_the_other_at_once(peers, tmp_path):
    tarpit_port, sink_port = free_port(), free_port()
    tarpit = Tarpit("127.0.0.1", tarpit_port, "silent")
    peers.append(tarpit)
    sink = Sink(sink_port).start()
    peers.append(sink)
    server = start_server(
        peers, tmp_path, '[delivery.timeouts]\ngreeting = "120s"\ncommand = "120s"\n',
        extra=routes(**{"tarpit.test": tarpit_port, "good.test": sink_port}))
    # The tarpit's recipient first: its destination is not waited for.
    send(server, ["victim@tarpit.test", "user@good.test"])
    assert len(sink.wait(1, timeout=30)) == 1, tail(server)
    assert sink.messages[0].rcpt_tos == ["user@good.test"]
    assert wait_for(lambda: tarpit.connections == 1)


def test_silent_next_hop_is_deferred_after_the_command_timeout(peers, tmp_path):
    tarpit_port = free_port()
    tarpit = Tarpit("127.0.0.1", tarpit_port, "silent")
    peers.append(tarpit)
    server = start_server(peers, tmp_path, '[delivery.timeouts]\ncommand = "2s"\n',
                          extra=routes(**{"tarpit.test": tarpit_port}))
    send(server, ["victim@tarpit.test"], count=3)
    replies = wait_for(lambda: len(deferred_replies(server, "victim@tarpit.test")) == 3
                       and deferred_replies(server, "victim@tarpit.test"))
    assert replies, tail(server)
    for reply in replies:
        assert reply.startswith("451 4.4.2 127.0.0.1 [127.0.0.1:"), reply
        assert "timed out after 2s waiting for the reply to EHLO" in reply, reply


def test_attempt_deadline_bounds_a_next_hop_that_answers_nothing(peers, tmp_path):
    tarpit_port = free_port()
    tarpit = Tarpit("127.0.0.1", tarpit_port, "silent")
    peers.append(tarpit)
    server = start_server(peers, tmp_path, '[delivery.timeouts]\ncommand = "10m"\nattempt = "2s"\n',
                          extra=routes(**{"tarpit.test": tarpit_port}))
    send(server, ["victim@tarpit.test"])
    replies = wait_for(lambda: deferred_replies(server, "victim@tarpit.test"))
    assert replies, tail(server)
    assert replies[0].startswith("451 4.4.2 "), replies
    assert "attempt deadline of 2s passed" in replies[0], replies


def test_next_hop_that_stops_reading_during_data(peers, tmp_path):
    tarpit_port, sink_port = free_port(), free_port()
    tarpit = Tarpit("127.0.0.1", tarpit_port, "stall_data")
    peers.append(tarpit)
    sink = Sink(sink_port).start()
    peers.append(sink)
    server = start_server(
        peers, tmp_path,
        'max_connections_per_domain = 1\nmax_concurrent_deliveries = 2\n'
        '[delivery.timeouts]\ndata_block = "2s"\ndata_end = "10m"\nattempt = "10m"\n',
        extra=routes(**{"tarpit.test": tarpit_port, "good.test": sink_port}))
    # Larger than what the socket buffers on both sides can take.
    send(server, ["victim@tarpit.test"], count=2, size=12 << 20)
    assert wait_for(lambda: tarpit.stalled >= 1), tail(server)
    send(server, ["user@good.test"], count=3)
    assert len(sink.wait(3, timeout=30)) == 3, tail(server)
    replies = wait_for(lambda: len(deferred_replies(server, "victim@tarpit.test")) == 2
                       and deferred_replies(server, "victim@tarpit.test"))
    assert replies, tail(server)
    for reply in replies:
        assert reply.startswith("451 4.4.2 "), reply
        assert "timed out after 2s writing the message (the server stopped reading)" in reply, reply


def mx_server(peers, tmp_path, dns_zone, records, smtp_port, delivery="", retry="1s"):
    dns_port = dns_zone(records)
    extra = f'[dns]\nnameservers = ["127.0.0.1:{dns_port}"]\ntimeout = "2s"\n'
    return start_server(peers, tmp_path, f"smtp_port = {smtp_port}\n{delivery}", extra=extra, retry=retry)


TWO_MX = {
    "example.net": {"MX": [(10, "mx1.example.net"), (20, "mx2.example.net")]},
    "mx1.example.net": {"A": ["127.0.0.30"]},
    "mx2.example.net": {"A": ["127.0.0.31"]},
}


def test_a_timeout_before_the_message_moves_on_to_the_next_mx(peers, tmp_path, dns_zone):
    port = free_port()
    peers.append(Tarpit("127.0.0.30", port, "silent"))
    mx2 = Sink(port, host="127.0.0.31").start()
    peers.append(mx2)
    server = mx_server(peers, tmp_path, dns_zone, TWO_MX, port,
                       'ignore_target_hosts = []\n[delivery.timeouts]\ncommand = "2s"\n')
    send(server, ["bob@example.net"])
    assert len(mx2.wait(1, timeout=30)) == 1, tail(server)


def test_no_reply_after_the_final_dot_is_not_offered_to_the_next_mx(peers, tmp_path, dns_zone):
    port = free_port()
    mx1 = Tarpit("127.0.0.30", port, "no_final_reply")
    peers.append(mx1)
    mx2 = Sink(port, host="127.0.0.31").start()
    peers.append(mx2)
    server = mx_server(peers, tmp_path, dns_zone, TWO_MX, port,
                       'ignore_target_hosts = []\n[delivery.timeouts]\ndata_end = "2s"\n')
    send(server, ["bob@example.net"])
    replies = wait_for(lambda: deferred_replies(server, "bob@example.net"))
    assert replies, tail(server)
    assert mx1.messages_read >= 1
    assert replies[0].startswith("451 4.4.2 mx1.example.net [127.0.0.30:"), replies
    assert replies[0].endswith("]: message sent, then timed out after 2s waiting for the reply to the message; "
                              "not offered to another host, it may have arrived"), replies
    # It may have arrived at mx1: mx2 never sees it (no duplicate).
    time.sleep(1)
    assert mx2.messages == []


@pytest.mark.parametrize("max_mx_hosts,max_addresses,expected", [(2, 10, 6), (5, 4, 4)])
def test_mx_hosts_and_addresses_tried_per_attempt_are_capped(peers, tmp_path, dns_zone,
                                                             max_mx_hosts, max_addresses, expected):
    """Four MX hosts of three addresses each, all answering 421."""
    port = free_port()
    records = {"wide.test": {"MX": [(10 * h, f"mx{h}.wide.test") for h in range(1, 5)]}}
    hosts = {}
    refusers = {}
    for h in range(1, 5):
        hosts[h] = [f"127.0.0.{40 + 3 * (h - 1) + a}" for a in range(3)]
        records[f"mx{h}.wide.test"] = {"A": hosts[h]}
        for address in hosts[h]:
            refusers[address] = Refuser(address, port).start()
            peers.append(refusers[address])
    # One attempt only (the next in an hour).
    server = mx_server(peers, tmp_path, dns_zone, records, port,
                       f"ignore_target_hosts = []\nmax_mx_hosts = {max_mx_hosts}\nmax_addresses = {max_addresses}\n",
                       retry="1h")
    send(server, ["carol@wide.test"])
    replies = wait_for(lambda: deferred_replies(server, "carol@wide.test"))
    assert replies and "421 4.3.2 too busy" in replies[0], tail(server)
    tried = {address for address, r in refusers.items() if r.connections}
    assert len(tried) == expected, tried
    assert set(hosts[1]) <= tried and set(hosts[2]) & tried, tried
    assert not tried & set(hosts[3] + hosts[4]), tried
    assert all(refusers[a].connections == 1 for a in tried)
    # Hosts past the caps are not even looked up.
    asked = {str(name).rstrip(".").lower() for name, _ in dns_zone.servers[-1].queries}
    assert "mx3.wide.test" not in asked and "mx4.wide.test" not in asked, asked


LOOPBACK_MX = {
    "example.net": {"MX": [(10, "mx1.example.net")]},
    "mx1.example.net": {"A": ["127.0.0.10"]},
    # No MX: the A record is the implicit MX, filtered alike.
    "implicit.test": {"A": ["127.0.0.12"]},
}


def test_loopback_mx_is_ignored_by_default(peers, tmp_path, dns_zone):
    port = free_port()
    mx1 = Sink(port, host="127.0.0.10").start()
    peers.append(mx1)
    implicit = Sink(port, host="127.0.0.12").start()
    peers.append(implicit)
    server = mx_server(peers, tmp_path, dns_zone, LOOPBACK_MX, port)
    send(server, ["bob@example.net", "carol@implicit.test"])
    replies = wait_for(lambda: len(deferred_replies(server, "bob@example.net")
                                   + deferred_replies(server, "carol@implicit.test")) == 2
                       and (deferred_replies(server, "bob@example.net"), deferred_replies(server, "carol@implicit.test")))
    assert replies, tail(server)
    (mx_reply,), (implicit_reply,) = replies
    assert mx_reply == ("451 4.4.4 no usable mail host for example.net: "
                        "mx1.example.net [127.0.0.10] is in delivery.ignore_target_hosts"), mx_reply
    assert implicit_reply.startswith("451 4.4.4 no usable mail host for implicit.test: "
                                     "implicit.test [127.0.0.12] is in"), implicit_reply
    time.sleep(1)
    assert mx1.messages == [] and implicit.messages == []


def test_loopback_mx_is_used_when_the_filter_is_emptied(peers, tmp_path, dns_zone):
    port = free_port()
    mx1 = Sink(port, host="127.0.0.10").start()
    peers.append(mx1)
    implicit = Sink(port, host="127.0.0.12").start()
    peers.append(implicit)
    server = mx_server(peers, tmp_path, dns_zone, LOOPBACK_MX, port, "ignore_target_hosts = []\n")
    send(server, ["bob@example.net", "carol@implicit.test"])
    assert mx1.wait(1)[0].rcpt_tos == ["bob@example.net"], tail(server)
    assert implicit.wait(1)[0].rcpt_tos == ["carol@implicit.test"], tail(server)


def test_only_the_listed_networks_are_ignored(peers, tmp_path, dns_zone):
    port = free_port()
    zone = {
        "example.net": {"MX": [(10, "mx1.example.net"), (20, "mx2.example.net")]},
        "mx1.example.net": {"A": ["127.0.0.10"]},
        "mx2.example.net": {"A": ["127.0.0.11"]},
    }
    mx1 = Sink(port, host="127.0.0.10").start()
    peers.append(mx1)
    mx2 = Sink(port, host="127.0.0.11").start()
    peers.append(mx2)
    server = mx_server(peers, tmp_path, dns_zone, zone, port, 'ignore_target_hosts = ["127.0.0.10"]\n')
    send(server, ["bob@example.net"])
    assert len(mx2.wait(1)) == 1, tail(server)
    assert mx1.messages == []

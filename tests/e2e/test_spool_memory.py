"""DATA streams into the spool: 30 concurrent sessions each sending 20 MiB
raise the server's resident memory by less than 64 MiB over its idle
baseline, another client's small message is accepted meanwhile, and every
message that got a 250 is delivered intact. With builtin:auth in the data
stage, whose DKIM/DMARC checks need each message whole, the server-wide
`message_memory` budget keeps the growth under the same bound.

The messages are generated line by line while they are sent (the test
holds no copy of them) and compared by SHA-256 with what reaches the
Maildir."""
import hashlib
import smtplib
import socket
import threading
import time
from pathlib import Path

from conftest import strip_trace

SESSIONS = 30
MESSAGE_SIZE = 20 << 20
RSS_GROWTH_LIMIT = 64 << 20
CHUNK = 64 << 10
# Lines of 100 octets with CRLF; none starts with a dot, so nothing is
# dot-stuffed and the bytes on the wire are the bytes stored.
LINE = 100


def vm_rss(pid):
    """Resident set size of `pid` in bytes, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc status")


def message_chunks(n):
    """Message `n`, about MESSAGE_SIZE octets, as chunks of at most CHUNK."""
    head = f"From: load{n}@example.org\r\nTo: user{n}@localhost\r\nSubject: load {n}\r\n\r\n".encode()
    buf = bytearray(head)
    line_no = 0
    total = len(head)
    while total < MESSAGE_SIZE:
        text = f"message {n:02d} line {line_no:09d} ".encode()
        line = text + b"x" * (LINE - 2 - len(text)) + b"\r\n"
        buf += line
        total += len(line)
        line_no += 1
        if len(buf) >= CHUNK:
            yield bytes(buf)
            buf.clear()
    if buf:
        yield bytes(buf)


class Sender(threading.Thread):
    """One SMTP session sending message `n` over a raw socket."""

    def __init__(self, port, n, halfway):
        super().__init__(daemon=True)
        self.port, self.n, self.halfway = port, n, halfway
        self.sha256 = None
        self.reply = None
        self.error = None
        self.signalled = False

    def run(self):
        try:
            self._send()
        except Exception as e:  # reported by the test, not lost in the thread
            self.error = e
        finally:
            self._signal()

    def _signal(self):
        if not self.signalled:
            self.signalled = True
            self.halfway.release()

    def _send(self):
        with socket.create_connection(("127.0.0.1", self.port), timeout=300) as s:
            f = s.makefile("rb")

            def expect(code):
                line = f.readline()
                while line[3:4] == b"-":
                    line = f.readline()
                assert line[:3] == code, line
                return line

            expect(b"220")
            for command, code in [
                (b"EHLO load.test", b"250"),
                (b"MAIL FROM:<load@example.org>", b"250"),
                (f"RCPT TO:<user{self.n}@localhost>".encode(), b"250"),
                (b"DATA", b"354"),
            ]:
                s.sendall(command + b"\r\n")
                expect(code)
            digest = hashlib.sha256()
            sent = 0
            for chunk in message_chunks(self.n):
                s.sendall(chunk)
                digest.update(chunk)
                sent += len(chunk)
                if sent >= MESSAGE_SIZE // 2:
                    self._signal()
            s.sendall(b".\r\n")
            self.sha256 = digest.hexdigest()
            self.reply = f.readline()
            s.sendall(b"QUIT\r\n")


def file_sha256(path, added):
    """SHA-256 of a delivered message without the fields sluice adds."""
    data = path.read_bytes()
    return hashlib.sha256(strip_trace(data, added)).hexdigest()


def test_thirty_sessions_of_twenty_mib_stay_within_64_mib(sluice):
    run_load(sluice(), (b"return-path", b"received"))


def test_messages_checked_whole_share_the_memory_budget(sluice, dns_zone):
    dns_port = dns_zone({
        "example.org": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
        "_dmarc.example.org": {"TXT": ["v=DMARC1; p=none"]},
    })
    server = sluice(
        server_extra='message_memory = "24MiB"',
        pipeline_extra='data = ["auth"]',
        extra=f"""
[plugins.auth]
path = "builtin:auth"
timeout = "60s"

[dns]
nameservers = ["127.0.0.1:{dns_port}"]
timeout = "2s"
attempts = 1
""",
    )
    run_load(server, (b"return-path", b"received", b"authentication-results"))


def run_load(server, added):
    """The load, the RSS bound, and every message checked in its mailbox;
    `added` names the header fields sluice puts on top."""
    pid = server.proc.pid
    # One small message first, so what is set up lazily is part of the baseline.
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as smtp:
        assert smtp.sendmail("a@example.org", ["warm@localhost"], b"Subject: warm\r\n\r\nhi\r\n") == {}
    baseline = vm_rss(pid)

    samples = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            samples.append(vm_rss(pid))
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    halfway = threading.Semaphore(0)
    senders = [Sender(server.port, n, halfway) for n in range(SESSIONS)]
    for sender in senders:
        sender.start()
    # Every session has sent half its message (or failed): all 30 are in DATA.
    for _ in senders:
        assert halfway.acquire(timeout=600)
    with smtplib.SMTP("127.0.0.1", server.port, timeout=60) as smtp:
        assert smtp.sendmail("b@example.org", ["small@localhost"], b"Subject: small\r\n\r\nmeanwhile\r\n") == {}
    for sender in senders:
        sender.join(600)
        assert not sender.is_alive(), f"session {sender.n} did not finish"
    stop.set()
    sampler.join(10)

    failures = [(s.n, s.error, s.reply) for s in senders if s.error or not s.reply.startswith(b"250")]
    assert failures == []
    peak = max(samples)
    growth = peak - baseline
    print(f"\nRSS baseline {baseline >> 20} MiB, peak {peak >> 20} MiB, growth {growth >> 20} MiB "
          f"over {len(samples)} samples")
    assert growth < RSS_GROWTH_LIMIT, f"RSS grew by {growth >> 20} MiB"

    # Every acknowledged message reaches its mailbox intact.
    # `stop` is set by now, so its wait() would not pause: poll on a clock.
    deadline = time.monotonic() + 600
    for sender in senders:
        while True:
            delivered = server.maildir(f"user{sender.n}")
            if delivered or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert len(delivered) == 1, f"message {sender.n} not delivered"
        assert file_sha256(delivered[0], added) == sender.sha256, f"message {sender.n} changed"
    assert len(server.maildir("small")) == 1


def test_a_large_message_is_relayed_byte_for_byte(sluice):
    """SMTP delivery reads the message from the spool and dot-stuffs it a
    piece at a time: lines starting with a dot across many pieces, and an
    8-bit octet only near the end, still arrive as sent."""
    from conftest import Sink, free_port

    sink_port = free_port()
    sink = Sink(sink_port).start()
    try:
        server = sluice(extra=f'[[delivery.route]]\ndomain = "example.test"\nnext_hop = "127.0.0.1:{sink_port}"\n')
        lines = [f".line {i:07d} starts with a dot".encode() if i % 7 == 0 else f"line {i:07d}".encode()
                 for i in range(200_000)]
        message = (b"From: a@example.org\r\nSubject: big\r\n\r\n" + b"\r\n".join(lines)
                   + b"\r\ncaf\xc3\xa9 at the end\r\n")
        with smtplib.SMTP("127.0.0.1", server.port, timeout=60) as smtp:
            assert smtp.sendmail("a@example.org", ["r@example.test"], message) == {}
        received = sink.wait(1, timeout=120)
        assert len(received) == 1
        assert "BODY=8BITMIME" in received[0].mail_options
        assert strip_trace(received[0].original_content) == message
    finally:
        sink.stop()

"""One harness for the end-to-end suite: start the real sluice binary on an
inline TOML config, talk to it with real clients, stop it afterwards."""
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller


BIN = os.environ.get("SLUICE_BIN", "/var/tmp/sluice-target/debug/sluice")
PLUGIN_DIR = Path(os.environ.get("SLUICE_PLUGIN_DIR", "/var/tmp/sluice-target/plugins/wasm32-wasip2/release"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def queue(server, *args):
    """`sluice queue ARGS` against a running test server's configuration."""
    return subprocess.run([BIN, "queue", *args, "--config", str(server.tmp / "sluice.toml")],
                          capture_output=True, text=True, timeout=60)


def fixture(name):
    path = PLUGIN_DIR / f"{name}.wasm"
    assert path.exists(), f"missing fixture plugin {path}"
    return str(path)


def suite_config(text):
    """Two departures from sluice's defaults for the suite's configs:
    `allow_root = true` when it runs as root (as in CI, where sluice
    refuses root without `[server] user`; test_privilege_drop.py covers
    the drop), and Maildir `create_mailboxes = true`, since the tests send
    to names no one created (test_backscatter.py covers the default). A
    config that sets either itself keeps its own."""
    if os.geteuid() == 0 and not re.search(r"(?m)^\s*allow_root\s*=", text):
        if re.search(r"(?m)^\[server\][ \t]*$", text):
            text = re.sub(r"(?m)^\[server\][ \t]*$", "[server]\nallow_root = true", text, count=1)
        else:
            # No top-level keys in a sluice config: a table header first is safe.
            text = "[server]\nallow_root = true\n" + text
    if not re.search(r"(?m)^\[delivery\.maildir\]", text):
        text += "\n[delivery.maildir]\ncreate_mailboxes = true\n"
    return text


class Server:
    def __init__(self, tmp, config, cwd=None, args=None):
        self.tmp = Path(tmp)
        self.data = self.tmp / "data"
        self.port = None
        self.config_text = config
        self.args = args
        self.cwd = cwd or self.tmp
        self.proc = None
        self.log = self.tmp / "server.log"

    def start(self, port):
        self.port = port
        if self.args is None:
            cfg = self.tmp / "sluice.toml"
            cfg.write_text(suite_config(self.config_text))
            args = [BIN, "serve", "--config", str(cfg)]
        else:
            args = [BIN] + self.args
        self.proc = subprocess.Popen(args, cwd=self.cwd, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                    s.settimeout(5)
                    if s.recv(512).startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        return self
            except OSError:
                time.sleep(0.1)
        raise AssertionError("server did not greet within 60 s")

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                return self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait(10)
        return self.proc.returncode if self.proc else None

    def kill9(self):
        self.proc.kill()
        self.proc.wait(10)

    def maildir(self, local, domain="localhost"):
        new = self.data / "mail" / domain / local / "new"
        return sorted(new.iterdir()) if new.exists() else []


def config(port, data, rcpt='["relay"]', extra="", trusted='["127.0.0.1/32"]', server_extra="", pipeline_extra=""):
    return suite_config(f"""
[server]
hostname = "mx.example.test"
data_dir = "{data}"
{server_extra}

[domains]
local = ["localhost", "example.org"]

[[listener]]
name = "mx"
address = "127.0.0.1:{port}"
pipeline = "inbound"

[pipeline.inbound]
rcpt = {rcpt}
{pipeline_extra}

[plugins.relay]
path = "builtin:relay"

[plugins.relay.config]
trusted_networks = {trusted}

[queue]
retry = ["1s"]
{extra}
""")


@pytest.fixture
def sluice(tmp_path):
    servers = []

    def start(**kw):
        port = free_port()
        server = Server(tmp_path, config(port, tmp_path / "data", **kw))
        servers.append(server)
        return server.start(port)

    yield start
    for server in servers:
        server.stop()


class Recorder:
    def __init__(self, rcpt_replies=None):
        self.messages = []
        self.peers = []
        # address -> reply for RCPT; the test may change it while running.
        self.rcpt_replies = rcpt_replies if rcpt_replies is not None else {}
        self.rcpt_seen = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        self.rcpt_seen.append(address)
        reply = self.rcpt_replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.peers.append(session.peer)
        self.messages.append(envelope)
        return "250 OK"


class Sink:
    """A real SMTP server (aiosmtpd) standing in for the next hop."""

    def __init__(self, port, host="127.0.0.1", rcpt_replies=None):
        self.port = port
        self.host = host
        self.recorder = Recorder(rcpt_replies)
        self.controller = Controller(self.recorder, hostname=host, port=port)

    @property
    def rcpt_replies(self):
        return self.recorder.rcpt_replies

    @property
    def rcpt_seen(self):
        return self.recorder.rcpt_seen

    @property
    def peers(self):
        return self.recorder.peers

    @property
    def messages(self):
        return self.recorder.messages

    def start(self):
        self.controller.start()
        return self

    def stop(self):
        self.controller.stop()

    def wait(self, count=1, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline and len(self.messages) < count:
            time.sleep(0.1)
        return self.messages


class Refuser:
    """A server that greets every connection with 421 and hangs up: a
    busy or misbehaving MX."""

    def __init__(self, host, port):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                try:
                    conn.sendall(b"421 4.3.2 too busy, try later\r\n")
                except OSError:
                    pass

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def strip_trace(data: bytes, names=(b"return-path", b"received")) -> bytes:
    """Drops the leading trace header fields sluice prepends."""
    lines = data.split(b"\r\n")
    i = 0
    while i < len(lines):
        name = lines[i].split(b":", 1)[0].lower()
        if name in names:
            i += 1
            while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
                i += 1
        else:
            break
    return b"\r\n".join(lines[i:])


class Raw:
    """A raw SMTP socket for byte-exact protocol tests."""

    def __init__(self, port, source="127.0.0.1"):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
        self.buf = b""

    def send(self, data: bytes):
        self.sock.sendall(data)

    def reply(self, timeout=10):
        self.sock.settimeout(timeout)
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(4096)
                if not chunk:
                    raise ConnectionError(f"closed after {lines!r}")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line)
            if line[3:4] != b"-":
                return int(line[:3]), b"\n".join(lines)

    def cmd(self, data: bytes):
        self.send(data + b"\r\n")
        return self.reply()

    def close(self):
        self.sock.close()


@pytest.fixture
def dns_zone():
    """Starts a local authoritative DNS server (tests/e2e/dns_server.py) on
    the records given, returns its port, and stops it after the test:
    `port = dns_zone({"example.org": {"TXT": ["v=spf1 -all"]}})`. Each call
    starts another server; `dns_zone.servers[-1]` is the last one started."""
    from dns_server import DnsServer

    servers = []

    def start(records, port=0, ttl=60):
        server = DnsServer(records, port=port, ttl=ttl).start()
        servers.append(server)
        return server.port

    start.servers = servers
    yield start
    for server in servers:
        server.stop()


# Real peers (Postfix, Dovecot LMTP, smtp-sink) as fixtures; imported last
# because peers.py builds on Sink and free_port above.
from peers import dovecot_lmtp, postfix_mx, smtp_sink_proc  # noqa: E402,F401

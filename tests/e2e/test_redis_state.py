"""[state] backend = "redis" through the real binary, against a real
redis-server (Debian package redis-server) started here on a free loopback
port with its own directory and no persistence (never the system one):
two sluice servers sharing one Redis share the rate-limit counter; with
Redis down the rate limiter fails open (mail accepted, error logged) and
counts again once Redis is back."""
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import Server, config, free_port
from test_greylist import greylist, rcpt, until_accepted
from test_ratelimit import ratelimit, send


class Redis:
    def __init__(self, tmp, port=None):
        assert shutil.which("redis-server"), "redis-server is missing: install the Debian package redis-server (tests/install-peers.sh)"
        self.port = port or free_port()
        self.dir = Path(tmp) / f"redis-{self.port}"
        self.dir.mkdir(exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                if self.command("PING") == b"+PONG":
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise AssertionError("redis-server did not start")

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    def command(self, *args):
        """One command in RESP; returns the raw first reply line."""
        out = f"*{len(args)}\r\n".encode()
        for a in args:
            a = a.encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(out)
            data = b""
            while not data.endswith(b"\r\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        return data.rstrip(b"\r\n")

    def keys(self, pattern):
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            pat = pattern.encode()
            s.sendall(b"*2\r\n$4\r\nKEYS\r\n$%d\r\n%s\r\n" % (len(pat), pat))
            time.sleep(0.2)
            data = s.recv(65536)
        return [line for line in data.split(b"\r\n") if line and line[:1] not in b"*$"]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def redis(tmp_path):
    servers = []

    def start(port=None):
        server = Redis(tmp_path, port)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def node(tmp_path):
    """A sluice server with its own data dir (several per test)."""
    servers = []

    def start(state, limits, greylist=None):
        port = free_port()
        tmp = tmp_path / f"node{len(servers)}"
        tmp.mkdir()
        if greylist is None:
            plugins = dict(rcpt='["ratelimit", "relay"]', pipeline_extra='data = ["ratelimit"]',
                           extra=ratelimit(limits) + state)
        else:
            plugins = dict(rcpt='["relay", "greylist"]', extra=greylist + state)
        text = config(port, tmp / "data", trusted='["127.0.0.0/8"]', **plugins)
        server = Server(tmp, text)
        servers.append(server)
        return server.start(port)

    yield start
    for server in servers:
        server.stop()


def redis_state(url, prefix="sluice-test:"):
    return f"""
[state]
backend = "redis"
url = "{url}"
key_prefix = "{prefix}"
"""


def test_two_nodes_share_one_counter(redis, node):
    r = redis()
    state = redis_state(r.url)
    a = node(state, [("ip", "messages", 2, "1h")])
    b = node(state, [("ip", "messages", 2, "1h")])
    assert send(a.port)[0] == 250
    assert send(a.port)[0] == 250
    # Node b has seen nothing itself, but the counter is shared.
    code, text = send(b.port)
    assert code == 451 and b"4.7.1" in text and b"try again in" in text, (code, text)
    # Keys are namespaced: key_prefix, then the plugin's name.
    keys = r.keys("*")
    assert keys and all(k.startswith(b"sluice-test:ratelimit:messages:ip:127.0.0.1:") for k in keys), keys


def test_redis_down_fails_open_and_recovers(redis, node):
    r = redis()
    port = r.port
    s = node(redis_state(r.url), [("ip", "messages", 1, "1h")])
    assert send(s.port)[0] == 250
    assert send(s.port)[0] == 451
    r.stop()
    # No counter store: the limit is not applied, the mail goes through.
    code, text = send(s.port)
    assert code == 250, (code, text)
    log = s.log.read_text()
    assert "fail open" in log and "redis" in log, log[-2000:]
    # Redis back (empty): counting resumes without restarting sluice.
    redis(port)
    deadline = time.time() + 30
    over = False
    while time.time() < deadline and not over:
        over = send(s.port)[0] == 451
        time.sleep(0.1)
    assert over, "limit never applied again after Redis came back"


def test_greylist_triplet_seen_by_every_node(redis, node):
    r = redis()
    state = redis_state(r.url)
    a = node(state, None, greylist=greylist(delay='"1s"'))
    b = node(state, None, greylist=greylist(delay='"1s"'))
    code, text = rcpt(a.port)
    assert code == 451 and b"4.7.1" in text, (code, text)
    # The retry reaches the other node, which knows the triplet.
    until_accepted(b.port)
    assert rcpt(a.port)[0] == 250
    keys = r.keys("sluice-test:greylist:*")
    assert any(b"triplet:127.0.0.0/24|alice@example.org|bob@localhost" in k for k in keys), keys


def test_greylist_fails_open_without_redis(node):
    s = node(redis_state(f"redis://127.0.0.1:{free_port()}"), None, greylist=greylist(delay='"1h"'))
    assert rcpt(s.port)[0] == 250
    assert "greylist state (fail open)" in s.log.read_text()


def test_unreachable_redis_at_start_does_not_stop_mail(node):
    # Nothing listens on this port: sluice starts anyway and fails open.
    s = node(redis_state(f"redis://127.0.0.1:{free_port()}"), [("ip", "messages", 0, "1h")])
    assert send(s.port)[0] == 250


def test_bad_state_config_names_key_and_line(tmp_path):
    from conftest import BIN

    cfg = tmp_path / "bad.toml"
    cfg.write_text(config(free_port(), tmp_path / "data") + '\n[state]\nbackend = "redis"\nurl = "http://x"\n')
    out = subprocess.run([BIN, "check-config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "state.url" in out.stderr + out.stdout, out

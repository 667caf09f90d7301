"""Per-client caps and IPv6: an IPv4 client reaching a dual-stack listener
(seen as ::ffff:127.0.0.1) is the same client as on an IPv4 listener; a
client over ::1 is capped and locked out per /64 (`[server] ipv6_prefix`).
Only loopback: a listener on ::ffff:127.0.0.1 takes IPv4 loopback
connections through an IPv6 socket, one on ::1 IPv6 loopback ones."""
import socket
import time

import pytest

from conftest import Raw, config, free_port, Server
from test_auth import ALICE, plain
from tlsenv import TlsEnv, TlsRaw


def free_port6():
    """A free port on ::1 (the suite's machines have IPv6 loopback)."""
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        return s.getsockname()[1]


class Raw6(TlsRaw):
    """A raw SMTP socket from ::1 to ::1."""

    def __init__(self, port):
        self.sock = socket.create_connection(("::1", port), timeout=10)
        self.buf = b""


@pytest.fixture
def server(tmp_path):
    started = []

    def start(text, port):
        s = Server(tmp_path, text)
        started.append(s)
        return s.start(port)

    yield start
    for s in started:
        s.stop()


def test_mapped_ipv4_shares_the_cap_with_ipv4(server, tmp_path):
    port, mapped = free_port(), free_port()
    extra = f'[[listener]]\nname = "dual"\naddress = "[::ffff:127.0.0.1]:{mapped}"\npipeline = "inbound"\n'
    s = server(config(port, tmp_path / "data", server_extra="max_connections_per_ip = 2", extra=extra), port)
    time.sleep(0.5)  # the harness's readiness probe must have left first
    first, second = Raw(port), Raw(mapped)
    assert first.reply()[0] == 220 and second.reply()[0] == 220
    # The same 127.0.0.1 whichever socket family the listener has.
    for p in (port, mapped):
        code, text = Raw(p).reply()
        assert code == 421 and b"4.7.0" in text, (p, text)
    other = Raw(mapped, source="127.0.0.3")
    assert other.reply()[0] == 220
    assert "connection refused: limit reached" in s.log.read_text()


def test_ipv6_loopback_client_is_capped_and_locked_out_per_64(tmp_path):
    submission = free_port6()
    listener = (f'[[listener]]\nname = "v6"\naddress = "[::1]:{submission}"\npipeline = "inbound"\n'
                'tls = "starttls"\nauth = "optional"\n')
    e = TlsEnv(tmp_path, extra='[auth]\nmax_failures = 2\nlockout = "10m"\n' + listener,
               server_extra="max_connections_per_ip = 3")
    try:
        e.add_user(*ALICE)
        first, second = Raw6(submission), Raw6(submission)
        assert first.reply()[0] == 220 and second.reply()[0] == 220
        first.cmd(b"EHLO client.test")
        assert first.cmd(b"STARTTLS")[0] == 220
        first.starttls()
        first.cmd(b"EHLO client.test")
        for _ in range(2):
            assert first.cmd(b"AUTH PLAIN " + plain(ALICE[0], "wrong-password-123"))[0] == 535
        code, text = first.cmd(b"AUTH PLAIN " + plain(*ALICE))
        assert (code, text[4:9]) == (454, b"4.7.0"), text
        # The lockout names the network it counted the client in.
        e.wait_log("counted_as=::/64")
        third = Raw6(submission)
        assert third.reply()[0] == 220
        code, text = Raw6(submission).reply()
        assert code == 421 and b"4.7.0" in text, text
        # IPv4 loopback is another client.
        raw = TlsRaw(e.submission)
        assert raw.reply()[0] == 220
    finally:
        e.stop()

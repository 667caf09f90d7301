"""Per-client caps and IPv6: an IPv4 client reaching a dual-stack listener
(seen as ::ffff:127.0.0.1) is the same client as on an IPv4 listener.
Only loopback: a listener on ::ffff:127.0.0.1 takes IPv4 loopback
connections through an IPv6 socket."""
import time

import pytest

from conftest import Raw, Server, config, free_port


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

import time

from conftest import Raw


def test_connections_per_client_ip_are_capped(sluice):
    server = sluice(server_extra="max_connections_per_ip = 2")
    time.sleep(0.5)  # the harness's readiness probe must have left first
    first, second = Raw(server.port), Raw(server.port)
    assert first.reply()[0] == 220 and second.reply()[0] == 220
    third = Raw(server.port)
    code, text = third.reply()
    assert code == 421 and b"4.7.0" in text
    # Another client address is not affected.
    other = Raw(server.port, source="127.0.0.3")
    assert other.reply()[0] == 220
    first.close()
    time.sleep(0.5)
    again = Raw(server.port)
    assert again.reply()[0] == 220


def test_idle_client_times_out_with_421(sluice):
    server = sluice(server_extra='[server.timeouts]\ncommand = "1s"')
    raw = Raw(server.port)
    assert raw.reply()[0] == 220
    started = time.time()
    code, text = raw.reply(timeout=10)
    assert code == 421 and b"4.4.2" in text
    assert time.time() - started < 8

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


def test_refused_recipients_reach_the_error_limit(sluice):
    # 127.0.0.2 is not in trusted_networks: every foreign recipient is
    # relaying denied, and each refusal counts as an error, so one
    # connection cannot probe recipients without limit.
    server = sluice()
    raw = Raw(server.port, source="127.0.0.2")
    assert raw.reply()[0] == 220
    assert raw.cmd(b"EHLO client.test")[0] == 250
    assert raw.cmd(b"MAIL FROM:<a@example.org>")[0] == 250
    codes = []
    for i in range(40):
        if not raw.buf:
            try:
                raw.send(b"RCPT TO:<user%d@elsewhere.test>\r\n" % i)
            except OSError:
                pass
        try:
            code, _ = raw.reply()
        except ConnectionError:
            break
        codes.append(code)
        if code == 421:
            break
    assert codes == [554] * 20 + [421], codes

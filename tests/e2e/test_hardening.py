"""Hostile clients: talking before the greeting (postscreen's pregreet
test), floods of idle connections from one address, clients that never
read their replies or trickle their message, sessions that stall under
load, control characters and UTF-8 in EHLO, and every SMTP smuggling
end-of-data variant."""
import resource
import select
import socket
import time

import pytest

from conftest import Raw, Server, Sink, config, free_port
from test_metrics import scrape, value


def session(port, source="127.0.0.1"):
    raw = Raw(port, source)
    assert raw.reply()[0] == 220
    return raw


def closed(raw, timeout=10):
    """True when the server closes the connection (after any unread reply)."""
    raw.sock.settimeout(timeout)
    try:
        while True:
            chunk = raw.sock.recv(4096)
            if not chunk:
                return True
            raw.buf += chunk
    except ConnectionResetError:
        return True
    except (socket.timeout, TimeoutError):
        return False


def start(tmp_path, servers, listener_extra="", **kw):
    """A server whose port-25 style listener gets `listener_extra`."""
    port = free_port()
    text = config(port, tmp_path / "data", **kw)
    text = text.replace('pipeline = "inbound"\n', f'pipeline = "inbound"\n{listener_extra}\n', 1)
    server = Server(tmp_path, text)
    servers.append(server)
    return server.start(port)


@pytest.fixture
def servers():
    started = []
    yield started
    for server in started:
        server.stop()


def test_client_talking_before_the_greeting_gets_554_and_is_dropped(tmp_path, servers):
    # Loopback is exempt by default; an empty greet_exempt tests it here.
    admin = free_port()
    server = start(
        tmp_path,
        servers,
        server_extra="greet_exempt = []",
        listener_extra='greet_delay = "2s"',
        extra=f'[admin]\naddress = "127.0.0.1:{admin}"\n',
    )
    talker = Raw(server.port)
    # A whole pipelined batch: the reply must not be lost to a reset when
    # the server closes with the batch unread.
    talker.send(b"EHLO bot.test\r\nMAIL FROM:<spam@bot.test>\r\n" + b"NOOP\r\n" * 3000)
    code, text = talker.reply(timeout=15)
    assert code == 554 and b"5.5.0" in text, text
    assert closed(talker)
    assert b"250" not in talker.buf
    # A client that waits gets the greeting after the delay.
    polite = Raw(server.port)
    assert polite.reply(timeout=15)[0] == 220
    assert polite.cmd(b"EHLO client.test")[0] == 250
    polite.close()
    # Operators see the drops: the talker only, not the polite client.
    assert value(scrape(admin), 'sluice_pregreet_drops_total{listener="mx"}') == 1


def test_loopback_is_exempt_from_the_greeting_delay_by_default(tmp_path, servers):
    server = start(tmp_path, servers, listener_extra='greet_delay = "10s"')
    raw = Raw(server.port)
    # Pipelined before the banner, yet served: the delay does not apply.
    raw.send(b"NOOP\r\n")
    assert raw.reply(timeout=5)[0] == 220
    assert raw.reply(timeout=5)[0] == 250


@pytest.fixture
def many_files():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 1200, "cannot raise RLIMIT_NOFILE"
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_500_idle_connections_from_one_address_are_capped(sluice, many_files):
    # The server inherits the raised descriptor limit.
    server = sluice()
    time.sleep(0.5)  # the readiness probe has left
    idle = []
    for _ in range(500):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.2", 0))
        s.settimeout(10)
        s.connect(("127.0.0.1", server.port))
        idle.append(s)
    # Another client address still gets its banner promptly.
    other = Raw(server.port, source="127.0.0.3")
    code, _ = other.reply(timeout=10)
    assert code == 220
    assert other.cmd(b"EHLO client.test")[0] == 250
    # Of the flood, the default per-address cap (50) got a greeting; the
    # others a 421 and a closed connection.
    greeted = refused = 0
    pending = {s: b"" for s in idle}
    deadline = time.monotonic() + 30
    while pending and time.monotonic() < deadline:
        readable, _, _ = select.select(list(pending), [], [], 1)
        for s in readable:
            try:
                chunk = s.recv(4096)
            except ConnectionResetError:
                chunk = b""
            pending[s] += chunk
            if b"\r\n" in pending[s] or not chunk:
                reply = pending.pop(s)
                if reply.startswith(b"220"):
                    greeted += 1
                elif reply.startswith(b"421"):
                    refused += 1
    assert (greeted, refused) == (50, 450), (greeted, refused, len(pending))
    for s in idle:
        s.close()
    other.close()


@pytest.mark.parametrize("helo", [
    b"EHLO evil\x1b[31m.test",
    b"EHLO a\x00b.test",
    b"EHLO a\x7fb.test",
    "EHLO b\u00fccher.test".encode(),
    b"EHLO a.test\rX-Injected: yes",
    b"EHLO (comment)evil.test",
])
def test_control_characters_and_utf8_in_ehlo_never_reach_headers(sluice, helo):
    sink_port = free_port()
    server = sluice(extra=f'[[delivery.route]]\ndomain = "example.test"\nnext_hop = "127.0.0.1:{sink_port}"\n')
    sink = Sink(sink_port).start()
    try:
        raw = session(server.port)
        code, _ = raw.cmd(helo)
        # Refused as a syntax error: the session goes on with a clean name.
        assert code in (500, 501), code
        assert raw.cmd(b"EHLO client.test")[0] == 250
        assert raw.cmd(b"MAIL FROM:<a@example.org>")[0] == 250
        assert raw.cmd(b"RCPT TO:<user@example.test>")[0] == 250
        assert raw.cmd(b"DATA")[0] == 354
        assert raw.cmd(b"Subject: x\r\n\r\nbody\r\n.")[0] == 250
        raw.close()
        [message] = sink.wait(1)
        head = message.content.split(b"\r\n\r\n", 1)[0]
        assert b"X-Injected" not in head
        assert b"evil" not in head
        assert all(b == 9 or b >= 32 for line in head.split(b"\r\n") for b in line), head
        assert all(b < 128 for b in head), head
        assert b"from client.test (" in head, head
    finally:
        sink.stop()


@pytest.mark.parametrize("command", [
    b"MAIL FROM:<a\x01b@example.org>",
    b"MAIL FROM:<\"a\x1b[31m\"@example.org>",
    "MAIL FROM:<j\u00f6rg@example.org>".encode(),
    b"RCPT TO:<user\x00@example.test>",
    "RCPT TO:<user@b\u00fccher.test>".encode(),
    b"RCPT TO:<user@example.test>\rX-Injected: yes",
])
def test_control_characters_and_utf8_in_addresses_are_refused(sluice, command):
    # Without SMTPUTF8 no non-ASCII address is taken, and none with
    # control characters at all: nothing of them can reach a header.
    server = sluice()
    raw = session(server.port)
    assert raw.cmd(b"EHLO client.test")[0] == 250
    if command.startswith(b"RCPT"):
        assert raw.cmd(b"MAIL FROM:<a@example.org>")[0] == 250
    code, text = raw.cmd(command)
    assert 500 <= code < 600, text
    assert raw.cmd(b"NOOP")[0] == 250


SMUGGLING = [b"\n.\n", b"\n.\r", b"\r.\n", b"\r.\r", b"\n.\r\n", b"\r.\r\n", b"\r\n\x00.\r\n"]


@pytest.mark.parametrize("fake_end", SMUGGLING, ids=lambda b: repr(b)[2:-1])
def test_smuggled_second_transaction_never_becomes_a_message(sluice, fake_end):
    sink_port = free_port()
    server = sluice(extra=f'[[delivery.route]]\ndomain = "example.test"\nnext_hop = "127.0.0.1:{sink_port}"\n')
    sink = Sink(sink_port).start()
    try:
        raw = session(server.port)
        raw.cmd(b"EHLO client.test")
        assert raw.cmd(b"MAIL FROM:<a@example.org>")[0] == 250
        assert raw.cmd(b"RCPT TO:<user@example.test>")[0] == 250
        assert raw.cmd(b"DATA")[0] == 354
        raw.send(b"Subject: smuggle\r\n\r\nbody" + fake_end +
                 b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\n"
                 b"Subject: smuggled\r\n\r\nevil\r\n.\r\n")
        code, text = raw.reply()
        # sluice keeps the whole text as one message: the fake terminator
        # and the hidden commands are message content.
        assert code == 250, text
        # Nothing else answers: the hidden commands were not executed.
        assert raw.cmd(b"NOOP")[0] == 250
        assert raw.cmd(b"QUIT")[0] == 221
        raw.close()
        [message] = sink.wait(1)
        assert message.rcpt_tos == ["user@example.test"]
        assert message.mail_from == "a@example.org"
        assert b"MAIL FROM:<evil@attacker.test>" in message.content
        # A second message would be queued with the first: give it the
        # time to arrive before checking there is none.
        time.sleep(1)
        assert len(sink.messages) == 1
        assert "victim@example.test" not in str([m.rcpt_tos for m in sink.messages])
    finally:
        sink.stop()


def test_stalled_sessions_are_let_go_sooner_under_load(tmp_path, servers):
    # An idle session waits for its command; then 8 of 10 slots fill with
    # sessions inside DATA: "under load" (80%). The idle session, already
    # waiting, gets 421 after command_under_load instead of the 10 minutes
    # of command; so does a session that stops sending its message, and
    # nothing of that message is kept. Those that keep sending are not cut.
    server = start(tmp_path, servers, server_extra=(
        'max_connections = 10\nmax_connections_per_ip = 100\n'
        '[server.timeouts]\ncommand = "10m"\ncommand_under_load = "2s"'))
    time.sleep(0.5)  # the readiness probe has left
    idle = session(server.port)
    busy = []
    for _ in range(8):
        raw = session(server.port)
        for line in (b"EHLO client.test", b"MAIL FROM:<a@example.org>", b"RCPT TO:<postmaster@localhost>"):
            assert raw.cmd(line)[0] == 250, line
        assert raw.cmd(b"DATA")[0] == 354
        raw.send(b"Subject: x\r\n\r\n")
        for earlier in busy:
            earlier.send(b"x")
        busy.append(raw)
    stalled = busy.pop()
    waiting = {idle.sock, stalled.sock}
    deadline = time.monotonic() + 60
    while waiting and time.monotonic() < deadline:
        for raw in busy:
            raw.send(b"x")
        readable, _, _ = select.select(list(waiting), [], [], 0.2)
        waiting -= set(readable)
    for raw in (idle, stalled):
        code, text = raw.reply(timeout=10)
        assert code == 421 and b"4.4.2" in text, text
        assert closed(raw)
    # The sessions that kept sending finish their messages.
    for raw in busy:
        assert raw.cmd(b"\r\n.")[0] == 250
        raw.close()
    time.sleep(1)
    assert server.log.read_text().count("message queued") == len(busy)
    # Without the load, an idle session keeps the full command timeout.
    time.sleep(0.5)
    calm = session(server.port)
    calm.sock.settimeout(3)
    with pytest.raises((socket.timeout, TimeoutError)):
        calm.sock.recv(4096)
    assert calm.cmd(b"NOOP")[0] == 250
    calm.close()


def never_reading(port):
    """A client with a small receive window that pipelines EHLO after EHLO
    and never reads a reply, until the server has stopped taking them for
    a second (its writes are blocked) after at least 1 MiB: the replies
    to that much (8 MiB of EHLO replies) cannot all fit in the socket
    buffers (4 MiB at most here), so a server that is merely slow blocks
    too. Returns the socket and the octets it sent."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    assert s.recv(4096).startswith(b"220")
    storm = b"EHLO storm.test\r\n" * 4096
    s.settimeout(0.25)
    sent = 0
    started = progress = time.monotonic()
    while time.monotonic() - started < 60:
        try:
            sent += s.send(storm)
            progress = time.monotonic()
        except (socket.timeout, TimeoutError):
            if sent >= 1 << 20 and time.monotonic() - progress >= 1:
                break
        except OSError:
            break  # the server already let it go
    return s, sent


def hung_up(sock, timeout=30):
    """True when the server closes the connection; unread replies are
    read and dropped."""
    sock.settimeout(timeout)
    try:
        while sock.recv(1 << 16):
            pass
        return True
    except ConnectionResetError:
        return True
    except (socket.timeout, TimeoutError):
        return False


def test_clients_that_never_read_their_replies_do_not_hold_the_slots(tmp_path, servers):
    # Measured before: 40 such clients filled max_connections = 40 and a
    # new client got 421 for as long as they stayed. Every write now waits
    # at most command (command_under_load under load): then the session is
    # closed, counted and logged.
    admin = free_port()
    server = start(tmp_path, servers, server_extra=(
        'max_connections = 8\nmax_connections_per_ip = 100\n'
        '[server.timeouts]\ncommand = "30s"\ncommand_under_load = "12s"'),
        extra=f'[admin]\naddress = "127.0.0.1:{admin}"\n')
    time.sleep(0.5)  # the readiness probe has left
    filling = time.monotonic()
    stuck = [never_reading(server.port) for _ in range(8)]
    filled_in = time.monotonic() - filling
    assert all(sent > 0 for _, sent in stuck)
    probe = Raw(server.port)
    first = probe.reply()[0]
    probe.close()
    if filled_in < 11:
        # No stuck session can have been let go yet (the earliest goes 12 s
        # after its first blocked write): every slot is theirs.
        assert first == 421, first
    # A new client is greeted once they are let go.
    deadline = time.monotonic() + 60
    while first != 220 and time.monotonic() < deadline:
        time.sleep(0.5)
        probe = Raw(server.port)
        first = probe.reply()[0]
        probe.close()
    assert first == 220
    # Each stuck session is let go in turn (command once the load is
    # gone); reading a stuck socket would unblock it, so wait first.
    series = 'sluice_session_timeouts_total{listener="mx",phase="write"}'
    deadline = time.monotonic() + 60
    while value(scrape(admin), series) != 8 and time.monotonic() < deadline:
        time.sleep(0.5)
    text = scrape(admin)
    assert value(text, series) == 8, text
    assert all(hung_up(sock) for sock, _ in stuck)
    assert server.log.read_text().count("client stalled: closing the session") >= 8


def test_a_trickled_message_is_cut_at_the_data_deadline(tmp_path, servers):
    # A byte every 0.2 s is never idle for data_block, but the message text
    # as a whole has the data deadline: 421, closed, nothing kept.
    server = start(tmp_path, servers, server_extra='[server.timeouts]\ndata = "3s"\ndata_block = "1m"')
    raw = session(server.port)
    for line in (b"EHLO client.test", b"MAIL FROM:<a@example.org>", b"RCPT TO:<postmaster@localhost>"):
        assert raw.cmd(line)[0] == 250, line
    assert raw.cmd(b"DATA")[0] == 354
    raw.send(b"Subject: slow\r\n\r\n")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            raw.send(b"x")
        except OSError:
            break
        readable, _, _ = select.select([raw.sock], [], [], 0.2)
        if readable:
            break
    code, text = raw.reply(timeout=10)
    assert code == 421 and b"4.4.2" in text, text
    assert closed(raw)
    time.sleep(1)
    assert "message queued" not in server.log.read_text()
    assert server.maildir("postmaster") == []

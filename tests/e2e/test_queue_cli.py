"""`sluice queue …` against a running server: list, show, hold, flush,
release, delete, and the failures an operator meets (unknown id, no server)."""
import json
import smtplib
import subprocess
import time

from conftest import BIN, Server, Sink, config, free_port, queue


def start_relay(tmp_path, sink_port):
    """A server relaying example.test to `sink_port`, retrying only hourly so
    that nothing but the operator's flush or release triggers an attempt."""
    port = free_port()
    text = config(port, tmp_path / "data",
                  extra=f'[[delivery.route]]\ndomain = "example.test"\nnext_hop = "127.0.0.1:{sink_port}"\n')
    text = text.replace('retry = ["1s"]', 'retry = ["1h"]')
    return Server(tmp_path, text).start(port)


def listed(server):
    result = queue(server, "list", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def send(server, subject, rcpt="user@example.test"):
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as smtp:
        smtp.sendmail("a@example.org", [rcpt], f"Subject: {subject}\r\n\r\nbody\r\n".encode())


def wait_deferred(server):
    """The id of the only queued message, once its first attempt failed."""
    deadline = time.time() + 30
    while time.time() < deadline:
        entries = listed(server)["entries"]
        if entries and entries[0]["state"] == "deferred":
            return entries[0]["id"]
        time.sleep(0.1)
    raise AssertionError(f"no deferred message: {listed(server)}")


def wait_empty(server):
    deadline = time.time() + 30
    while time.time() < deadline and listed(server)["count"]:
        time.sleep(0.1)
    assert listed(server)["count"] == 0


def test_hold_keeps_a_message_from_flush_and_release_delivers_it(tmp_path):
    sink_port = free_port()
    server = start_relay(tmp_path, sink_port)
    sink = None
    try:
        send(server, "held")
        qid = wait_deferred(server)

        table = queue(server, "list")
        assert table.returncode == 0, table.stderr
        header, row = table.stdout.splitlines()[:2]
        assert header.split() == ["ID", "AGE", "FROM", "RECIPIENTS", "STATE", "NEXT", "LAST", "REPLY"]
        for cell in (qid, "<a@example.org>", "user@example.test", "deferred", "451 4.4.1"):
            assert cell in row, table.stdout
        assert table.stdout.splitlines()[-1] == "1 message"

        entry = listed(server)["entries"][0]
        assert entry["reverse_path"] == "a@example.org"
        assert entry["recipients"][0]["status"] == "deferred"
        assert entry["recipients"][0]["history"][0]["reply"].startswith("451 4.4.1")

        result = queue(server, "hold", qid)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"{qid} held"
        assert listed(server)["entries"][0]["state"] == "held"
        assert " held " in queue(server, "list").stdout

        sink = Sink(sink_port).start()
        result = queue(server, "flush", qid)
        assert result.returncode == 1
        assert "held: release it" in result.stderr
        result = queue(server, "flush")
        assert result.returncode == 0, result.stderr
        assert "1 held or quarantined left alone" in result.stdout
        # Give a wrongly started attempt the time to reach the sink.
        time.sleep(1.5)
        assert sink.messages == []
        assert listed(server)["entries"][0]["state"] == "held"

        show = queue(server, "show", qid)
        assert show.returncode == 0, show.stderr
        for part in (f"id:           {qid}", "state:        held", "from:         <a@example.org>",
                     "  user@example.test  deferred, 1 attempt", "451 4.4.1", "headers:", "  Subject: held"):
            assert part in show.stdout, show.stdout
        shown = json.loads(queue(server, "show", qid, "--json").stdout)
        assert shown["entry"]["id"] == qid
        assert {"name": "Subject", "value": "held"} in shown["headers"]

        result = queue(server, "release", qid)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"{qid} released"
        assert len(sink.wait(1)) == 1
        assert sink.messages[0].rcpt_tos == ["user@example.test"]
        wait_empty(server)
        assert queue(server, "list").stdout == "The queue is empty.\n"
    finally:
        if sink:
            sink.stop()
        server.stop()


def test_flush_attempts_a_deferred_message_now(tmp_path):
    sink_port = free_port()
    server = start_relay(tmp_path, sink_port)
    sink = None
    try:
        send(server, "flushed")
        qid = wait_deferred(server)
        assert listed(server)["entries"][0]["next_attempt"] > time.time() + 600
        sink = Sink(sink_port).start()
        result = queue(server, "flush", qid)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"{qid} is due now"
        # The retry is an hour away: only the flush can deliver it in time.
        assert len(sink.wait(1)) == 1
        wait_empty(server)
    finally:
        if sink:
            sink.stop()
        server.stop()


def test_flush_all_attempts_every_deferred_message(tmp_path):
    sink_port = free_port()
    server = start_relay(tmp_path, sink_port)
    sink = None
    try:
        send(server, "one")
        send(server, "two")
        deadline = time.time() + 30
        while time.time() < deadline:
            entries = listed(server)["entries"]
            if len(entries) == 2 and all(e["state"] == "deferred" for e in entries):
                break
            time.sleep(0.1)
        sink = Sink(sink_port).start()
        result = queue(server, "flush")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("2 message(s) due now"), result.stdout
        assert len(sink.wait(2)) == 2
        wait_empty(server)
    finally:
        if sink:
            sink.stop()
        server.stop()


def test_delete_and_unknown_ids(tmp_path):
    sink_port = free_port()
    server = start_relay(tmp_path, sink_port)
    try:
        send(server, "deleted")
        qid = wait_deferred(server)
        result = queue(server, "delete", qid)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"{qid} deleted"
        assert listed(server) == {"node": "mx.example.test", "count": 0, "entries": []}

        for args in (("delete", qid), ("show", qid), ("hold", qid), ("release", qid), ("flush", qid)):
            result = queue(server, *args)
            assert result.returncode == 1, (args, result)
            assert result.stderr.strip() == f"sluice: no queue entry {qid}", (args, result.stderr)
        result = queue(server, "show", "not-an-id")
        assert result.returncode == 1
        assert 'invalid queue id "not-an-id"' in result.stderr
        assert "panicked" not in result.stderr
    finally:
        server.stop()


def test_no_server_is_exit_2_with_a_clear_message(tmp_path):
    port = free_port()
    data = tmp_path / "data"
    cfg = tmp_path / "sluice.toml"
    cfg.write_text(config(port, data))
    for args in (["list"], ["list", "--json"], ["show", "0123456789abcdef"], ["flush"], ["hold", "0123456789abcdef"]):
        result = subprocess.run([BIN, "queue", *args, "--config", str(cfg)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 2, (args, result)
        assert result.stderr.startswith(
            f"sluice: no sluice server is running: cannot connect to the admin endpoint at {data}/admin.sock: "), result.stderr
        assert "panicked" not in result.stderr and "backtrace" not in result.stderr
        assert result.stdout == ""

    # A socket left by a killed server is not a running server either.
    server = Server(tmp_path, config(port, data)).start(port)
    server.kill9()
    assert (data / "admin.sock").exists()
    result = subprocess.run([BIN, "queue", "list", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result
    assert "no sluice server is running" in result.stderr

    # The next server replaces the stale socket and answers on it.
    server = Server(tmp_path, config(port, data)).start(port)
    try:
        result = subprocess.run([BIN, "queue", "list", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
    finally:
        server.stop()


def test_default_config_finds_the_socket_under_the_working_directory(tmp_path):
    # Without --config the embedded default applies: data_dir = "./data".
    result = subprocess.run([BIN, "queue", "list"], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result
    assert "cannot connect to the admin endpoint at ./data/admin.sock" in result.stderr

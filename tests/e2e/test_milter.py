"""Milter elements with real milters (tests/e2e/milters.py): rspamd
rejecting GTUBE and adding its headers to a clean message; clamav-milter
rejecting (or quarantining, or discarding) an attachment that carries the test signature and passing a
clean one with its headers, its `on_error` when the milter is down or
hangs, in `sluice pipeline test`, and `check-config` on its address; OpenDKIM signing on a submission listener, the signature verified
by dkimpy against the local DNS server; a milter after a Wasm plugin that
already refused is not called; a shadow milter's reject is logged and
counted, not applied."""
import json
import smtplib
import subprocess
import time
import urllib.request
from email.message import EmailMessage

import dkim
import pytest

from conftest import BIN, config, fixture, free_port
from milters import GTUBE, VIRUS_MARKER, Clamav, OpenDkim, Rspamd
from test_submission import ALICE, dns_lookup, env, sink, submit  # noqa: F401


@pytest.fixture
def clamav(tmp_path):
    peer = Clamav(tmp_path)
    yield peer
    peer.stop()


@pytest.fixture
def opendkim(tmp_path):
    peer = OpenDkim(tmp_path)
    yield peer
    peer.stop()


@pytest.fixture
def rspamd(tmp_path, dns_zone):
    # Its lookups get quick answers from a local server that knows nothing.
    peer = Rspamd(tmp_path, dns_zone({}))
    yield peer
    peer.stop()


def milter_plugin(name, port, more=""):
    return f'\n[plugins.{name}]\npath = "milter:inet:127.0.0.1:{port}"\n{more}\n'


def admin(port):
    return f'\n[admin]\naddress = "127.0.0.1:{port}"\n'


def message(attachment: bytes, subject="scan me"):
    msg = EmailMessage()
    msg["From"] = "alice@example.org"
    msg["To"] = "bob@localhost"
    msg["Subject"] = subject
    msg.set_content("Please find the file attached.\n")
    msg.add_attachment(attachment, maintype="application", subtype="octet-stream", filename="file.bin")
    return msg.as_bytes()


def send(server, data):
    """The reply to the message (DATA's end), or to the command refused."""
    with smtplib.SMTP("127.0.0.1", server.port, timeout=60) as client:
        client.ehlo("client.test")
        client.mail("alice@example.org")
        client.rcpt("bob@localhost")
        return client.data(data)


def delivered(server, local="bob", count=1, timeout=30):
    deadline = time.monotonic() + timeout
    while len(server.maildir(local)) < count:
        assert time.monotonic() < deadline, "not delivered"
        time.sleep(0.05)
    return [p.read_bytes() for p in server.maildir(local)]


def queued(server):
    """The spool's entries, as `sluice queue list --json` gives them."""
    listed = subprocess.run([BIN, "queue", "list", "--json", "--config", str(server.tmp / "sluice.toml")],
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)["entries"]


def metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def metric(port, series):
    for line in metrics(port).splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_clamav_rejects_the_signature_and_passes_a_clean_attachment(sluice, clamav):
    server = sluice(pipeline_extra='data = ["clamav"]', extra=milter_plugin("clamav", clamav.port))
    code, text = send(server, message(b"harmless bytes " * 100))
    assert code == 250, text
    [clean] = delivered(server)
    assert b"X-Virus-Status: Clean" in clean, clean
    code, text = send(server, message(b"prefix " + VIRUS_MARKER + b" suffix"))
    assert code // 100 == 5, text
    assert b"Sluice.Test.Signature" in text, text
    # Refused, so nothing more was delivered.
    time.sleep(0.5)
    assert len(server.maildir("bob")) == 1


def test_rspamd_rejects_gtube_and_adds_its_headers_to_a_clean_message(sluice, rspamd):
    server = sluice(pipeline_extra='data = ["rspamd"]',
                    extra=milter_plugin("rspamd", rspamd.port, 'timeout = "30s"'))
    clean = (b"From: alice@example.org\r\nTo: bob@localhost\r\nSubject: lunch\r\n"
             b"Message-ID: <lunch-1@example.org>\r\n\r\nShall we meet at noon?\r\n")
    code, text = send(server, clean)
    assert code == 250, text
    [kept] = delivered(server)
    assert b"X-Spamd-Result:" in kept and b"X-Rspamd-Server:" in kept, kept
    spam = clean.replace(b"Shall we meet at noon?", GTUBE)
    code, text = send(server, spam)
    assert code // 100 == 5, text
    # rspamd's own reply code and text, not sluice's standard refusal.
    assert code == 554 and text == b"5.7.1 Gtube pattern", (code, text)


def test_clamav_quarantine_is_sluices_quarantine_with_its_reason(tmp_path, sluice):
    peer = Clamav(tmp_path, on_infected="Quarantine")
    try:
        server = sluice(pipeline_extra='data = ["clamav"]', extra=milter_plugin("clamav", peer.port))
        code, text = send(server, message(VIRUS_MARKER))
        assert code == 250, text
        deadline = time.monotonic() + 30
        while not (entries := queued(server)):
            assert time.monotonic() < deadline, "nothing queued"
            time.sleep(0.1)
        [entry] = entries
        assert entry["state"] == "quarantined", entry
        # SMFIR_QUARANTINE's reason, as clamav-milter gives it.
        assert entry["quarantine"] == "quarantined by clamav-milter", entry
        assert not server.maildir("bob")
    finally:
        peer.stop()


def test_clamav_blackhole_is_a_discard(tmp_path, sluice):
    peer = Clamav(tmp_path, on_infected="Blackhole")
    try:
        server = sluice(pipeline_extra='data = ["clamav"]', extra=milter_plugin("clamav", peer.port))
        # Accepted for the client, dropped: neither delivered nor queued.
        assert send(server, message(VIRUS_MARKER))[0] == 250
        assert send(server, message(b"clean after it"))[0] == 250
        [kept] = delivered(server)
        assert b"X-Virus-Status: Clean" in kept
        # The clean one leaves the queue once delivered; the discarded one
        # was never in it.
        deadline = time.monotonic() + 30
        while queued(server):
            assert time.monotonic() < deadline, queued(server)
            time.sleep(0.1)
        assert len(server.maildir("bob")) == 1
        assert "discarded" in (server.tmp / "server.log").read_text(errors="replace")
    finally:
        peer.stop()


def test_clamav_over_a_unix_socket(tmp_path, sluice):
    peer = Clamav(tmp_path, unix=True)
    try:
        plugin = f'\n[plugins.clamav]\npath = "milter:{peer.address}"\n'
        server = sluice(pipeline_extra='data = ["clamav"]', extra=plugin)
        assert send(server, message(b"clean over unix"))[0] == 250
        code, text = send(server, message(VIRUS_MARKER))
        assert code // 100 == 5 and b"Sluice.Test.Signature" in text, text
    finally:
        peer.stop()


def round_trips(port, plugin):
    return metric(port, f'sluice_milter_round_trips_total{{plugin="{plugin}"}}')


def test_a_sessions_later_messages_reuse_its_milter_connection(sluice, clamav):
    port = free_port()
    server = sluice(pipeline_extra='data = ["clamav"]', extra=milter_plugin("clamav", clamav.port) + admin(port))
    counts = []
    for messages in (1, 2, 3):
        before = round_trips(port, "clamav")
        with smtplib.SMTP("127.0.0.1", server.port, timeout=60) as client:
            client.ehlo("client.test")
            for _ in range(messages):
                client.mail("alice@example.org")
                client.rcpt("bob@localhost")
                assert client.data(message(b"same clean bytes"))[0] == 250
        counts.append(round_trips(port, "clamav") - before)
    one, two, three = counts
    later = two - one
    # Every later message costs the same, and less than the first: no new
    # negotiation, connect or helo (a connection per message would cost
    # each as much as the first).
    assert three - two == later and 0 < later < one, counts


def test_one_milter_connection_serves_every_transaction_of_a_session(sluice, clamav):
    server = sluice(pipeline_extra='data = ["clamav"]', extra=milter_plugin("clamav", clamav.port))
    with smtplib.SMTP("127.0.0.1", server.port, timeout=60) as client:
        client.ehlo("client.test")
        for n, payload in enumerate([b"clean one", VIRUS_MARKER, b"clean two"]):
            client.mail("alice@example.org")
            client.rcpt("bob@localhost")
            code, _ = client.data(message(payload, subject=f"n{n}"))
            assert (code // 100) == (5 if payload == VIRUS_MARKER else 2), (n, code)
        # RSET mid-transaction: the milter is told (abort) and follows.
        client.mail("alice@example.org")
        client.rcpt("bob@localhost")
        client.rset()
        client.mail("alice@example.org")
        client.rcpt("bob@localhost")
        assert client.data(message(b"clean three", subject="n3"))[0] == 250
    delivered(server, count=3)
    log = (clamav.milter.log.parent / "milter.file.log").read_text(errors="replace")
    assert log.count("Sluice.Test.Signature") == 1, log


@pytest.mark.parametrize("on_error,expected", [("tempfail", 451), ("reject", 550), ("skip", 250)])
def test_a_milter_that_is_down_costs_its_on_error(sluice, on_error, expected):
    down = free_port()
    server = sluice(pipeline_extra='data = ["clamav"]',
                    extra=milter_plugin("clamav", down, f'on_error = "{on_error}"'))
    started = time.monotonic()
    code, text = send(server, message(b"clean"))
    assert code == expected, text
    assert time.monotonic() - started < 30


def test_a_hung_milter_costs_its_on_error_after_its_timeout(sluice, clamav):
    server = sluice(pipeline_extra='data = ["clamav"]',
                    extra=milter_plugin("clamav", clamav.port, 'timeout = "1s"\non_error = "tempfail"'))
    # Stopped, the milter's socket still accepts connections but nothing answers.
    clamav.milter.pause()
    try:
        code, text = send(server, message(b"clean"))
        assert code == 451 and b"4.3.0" in text, text
    finally:
        clamav.milter.resume()
    log = (server.tmp / "server.log").read_text(errors="replace")
    assert "deadline exceeded: no answer within 1s" in log, log
    # The session after it gets a fresh connection and a real answer.
    assert send(server, message(b"clean again"))[0] == 250


def test_clamd_down_is_the_milters_own_failure_answer(sluice, clamav):
    server = sluice(pipeline_extra='data = ["clamav"]', extra=milter_plugin("clamav", clamav.port))
    clamav.clamd.stop()
    # clamav-milter's OnFail = Defer: a temporary failure, not a pass.
    code, text = send(server, message(b"clean"))
    assert code // 100 == 4, text


def test_a_milter_after_a_refusing_wasm_plugin_is_not_called(sluice, clamav):
    port = free_port()
    extra = milter_plugin("clamav", clamav.port) + admin(port) + f"""
[plugins.refuser]
path = "{fixture('fixture_verdict')}"
[plugins.refuser.config]
data = "reject 554 5.7.1 refused before the milter"
"""
    server = sluice(pipeline_extra='data = ["refuser", "clamav"]', extra=extra)
    code, text = send(server, message(VIRUS_MARKER))
    assert code == 554 and b"refused before the milter" in text, (code, text)
    assert metric(port, 'sluice_plugin_verdicts_total{stage="data",plugin="refuser",verdict="reject"}') == 1
    # Neither a verdict, a fault nor a call's duration for the milter.
    assert 'plugin="clamav"' not in metrics(port)
    log = (clamav.milter.log.parent / "milter.file.log")
    assert "Sluice.Test.Signature" not in (log.read_text(errors="replace") if log.exists() else "")


def test_a_shadow_milters_reject_is_logged_and_counted_not_applied(sluice, clamav, tmp_path):
    port = free_port()
    server = sluice(pipeline_extra='data = ["clamav"]',
                    extra=milter_plugin("clamav", clamav.port, 'mode = "shadow"') + admin(port))
    code, text = send(server, message(VIRUS_MARKER))
    assert code == 250, text
    [kept] = delivered(server)
    assert VIRUS_MARKER.hex().encode() not in kept and b"X-Virus-Status" not in kept
    assert metric(port, 'sluice_plugin_shadow_verdicts_total{stage="data",plugin="clamav",verdict="reject"}') == 1
    log = (tmp_path / "server.log").read_text(errors="replace")
    assert "shadow verdict (not applied)" in log and "clamav" in log


def test_opendkim_signs_submitted_mail_and_dkimpy_verifies_it(tmp_path, env, sink, dns_zone, opendkim):  # noqa: F811
    dns_port = dns_zone({"m1._domainkey.example.org": {"TXT": [opendkim.record]}})
    e = env(sink_port=sink.port, pipeline_extra='data = ["dkim"]', extra=milter_plugin("dkim", opendkim.port))
    submit(e, ALICE, ALICE[0],
           b"From: Alice <alice@example.org>\r\nTo: friend@example.test\r\nSubject: milter signed\r\n\r\n"
           b"Hello,\r\n.dot-stuffed line\r\n\r\n")
    [received] = sink.wait(1)
    content = received.content
    assert content.count(b"DKIM-Signature:") == 1, content
    assert b"d=example.org" in content and b"s=m1" in content
    assert dkim.verify(content, dnsfunc=dns_lookup(dns_port)), content
    tampered = content.replace(b"Subject: milter signed", b"Subject: milter signeD")
    assert not dkim.verify(tampered, dnsfunc=dns_lookup(dns_port))


def test_pipeline_test_asks_the_milter(tmp_path, clamav):
    cfg = tmp_path / "replay.toml"
    cfg.write_text(config(free_port(), tmp_path / "replay-data", pipeline_extra='data = ["clamav"]',
                          extra=milter_plugin("clamav", clamav.port)))
    reports = {}
    for name, payload in [("clean", b"clean bytes"), ("infected", VIRUS_MARKER)]:
        msg = tmp_path / f"{name}.eml"
        msg.write_bytes(message(payload))
        done = subprocess.run([BIN, "pipeline", "test", "--config", str(cfg), "--message", str(msg), "--json"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        reports[name] = json.loads(done.stdout)
    assert reports["clean"]["result"] == "accepted", reports["clean"]
    assert any("X-Virus-Status: Clean" in m for m in reports["clean"]["applied_modifications"])
    assert reports["infected"]["result"] == "rejected", reports["infected"]
    data = reports["infected"]["stages"][-1]
    assert data["plugins"][0]["plugin"] == "clamav" and "Sluice.Test.Signature" in data["reply"]


@pytest.mark.parametrize("address", ["milter:inet:127.0.0.1", "milter:inet:127.0.0.1:0", "milter:unix:milter.sock",
                                     "milter:smtp:127.0.0.1:25"])
def test_check_config_names_a_bad_milter_address(tmp_path, address):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(config(free_port(), tmp_path / "data", pipeline_extra='data = ["scan"]',
                          extra=f'\n[plugins.scan]\npath = "{address}"\n'))
    done = subprocess.run([BIN, "check-config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "plugins.scan.path" in done.stderr and "inet:HOST:PORT" in done.stderr, done.stderr
    good = cfg.read_text().replace(address, "milter:unix:/run/clamav/clamav-milter.ctl")
    cfg.write_text(good)
    done = subprocess.run([BIN, "check-config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr

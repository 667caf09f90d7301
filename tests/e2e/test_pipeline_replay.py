"""`sluice pipeline test`: a listener's pipeline replayed offline on a
recorded message gives the decision the live server gives the same
message over SMTP."""
import json
import subprocess
import time

from conftest import BIN, Raw, config, fixture, free_port

MESSAGE = b"From: Alice <alice@example.org>\nTo: <bob@localhost>\nSubject: replay\n\nhello\n"


def plugins(data_spec):
    return f"""
[plugins.tag]
path = "{fixture('fixture_verdict')}"
[plugins.tag.config]
header = "X-Tag: replayed"

[plugins.judge]
path = "{fixture('fixture_verdict')}"
[plugins.judge.config]
data = "{data_spec}"

[plugins.watch]
path = "{fixture('fixture_verdict')}"
mode = "shadow"
[plugins.watch.config]
mail = "reject 550 5.7.1 shadow says no"
"""


def replay(tmp_path, cfg_text, *args):
    cfg = tmp_path / "replay.toml"
    cfg.write_text(cfg_text)
    msg = tmp_path / "m.eml"
    msg.write_bytes(MESSAGE)
    result = subprocess.run(
        [BIN, "pipeline", "test", "--config", str(cfg), "--message", str(msg), *args],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def live_data_reply(server):
    raw = Raw(server.port)
    raw.reply()
    raw.cmd(b"EHLO client.example")
    assert raw.cmd(b"MAIL FROM:<alice@example.org>")[0] == 250
    assert raw.cmd(b"RCPT TO:<bob@localhost>")[0] == 250
    assert raw.cmd(b"DATA")[0] == 354
    reply = raw.cmd(MESSAGE.replace(b"\n", b"\r\n") + b".")
    raw.close()
    return reply


def run_both(sluice, tmp_path, data_spec):
    pipeline = 'mail = ["watch"]\ndata = ["tag", "judge"]'
    server = sluice(pipeline_extra=pipeline, extra=plugins(data_spec))
    code, text = live_data_reply(server)
    # The same configuration, on another port: the replay binds nothing.
    cfg_text = config(free_port(), tmp_path / "replay-data", pipeline_extra=pipeline, extra=plugins(data_spec))
    report = json.loads(replay(tmp_path, cfg_text, "--json"))
    return server, code, text, report, cfg_text


def test_replay_matches_a_live_rejection(sluice, tmp_path):
    server, code, text, report, cfg_text = run_both(sluice, tmp_path, "reject 550 5.7.1 no thanks")
    assert code == 550 and b"no thanks" in text
    assert report["result"] == "rejected"
    data = report["stages"][-1]
    assert data["stage"] == "data" and data["outcome"] == "reject"
    assert data["reply"].startswith("550 5.7.1 no thanks")
    assert [p["plugin"] for p in data["plugins"]] == ["tag", "judge"]
    assert data["plugins"][0]["modifications"] == ["prepend-header X-Tag: replayed"]
    mail = next(s for s in report["stages"] if s["stage"] == "mail")
    assert mail["outcome"] == "accept"
    assert mail["plugins"][0]["shadow"] is True and mail["plugins"][0]["verdict"] == "reject"
    text_out = replay(tmp_path, cfg_text)
    assert "result: rejected" in text_out and "(shadow, not applied)" in text_out


def test_replay_matches_a_live_acceptance_and_its_edits(sluice, tmp_path):
    server, code, _, report, _ = run_both(sluice, tmp_path, "next")
    assert code == 250
    assert report["result"] == "accepted"
    assert report["applied_modifications"] == ["prepend-header X-Tag: replayed"]
    deadline = time.monotonic() + 30
    while not server.maildir("bob"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert b"X-Tag: replayed" in server.maildir("bob")[0].read_bytes()


def test_replay_recipient_refused(tmp_path):
    cfg_text = config(free_port(), tmp_path / "d", trusted='[]')
    out = replay(tmp_path, cfg_text, "--client-ip", "192.0.2.1", "--to", "someone@elsewhere.test")
    assert "rcpt <someone@elsewhere.test>: reject" in out
    assert "result: no recipient accepted" in out


def test_replay_answers_dns_from_a_fixture(tmp_path):
    zone = tmp_path / "zone.toml"
    zone.write_text('["example.org"]\nTXT = ["v=spf1 -all"]\nMX = ["10 mx.example.org"]\n["mx.example.org"]\nA = ["192.0.2.1"]\n')
    extra = f"""
[plugins.look]
path = "{fixture('fixture_dns')}"
allow = ["dns"]
timeout = "5s"
[plugins.look.config]
lookups = [["txt", "example.org"], ["mx", "example.org"], ["a", "mx.example.org"], ["a", "missing.example.org"]]
"""
    cfg_text = config(free_port(), tmp_path / "d", pipeline_extra='data = ["look"]', extra=extra)
    report = json.loads(replay(tmp_path, cfg_text, "--dns-fixture", str(zone), "--json"))
    assert report["result"] == "accepted", report
    edits = report["stages"][-1]["plugins"][0]["modifications"]
    assert edits == [
        "prepend-header X-Dns-Lookup: txt example.org ok v=spf1 -all",
        "prepend-header X-Dns-Lookup: mx example.org ok 10:mx.example.org",
        "prepend-header X-Dns-Lookup: a mx.example.org ok 192.0.2.1",
        "prepend-header X-Dns-Lookup: a missing.example.org nxdomain",
    ], edits

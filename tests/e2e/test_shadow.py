"""Shadow mode: a plugin with `mode = "shadow"` runs on live traffic, its
verdict is logged and counted but never applied (nor its header edits)."""
import time
import urllib.request

from conftest import Raw, fixture, free_port


def shadow_plugins(admin_port):
    return f"""
[admin]
address = "127.0.0.1:{admin_port}"

[plugins.strict]
path = "{fixture('fixture_verdict')}"
mode = "shadow"
[plugins.strict.config]
mail = "reject 550 5.7.1 would be refused"
data = "reject 550 5.7.1 body would be refused"
header = "X-Shadow: applied"

[plugins.tagger]
path = "{fixture('fixture_verdict')}"
[plugins.tagger.config]
header = "X-Enforced: applied"
"""


def metric(admin_port, series):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_shadow_verdicts_are_logged_and_counted_not_applied(sluice, tmp_path):
    admin = free_port()
    server = sluice(
        pipeline_extra='mail = ["strict"]\ndata = ["strict", "tagger"]',
        extra=shadow_plugins(admin),
    )
    raw = Raw(server.port)
    raw.reply()
    raw.cmd(b"EHLO client.test")
    assert raw.cmd(b"MAIL FROM:<a@example.org>")[0] == 250
    assert raw.cmd(b"RCPT TO:<bob@localhost>")[0] == 250
    assert raw.cmd(b"DATA")[0] == 354
    assert raw.cmd(b"Subject: shadow\r\n\r\nhello\r\n.")[0] == 250
    raw.close()

    deadline = time.monotonic() + 30
    while not server.maildir("bob"):
        assert time.monotonic() < deadline, "not delivered"
        time.sleep(0.05)
    message = server.maildir("bob")[0].read_bytes()
    assert b"X-Enforced: applied" in message
    assert b"X-Shadow" not in message

    log = (tmp_path / "server.log").read_text()
    assert log.count("shadow verdict (not applied)") >= 2, log
    assert metric(admin, 'sluice_plugin_shadow_verdicts_total{stage="mail",plugin="strict",verdict="reject"}') == 1
    assert metric(admin, 'sluice_plugin_shadow_verdicts_total{stage="data",plugin="strict",verdict="reject"}') == 1


def test_enforced_plugin_with_the_same_config_refuses(sluice):
    # The control: without shadow, the same plugin refuses at MAIL.
    admin = free_port()
    extra = shadow_plugins(admin).replace('mode = "shadow"\n', "")
    server = sluice(pipeline_extra='mail = ["strict"]', extra=extra)
    raw = Raw(server.port)
    raw.reply()
    raw.cmd(b"EHLO client.test")
    code, text = raw.cmd(b"MAIL FROM:<a@example.org>")
    raw.close()
    assert code == 550 and b"would be refused" in text

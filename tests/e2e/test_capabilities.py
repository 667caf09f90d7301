"""The sandbox through the real server: `[plugins.NAME] allow` gates the
host interfaces a plugin may call (a denied call fails inside the plugin),
and a component importing anything outside the sluice:filter world is
refused at load time, naming the import."""
import subprocess
import time

import pytest

from conftest import BIN, Raw, Server, config, fixture, free_port


def caps_plugin(allow=None, on_error="reject"):
    line = "" if allow is None else f"allow = {allow}"
    return f"""
[plugins.caps]
path = "{fixture('fixture_caps')}"
on_error = "{on_error}"
timeout = "5s"
{line}
"""


def send(server, body=b"line one\r\nline two\r\n"):
    """One message to bob@localhost; the DATA reply."""
    raw = Raw(server.port)
    raw.reply()
    raw.cmd(b"EHLO client.test")
    assert raw.cmd(b"MAIL FROM:<a@example.org>")[0] == 250
    assert raw.cmd(b"RCPT TO:<bob@localhost>")[0] == 250
    assert raw.cmd(b"DATA")[0] == 354
    reply = raw.cmd(b"Subject: caps\r\n\r\n" + body + b".")
    raw.close()
    return reply


def delivered_headers(server, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = server.maildir("bob")
        if files:
            head = files[0].read_bytes().replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
            return {
                line.split(":", 1)[0]: line.split(":", 1)[1].strip()
                for line in head.decode().split("\n")
                if line.startswith("X-Caps-")
            }
        time.sleep(0.05)
    raise AssertionError("message not delivered")


def test_denied_kv_and_dns_fail_inside_the_plugin(sluice):
    server = sluice(pipeline_extra='data = ["caps"]', extra=caps_plugin('["message-body"]'))
    code, _ = send(server)
    assert code == 250
    headers = delivered_headers(server)
    assert headers["X-Caps-Kv"].startswith("not allowed: kv"), headers
    assert headers["X-Caps-Dns"].startswith("invalid: not allowed: dns"), headers
    assert headers["X-Caps-Body"] == "2", headers
    assert "plugins.caps.allow" in headers["X-Caps-Kv"]


def test_granted_capabilities_work(sluice):
    server = sluice(
        pipeline_extra='data = ["caps"]',
        extra=caps_plugin('["kv", "dns", "message-body"]'),
    )
    code, _ = send(server)
    assert code == 250
    headers = delivered_headers(server)
    assert headers["X-Caps-Kv"] == "ok 1", headers
    assert "not allowed" not in headers["X-Caps-Dns"], headers
    assert headers["X-Caps-Body"] == "2", headers


def test_a_file_plugin_holds_no_capability_by_default(sluice, tmp_path):
    # The body read has no error result in the WIT: a denied one traps and
    # the plugin's on_error policy (reject here) decides.
    server = sluice(pipeline_extra='data = ["caps"]', extra=caps_plugin(None, on_error="reject"))
    code, text = send(server)
    assert 500 <= code < 600, (code, text)
    log = (tmp_path / "server.log").read_text()
    assert "not allowed: message-body" in log
    assert "not allowed: kv" in log and "not allowed: dns" in log
    assert server.maildir("bob") == []


def test_denied_body_read_with_tempfail_policy(sluice):
    server = sluice(pipeline_extra='data = ["caps"]', extra=caps_plugin('["kv", "dns"]', on_error="tempfail"))
    code, _ = send(server)
    assert 400 <= code < 500, code


def test_unknown_capability_is_a_config_error(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(config(free_port(), tmp_path / "data", extra=caps_plugin('["dns", "network"]')))
    result = subprocess.run([BIN, "check-config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "plugins.caps.allow" in result.stderr and '"network"' in result.stderr, result.stderr


@pytest.mark.parametrize("allow", [None, '["dns", "kv", "auth", "message-body"]'])
def test_a_component_importing_sockets_is_refused_at_load(tmp_path, allow):
    # Capabilities cannot grant what the sandbox refuses.
    line = "" if allow is None else f"allow = {allow}"
    extra = f"""
[plugins.net]
path = "{fixture('fixture_sockets')}"
{line}
[plugins.net.config]
stage = "mail"
"""
    port = free_port()
    server = Server(tmp_path, config(port, tmp_path / "data", pipeline_extra='mail = ["net"]', extra=extra))
    with pytest.raises(AssertionError, match="server exited"):
        server.start(port)
    log = server.log.read_text()
    assert "plugins.net" in log and "wasi:sockets/" in log, log
    assert server.proc.returncode != 0

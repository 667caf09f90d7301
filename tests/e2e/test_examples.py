"""The example plugin of every guest language (plugins/examples/), loaded by
path into the real server and applied to real SMTP traffic with smtplib:
the rcpt rule, the Subject word, the X-Filtered-By header, and `init`
refusing a config without a word.

The components are built by plugins/examples/build-all.sh (tests/run.sh
runs it) into $SLUICE_EXAMPLES_DIR."""
import os
import smtplib
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BIN, Server, free_port, suite_config

LANGUAGES = ["rust", "python", "javascript", "c", "zig"]
EXAMPLES_DIR = Path(
    os.environ.get(
        "SLUICE_EXAMPLES_DIR",
        Path(os.environ.get("CARGO_TARGET_DIR", "/var/tmp/sluice-target")) / "examples",
    )
)


def example(lang):
    path = EXAMPLES_DIR / f"{lang}-example.wasm"
    assert path.exists(), f"missing {path}: run plugins/examples/build-all.sh (or tests/run.sh)"
    return path


def example_config(port, data, lang, plugin_config='word = "lottery"'):
    return f"""
[server]
hostname = "mx.example.test"
data_dir = "{data}"

[domains]
local = ["example.org"]

[[listener]]
name = "mx"
address = "127.0.0.1:{port}"
pipeline = "inbound"

[pipeline.inbound]
rcpt = ["example", "relay"]
data = ["example"]

[plugins.relay]
path = "builtin:relay"

[plugins.example]
path = "{example(lang)}"
# Slack for a loaded test machine (the default is 100ms).
timeout = "1s"

[plugins.example.config]
{plugin_config}
"""


def delivered(data, local):
    new = Path(data) / "mail" / "example.org" / local / "new"
    return sorted(new.iterdir()) if new.exists() else []


@pytest.mark.parametrize("lang", LANGUAGES)
def test_example_filters_real_smtp_traffic(tmp_path, lang):
    data = tmp_path / "data"

    # A config without the word: init refuses it and the server does not
    # start. This first start also fills the compiled-component cache.
    port = free_port()
    bad = tmp_path / "bad.toml"
    bad.write_text(suite_config(example_config(port, data, lang, plugin_config='other = "x"')))
    started = time.monotonic()
    refused = subprocess.run([BIN, "serve", "--config", str(bad)], capture_output=True, text=True, timeout=300)
    first_start = time.monotonic() - started
    assert refused.returncode != 0
    output = refused.stdout + refused.stderr
    assert "plugins.example" in output and 'non-empty "word"' in output, output

    server = Server(tmp_path, example_config(port, data, lang))
    started = time.monotonic()
    server.start(port)
    print(f"{lang}: first start {first_start:.2f}s, cached start {time.monotonic() - started:.2f}s")
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.ehlo("client.example.net")

            client.mail("sender@example.net")
            code, text = client.rcpt("noreply-billing@example.org")
            assert (code, text) == (550, b"5.1.1 This address accepts no mail")
            client.rset()

            client.mail("sender@example.net")
            assert client.rcpt("bob@example.org")[0] == 250
            code, text = client.data(b"From: sender@example.net\r\nSubject: You won the LOTTERY\r\n\r\nClaim it.\r\n")
            assert code == 550 and text.startswith(b"5.7.1 Subject contains"), text
            assert b"lottery" in text

            client.mail("sender@example.net")
            assert client.rcpt("bob@example.org")[0] == 250
            code, _ = client.data(b"From: sender@example.net\r\nSubject: Minutes\r\n\r\nAttached.\r\n")
            assert code == 250

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not delivered(data, "bob"):
            time.sleep(0.1)
        messages = delivered(data, "bob")
        assert len(messages) == 1, "exactly the clean message is delivered"
        text = messages[0].read_bytes()
        assert f"X-Filtered-By: {lang}-example\r\n".encode() in text
        assert b"Subject: Minutes" in text
        assert delivered(data, "noreply-billing") == []
    finally:
        server.stop()

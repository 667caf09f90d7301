#!/usr/bin/env python3
"""What the default inbound pipeline (config/inbound.toml) costs per message,
per plugin and hook, measured with `sluice pipeline test --json` on the
release binary: every run is a fresh session, so a plugin's first hook
includes its instantiation, as for a client that connects per message.

    python3 tests/bench/pipeline_cost.py [RUNS]     (default 15)

(SLUICE_BIN picks another binary than $CARGO_TARGET_DIR/release/sluice.)

The config is rewritten to run offline: its recipients file is a temporary
one listing the recipient, greylisting lets that recipient through (so the
data stage runs), and DNS comes from an empty fixture (every name NXDOMAIN,
answered at once). Prints the median microseconds per plugin and stage, and
the median of the per-message total."""
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("SLUICE_BIN", Path(os.environ.get("CARGO_TARGET_DIR", "/var/tmp/sluice-target")) / "release" / "sluice"))

MESSAGE = (
    "From: Bob <bob@sender.example>\r\n"
    "To: Alice <alice@example.org>\r\n"
    "Subject: quarterly report\r\n"
    "Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
    "Message-ID: <cost@sender.example>\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "\r\n" + "The numbers are in and they look fine for this quarter.\r\n" * 90
)


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "recipients").write_text("alice@example.org\n")
        config = (ROOT / "config" / "inbound.toml").read_text()
        config = config.replace("/etc/sluice/recipients", str(tmp / "recipients"))
        config = config.replace('data_dir = "/var/lib/sluice"', f'data_dir = "{tmp / "data"}"\nallow_root = true')
        config = config.replace(
            "[plugins.greylist.config]\n",
            '[plugins.greylist.config]\nallow_recipients = ["alice@example.org"]\n',
        )
        (tmp / "inbound.toml").write_text(config)
        (tmp / "zone.toml").write_text('["unused.invalid"]\nA = ["192.0.2.1"]\n')
        (tmp / "message.eml").write_text(MESSAGE)
        cost = defaultdict(list)
        totals = []
        for _ in range(runs):
            out = subprocess.run(
                [str(BIN), "pipeline", "test", "--config", str(tmp / "inbound.toml"),
                 "--message", str(tmp / "message.eml"), "--client-ip", "192.0.2.7",
                 "--helo", "mail.sender.example", "--dns-fixture", str(tmp / "zone.toml"), "--json"],
                capture_output=True, text=True, timeout=120, check=True,
            )
            report = json.loads(out.stdout)
            assert report["result"] == "accepted", report["result"]
            total = 0
            for stage in report["stages"]:
                for step in stage["plugins"]:
                    cost[(stage["stage"], step["plugin"])].append(step["micros"])
                    total += step["micros"]
            totals.append(total)
    print(f"{'stage':8} {'plugin':11} median µs  (of {runs} fresh sessions)")
    for (stage, plugin), values in cost.items():
        print(f"{stage:8} {plugin:11} {statistics.median(values):9.0f}")
    print(f"{'total':20} {statistics.median(totals):9.0f} µs per message")


if __name__ == "__main__":
    main()

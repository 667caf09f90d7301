"""Relay throughput end to end: Postfix's smtp-source sends N messages to
sluice (configured by tests/bench/project.sh, so the same config as the
side-by-side benchmark), sluice spools them and relays them to Postfix's
smtp-sink. Prints the accept rate (what smtp-source saw) and the delivery
rate (until the queue is empty, read from the admin API).

    python3 tests/bench/delivery.py [MESSAGES] [SESSIONS]

Uses the release binary (project.sh builds it when stale).
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET = os.environ.get("CARGO_TARGET_DIR", "/var/tmp/sluice-target")
BIN = Path(TARGET) / "release" / "sluice"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_greeting(port, deadline):
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if s.recv(64).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing greets on port {port}")


def queued(config):
    out = subprocess.run([str(BIN), "queue", "list", "--json", "--config", str(config)],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise SystemExit(f"queue list failed: {out.stderr}")
    return json.loads(out.stdout)["count"]


def main():
    messages = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    sessions = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    listen, relay = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="sluice-delivery-bench-") as tmp:
        spool = Path(tmp) / "spool"
        env = dict(os.environ, BENCH_LISTEN=f"127.0.0.1:{listen}", BENCH_RELAY=f"127.0.0.1:{relay}",
                   BENCH_SPOOL_DIR=str(spool), BENCH_MYNETWORKS="127.0.0.0/8")
        sink = subprocess.Popen(["smtp-sink", "-u", "nobody", f"127.0.0.1:{relay}", "1000"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server = subprocess.Popen(["bash", str(HERE / "project.sh")], env=env,
                                  stdout=subprocess.DEVNULL, stderr=open(Path(tmp) / "log", "w"))
        try:
            wait_greeting(listen, time.monotonic() + 900)
            wait_greeting(relay, time.monotonic() + 30)
            config = spool / "sluice.toml"
            start = time.monotonic()
            subprocess.run(["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", "5120",
                            "-d", "-f", "source@example.org", "-t", "user@example.test",
                            f"127.0.0.1:{listen}"], check=True, timeout=3600)
            accepted = time.monotonic() - start
            deadline = time.monotonic() + 3600
            while queued(config) and time.monotonic() < deadline:
                time.sleep(0.2)
            delivered = time.monotonic() - start
            left = queued(config)
        finally:
            server.terminate()
            server.wait(timeout=60)
            sink.terminate()
            sink.wait(timeout=10)
    print(f"messages={messages} sessions={sessions} size=5KiB")
    print(f"accepted in {accepted:.2f}s: {messages / accepted:.0f} msg/s")
    print(f"delivered (queue empty) in {delivered:.2f}s: {messages / delivered:.0f} msg/s; left in queue: {left}")


if __name__ == "__main__":
    main()

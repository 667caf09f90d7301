"""How long a session waits for a reply while other sessions' messages are
MIME-parsed for a data-stage plugin: N clients (default 4) each send a
large multipart message (default 16 MiB of base64 text parts) through
builtin:content (a body rule, so the host parses every part), while one
probe session sends NOOP after NOOP; prints the probe's slowest and median
replies during the sends. Compare two binaries (SLUICE_BIN) on an idle
machine: the probe's worst wait includes everything a data-stage plugin
costs on a worker (the parse when it runs there, and copying the decoded
text into the plugin's memory, which always does).

    python3 tests/bench/host_work_stall.py [N] [MiB]

SLUICE_BIN picks the binary (default: the debug build in CARGO_TARGET_DIR).
"""
import base64
import os
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TARGET = os.environ.get("CARGO_TARGET_DIR", "/var/tmp/sluice-target")
BIN = os.environ.get("SLUICE_BIN", str(Path(TARGET) / "debug" / "sluice"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def big_message(mib):
    part = base64.encodebytes(os.urandom(96 * 1024)).replace(b"\n", b"\r\n")
    parts = []
    for i in range(max(1, mib * 1024 * 1024 // len(part))):
        parts.append(b"--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n" + part)
    return (b"Subject: big\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
            + b"".join(parts) + b"--b--\r\n")


def main():
    senders = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    mib = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="sluice-stall-") as tmp:
        cfg = Path(tmp) / "sluice.toml"
        cfg.write_text(f"""
[server]
data_dir = "{tmp}/data"
allow_root = true  # only matters when run as root
max_message_size = "{mib + 8}MiB"

[domains]
local = ["localhost"]

[[listener]]
name = "mx"
address = "127.0.0.1:{port}"
pipeline = "p"

[pipeline.p]
rcpt = ["relay"]
data = ["content"]

[plugins.relay]
path = "builtin:relay"
[plugins.relay.config]
trusted_networks = ["127.0.0.0/8"]

[plugins.content]
path = "builtin:content"
timeout = "60s"
[[plugins.content.config.rule]]
name = "never"
body = "no such text in random base64"
action = "reject"

[delivery.maildir]
create_mailboxes = true
""")
        server = subprocess.Popen([BIN, "serve", "--config", str(cfg)], stderr=open(Path(tmp) / "log", "w"))
        try:
            for _ in range(600):
                if server.poll() is not None:
                    sys.exit("sluice exited: " + (Path(tmp) / "log").read_text())
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            message = big_message(mib)
            done = threading.Event()
            waits = []

            def probe():
                with smtplib.SMTP("127.0.0.1", port, timeout=120) as smtp:
                    while not done.is_set():
                        start = time.perf_counter()
                        smtp.noop()
                        waits.append(time.perf_counter() - start)
                        time.sleep(0.01)

            def send():
                with smtplib.SMTP("127.0.0.1", port, timeout=300) as smtp:
                    smtp.sendmail("a@localhost", ["b@localhost"], message)

            prober = threading.Thread(target=probe)
            prober.start()
            threads = [threading.Thread(target=send) for _ in range(senders)]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - started
            done.set()
            prober.join()
        finally:
            server.terminate()
            server.wait(30)
    print(f"{senders} x {len(message) / 2**20:.1f} MiB in {elapsed:.2f} s; probe NOOPs: {len(waits)}, "
          f"median {statistics.median(waits) * 1000:.1f} ms, slowest {max(waits) * 1000:.1f} ms")


if __name__ == "__main__":
    main()

"""Memory per idle connection: opens N connections (default 10,000) to a
release sluice, spread over 127.0.0.2-127.0.0.254 so the per-IP cap does not
refuse them, waits for every greeting, and reports the server's RSS before
and with all of them open.

    python3 tests/bench/idle_connections.py [N]

Needs the fd limit raised for itself (it raises its own soft limit to the
hard limit) and sets the server's max_connections to N + 100.
"""
import os
import resource
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = os.environ.get("CARGO_TARGET_DIR", "/var/tmp/sluice-target")
BIN = os.environ.get("SLUICE_RELEASE_BIN", str(Path(TARGET) / "release" / "sluice"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    assert hard > n + 100, f"fd hard limit {hard} too low for {n} connections"
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="sluice-idle-") as tmp:
        cfg = Path(tmp) / "sluice.toml"
        cfg.write_text(f"""
[server]
hostname = "idle.sluice.test"
data_dir = "{tmp}/data"
allow_root = true  # only matters when run as root
max_connections = {n + 100}
max_connections_per_ip = {n}

[[listener]]
name = "idle"
address = "127.0.0.1:{port}"
pipeline = "p"

[pipeline.p]
rcpt = ["relay"]

[plugins.relay]
path = "builtin:relay"

[log]
level = "warn"
""")
        # The server inherits our raised limit.
        server = subprocess.Popen([BIN, "serve", "--config", str(cfg)], stderr=open(Path(tmp) / "log", "w"))
        try:
            for _ in range(600):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            time.sleep(0.5)
            before = rss_kib(server.pid)
            sel = selectors.DefaultSelector()
            socks = []
            greeted = failed = 0
            start = time.monotonic()

            def collect(until, timeout):
                nonlocal greeted, failed
                deadline = time.monotonic() + timeout
                while greeted + failed < until and time.monotonic() < deadline:
                    for key, _ in sel.select(timeout=1):
                        try:
                            data = key.fileobj.recv(512)
                        except OSError:
                            data = b""
                        if data.startswith(b"220"):
                            greeted += 1
                        else:
                            failed += 1
                        sel.unregister(key.fileobj)

            # In batches no larger than the listen backlog, as clients
            # arrive over time rather than in one burst.
            batch = 500
            for i in range(n):
                s = socket.socket()
                s.bind((f"127.0.0.{2 + i % 253}", 0))
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", port))
                sel.register(s, selectors.EVENT_READ)
                socks.append(s)
                if (i + 1) % batch == 0:
                    collect(i + 1, 60)
            collect(n, 60)
            elapsed = time.monotonic() - start
            time.sleep(1)
            with_all = rss_kib(server.pid)
            print(f"connections={n} greeted={greeted} failed={failed} in {elapsed:.1f}s")
            print(f"server RSS: {before / 1024:.1f} MiB idle, {with_all / 1024:.1f} MiB with all open; "
                  f"{(with_all - before) / n:.1f} KiB per connection")
            for s in socks:
                s.close()
        finally:
            server.terminate()
            server.wait(timeout=60)


if __name__ == "__main__":
    main()

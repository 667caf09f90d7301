"""TLS sessions per second against a real sluice: each session connects,
completes a full handshake (no resumption), reads the greeting (implicit
TLS) or does EHLO/STARTTLS/EHLO, and quits. Prints sessions/s and the
server's CPU time per session.

    SLUICE_BIN=.../sluice python tests/bench/tls_handshakes.py [SECONDS] [CLIENTS]
"""
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool

BIN = os.environ.get("SLUICE_BIN", "/var/tmp/sluice-target/debug/sluice")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session(port, mode, ctx):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    if mode == "starttls":
        s.recv(512)
        s.sendall(b"EHLO bench.test\r\n")
        buf = b""
        while b"250 HELP\r\n" not in buf:
            buf += s.recv(4096)
        s.sendall(b"STARTTLS\r\n")
        s.recv(512)
    t = ctx.wrap_socket(s)
    if mode == "starttls":
        t.sendall(b"EHLO bench.test\r\n")
    t.recv(4096)
    t.sendall(b"QUIT\r\n")
    t.close()


def worker(args):
    port, mode, version, seconds = args
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = version
    done, end = 0, time.time() + seconds
    while time.time() < end:
        session(port, mode, ctx)
        done += 1
    return done


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10
    clients = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    plain, implicit, starttls = free_port(), free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = os.path.join(tmp, "sluice.toml")
        with open(cfg, "w") as f:
            f.write(f"""
[server]
hostname = "mx.example.test"
data_dir = "{tmp}/data"
allow_root = true  # only matters when run as root
max_connections_per_ip = 1000
[[listener]]
name = "plain"
address = "127.0.0.1:{plain}"
pipeline = "p"
[[listener]]
name = "implicit"
address = "127.0.0.1:{implicit}"
pipeline = "p"
tls = "implicit"
[[listener]]
name = "starttls"
address = "127.0.0.1:{starttls}"
pipeline = "p"
tls = "starttls"
[pipeline.p]
[log]
level = "warn"
""")
        server = subprocess.Popen([BIN, "serve", "--config", cfg], stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 60
            while True:
                try:
                    socket.create_connection(("127.0.0.1", plain), timeout=1).close()
                    break
                except OSError:
                    if time.time() > deadline or server.poll() is not None:
                        sys.exit("sluice did not start")
                    time.sleep(0.1)
            for mode, port in (("implicit", implicit), ("starttls", starttls)):
                for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
                    cpu0, t0 = cpu_seconds(server.pid), time.time()
                    with Pool(clients) as pool:
                        total = sum(pool.map(worker, [(port, mode, version, seconds)] * clients))
                    wall, cpu = time.time() - t0, cpu_seconds(server.pid) - cpu0
                    print(f"{mode:8} {version.name}: {total / wall:6.0f} sessions/s, "
                          f"server CPU {1000 * cpu / total:.2f} ms/session ({total} in {wall:.1f} s)")
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()

"""A power cut right after the 250s: the spool lives on a FUSE filesystem
(powercut_fs.py) that keeps only what was synced. Messages are acknowledged,
the power goes (only synced data and synced names survive), sluice is
restarted on what is left, and every acknowledged message must reach the
next hop."""
import os
import re
import shutil
import smtplib
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import Server, Sink, config, free_port

FS = Path(__file__).with_name("powercut_fs.py")
SESSIONS = 3
PER_SESSION = 10


class PowerCutFs:
    def __init__(self, mountpoint, control):
        self.mountpoint = Path(mountpoint)
        self.control = Path(control)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.control.mkdir(parents=True, exist_ok=True)
        self.log = open(self.control / "fs.log", "wb")
        self.proc = subprocess.Popen([sys.executable, str(FS), str(self.mountpoint), str(self.control)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 20
        while not os.path.ismount(self.mountpoint):
            if self.proc.poll() is not None or time.time() > deadline:
                self.unmount()
                pytest.fail(f"powercut filesystem did not mount: {(self.control / 'fs.log').read_text()}")
            time.sleep(0.05)

    def cut(self):
        """The power goes: returns the directory holding what survived."""
        (self.control / "cut").write_text("now")
        deadline = time.time() + 60
        while not (self.control / "done").exists():
            assert time.time() < deadline, "power cut did not complete"
            time.sleep(0.05)
        return self.control / "image"

    def unmount(self):
        subprocess.run(["fusermount", "-u", "-z", str(self.mountpoint)], capture_output=True)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


def fuse_available():
    return os.path.exists("/dev/fuse") and shutil.which("fusermount") is not None


def test_the_filesystem_keeps_only_what_was_synced(tmp_path):
    """The harness can fail: unsynced data and unsynced names are lost."""
    if not fuse_available():
        pytest.skip("no FUSE on this machine")
    fs = PowerCutFs(tmp_path / "mnt", tmp_path / "control")
    try:
        m = fs.mountpoint
        os.mkdir(m / "d")
        fd = os.open(m / "d" / "synced", os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
        os.write(fd, b"kept")
        os.fdatasync(fd)
        os.write(fd, b" lost")
        os.close(fd)
        for d in (m / "d", m):
            dfd = os.open(d, os.O_RDONLY)
            os.fsync(dfd)
            os.close(dfd)
        fd = os.open(m / "d" / "name-not-synced", os.O_CREAT | os.O_WRONLY, 0o600)
        os.write(fd, b"data synced, name not")
        os.fsync(fd)
        os.close(fd)
        image = fs.cut()
    finally:
        fs.unmount()
    assert (image / "d" / "synced").read_bytes() == b"kept"
    assert not (image / "d" / "name-not-synced").exists()


def message(tag, n, size=0):
    filler = ("z" * 70 + "\r\n") * (size // 72)
    return (f"From: a@example.org\r\nTo: user@example.test\r\nMessage-ID: <{tag}-{n}@example.org>\r\n"
            f"Subject: power cut {n}\r\n\r\nbody {n}\r\n{filler}").encode()


def test_acknowledged_messages_survive_a_power_cut(tmp_path):
    if not fuse_available():
        pytest.skip("no FUSE on this machine")
    port, sink_port = free_port(), free_port()
    data = tmp_path / "data"
    spool = data / "spool"
    data.mkdir()
    os.chmod(data, 0o700)
    text = config(port, data, extra='[[delivery.route]]\ndomain = "example.test"\n'
                                    f'next_hop = "127.0.0.1:{sink_port}"\n')
    fs = PowerCutFs(spool, tmp_path / "control")
    acked = []
    lock = threading.Lock()
    errors = []
    try:
        server = Server(tmp_path, text).start(port)

        def client(s):
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
                    for n in range(PER_SESSION):
                        msg_id = s * 100 + n
                        # One message of ~2 MiB per session: records across a roll.
                        body = message("cut", msg_id, 2 << 20 if n == PER_SESSION - 1 else 0)
                        if smtp.sendmail("a@example.org", ["user@example.test"], body) == {}:
                            with lock:
                                acked.append(f"<cut-{msg_id}@example.org>")
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))

        threads = [threading.Thread(target=client, args=(s,)) for s in range(SESSIONS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not errors, errors
        assert len(acked) == SESSIONS * PER_SESSION
        # The power goes right after the last 250.
        image = fs.cut()
        server.kill9()
    finally:
        fs.unmount()

    # The machine comes back with what reached the disk.
    shutil.rmtree(spool, ignore_errors=True)
    shutil.copytree(image, spool)
    sink = Sink(sink_port).start()
    server = Server(tmp_path, text).start(port)
    try:
        messages = sink.wait(len(acked), timeout=120)
        got = {m.group(1).decode() for m in
               (re.search(rb"Message-ID: (<[^>]+>)", e.original_content) for e in messages) if m}
        missing = set(acked) - got
        assert not missing, f"{len(missing)} of {len(acked)} acknowledged messages lost: {sorted(missing)[:5]}"
    finally:
        server.stop()
        sink.stop()

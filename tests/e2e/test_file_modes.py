"""Nothing sluice creates under its data directory is open to other users,
even when it is started with a permissive umask: spool, Maildir, users
file, self-signed key, plugin cache, admin socket. Private keys the config
names that others can read are reported at start."""
import os
import smtplib
import stat
import subprocess
import time

from conftest import BIN, Server, config, free_port


def walk(root):
    """Every path under root (root included), without following links."""
    yield str(root)
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            yield os.path.join(directory, name)


def open_to_others(root):
    return sorted(
        (path, oct(stat.S_IMODE(os.lstat(path).st_mode)))
        for path in walk(root)
        if not os.path.islink(path) and os.lstat(path).st_mode & 0o007
    )


def test_data_dir_has_nothing_for_others_after_a_delivery(tmp_path):
    port, submission = free_port(), free_port()
    data = tmp_path / "data"
    # A second listener with STARTTLS and no certificate: the server
    # generates its self-signed key under data/tls.
    extra = (
        f'[[listener]]\nname = "sub"\naddress = "127.0.0.1:{submission}"\n'
        'pipeline = "inbound"\ntls = "starttls"\n'
    )
    text = config(port, data, extra=extra)
    cfg = tmp_path / "sluice.toml"
    cfg.write_text(text)
    # The umask a careless init script or shell leaves; the children inherit it.
    previous = os.umask(0o022)
    server = None
    try:
        added = subprocess.run(
            [BIN, "user", "add", "alice", "--password-stdin", "--config", str(cfg)],
            input="correct horse battery\n", capture_output=True, text=True, timeout=60,
        )
        assert added.returncode == 0, added.stderr
        server = Server(tmp_path, text).start(port)
    finally:
        os.umask(previous)
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp.sendmail("a@example.org", ["user@localhost"], b"Subject: modes\r\n\r\nbody\r\n")
        deadline = time.time() + 30
        while time.time() < deadline and not server.maildir("user"):
            time.sleep(0.1)
        assert server.maildir("user"), server.log.read_text()
        for expected in ("spool", "mail/localhost/user/new", "tls/key.pem", "users", "admin.sock"):
            assert (data / expected).exists(), expected
        assert open_to_others(data) == []
        assert stat.S_IMODE(data.stat().st_mode) in (0o700, 0o750), oct(data.stat().st_mode)
    finally:
        assert server.stop() == 0
    assert open_to_others(data) == []


def test_an_existing_data_dir_open_to_others_is_closed(sluice, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    os.chmod(data, 0o755)
    server = sluice()
    assert stat.S_IMODE(data.stat().st_mode) == 0o750
    assert server.stop() == 0
    assert "removing others' access" in server.log.read_text()


def test_private_keys_others_may_read_are_reported(tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    made = subprocess.run([BIN, "dkim", "keygen", "example.org", "s1", "--algorithm", "ed25519", "--out", str(keys)],
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    key = keys / "example.org.s1.pem"
    port = free_port()
    extra = f'[[dkim.sign]]\ndomain = "example.org"\nselector = "s1"\nkey = "{key}"\nalgorithm = "ed25519-sha256"\n'
    text = config(port, tmp_path / "data", extra=extra)
    cfg = tmp_path / "sluice.toml"
    cfg.write_text(text)
    line = next(i for i, l in enumerate(text.splitlines(), 1) if l.startswith("key = "))

    checked = subprocess.run([BIN, "check-config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and "warning" not in checked.stderr, checked.stderr

    os.chmod(key, 0o644)
    checked = subprocess.run([BIN, "check-config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert "warning: " in checked.stderr and f"sluice.toml:{line}:" in checked.stderr, checked.stderr
    assert "dkim.sign[0].key" in checked.stderr and "mode 0644" in checked.stderr, checked.stderr

    server = Server(tmp_path, text).start(port)
    assert server.stop() == 0
    log = server.log.read_text()
    assert "dkim.sign[0].key" in log and "readable by group or others" in log, log

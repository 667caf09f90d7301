"""Started as root, sluice binds its listeners, hands its data directory to
`[server] user` and becomes that user (every thread, all four ids, no
supplementary groups) before it serves; without a user it refuses to
start, naming the key. Runs only as root (as CI does): it creates a system
account with useradd and removes it afterwards."""
import os
import pwd
import grp
import shutil
import smtplib
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from conftest import BIN, Server, config, free_port
from test_file_modes import open_to_others, walk

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: starts sluice as root and creates a user")


@pytest.fixture
def account():
    name = f"sluice-t{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--user-group",
                    "--shell", "/usr/sbin/nologin", name], check=True, timeout=60)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], timeout=60)
        # userdel drops the user's group with it where the system does so.
        if name in {g.gr_name for g in grp.getgrall()}:
            subprocess.run(["groupdel", name], timeout=60)


@pytest.fixture
def base():
    # Not under pytest's tmp_path: /tmp/pytest-of-root is closed to other
    # users, and the dropped server must still reach its data directory.
    root = Path(tempfile.mkdtemp(prefix="sluice-privdrop-", dir="/var/tmp"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def without_escape(text):
    assert "allow_root" not in text
    return text


def start(base, text, port):
    cfg = base / "sluice.toml"
    cfg.write_text(without_escape(text))
    # args: the config as written, without the suite's allow_root.
    return Server(base, text, args=["serve", "--config", str(cfg)]).start(port)


def ids(pid, field):
    """The `field` line (Uid, Gid, Groups) of every thread of the process."""
    lines = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith(field + ":"):
                lines.add(tuple(line.split()[1:]))
    return lines


def plain_config(port, data, server_extra):
    # conftest's config() adds allow_root when run as root; this test
    # needs the config without it.
    return config(port, data, server_extra=server_extra).replace("allow_root = true\n", "")


@pytest.mark.parametrize("group", [None, "nogroup"])
def test_root_drops_to_the_configured_user_and_still_delivers(account, base, group):
    data = base / "data"
    # What an earlier start as root left behind: root's, to be handed over.
    for directory in (data, data / "mail", data / "mail" / "localhost"):
        directory.mkdir(mode=0o750)
    server_extra = f'user = "{account.pw_name}"\n' + (f'group = "{group}"\n' if group else "")
    port = free_port()
    server = start(base, plain_config(port, data, server_extra), port)
    gid = grp.getgrnam(group).gr_gid if group else account.pw_gid
    try:
        uid = str(account.pw_uid)
        assert ids(server.proc.pid, "Uid") == {(uid,) * 4}, server.log.read_text()
        assert ids(server.proc.pid, "Gid") == {(str(gid),) * 4}
        groups = ids(server.proc.pid, "Groups")
        assert all("0" not in line for line in groups), groups

        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp.sendmail("a@example.org", ["user@localhost"], b"Subject: dropped\r\n\r\nbody\r\n")
        deadline = time.time() + 30
        while time.time() < deadline and not server.maildir("user"):
            time.sleep(0.1)
        assert server.maildir("user"), server.log.read_text()
        # The operator adds a user as root while the server runs as its
        # own: the users file must stay the server's to read.
        added = subprocess.run([BIN, "user", "add", "alice", "--password-stdin", "--config", str(base / "sluice.toml")],
                               input="correct horse battery\n", capture_output=True, text=True, timeout=60)
        assert added.returncode == 0, added.stderr
    finally:
        assert server.stop() == 0, server.log.read_text()
    owners = {(p, os.lstat(p).st_uid, os.lstat(p).st_gid) for p in walk(data)}
    assert {o for o in owners if o[1:] != (account.pw_uid, gid)} == set()
    assert open_to_others(data) == []
    assert "dropped root" in server.log.read_text()


@pytest.mark.parametrize("server_extra, error", [
    ("", "started as root without [server] user"),
    ('user = "no-such-sluice-user"\n', '[server] user: no such user "no-such-sluice-user"'),
])
def test_root_without_a_usable_user_is_refused_naming_the_key(base, server_extra, error):
    port = free_port()
    cfg = base / "sluice.toml"
    cfg.write_text(without_escape(plain_config(port, base / "data", server_extra)))
    result = subprocess.run([BIN, "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert error in result.stderr, result.stderr
    # Refused before the spool exists.
    assert not (base / "data" / "spool").exists()


def test_allow_root_keeps_root_and_warns(base):
    port = free_port()
    text = config(port, base / "data")
    assert "allow_root = true" in text
    server = Server(base, text).start(port)
    try:
        assert ids(server.proc.pid, "Uid") == {("0",) * 4}
    finally:
        server.stop()
    assert "running as root: [server] allow_root is set" in server.log.read_text()

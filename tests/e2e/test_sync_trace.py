"""The durability contract, checked where it is kept: the real binary runs
under strace, and for every message the syscalls between the 354 and the 250
after DATA must show that each file written in the data dir was fsynced or
fdatasynced after its last write, and each directory in which a name was
created, renamed or removed was fsynced after that change (or the filesystem
syncfs'ed). sync_file_range does not count. Small messages and messages of
several MiB are checked."""
import os
import re
import signal
import smtplib
import socket
import subprocess
import time

from conftest import BIN, config, free_port

SMALL = 5
LARGE_MIB = (3, 6)

# pid, then either a complete call, an unfinished one, or a resumption.
LINE = re.compile(r"^(\d+) +(?:<\.\.\. (\w+) resumed>(.*)|(\w+)\((.*))$")
FD_PATH = re.compile(r"^-?\d+<(.*?)>")
WRITES = {"write", "pwrite64", "writev", "pwritev", "pwritev2"}
SYNCS = {"fsync", "fdatasync"}
TRACED = ("write,pwrite64,writev,pwritev,pwritev2,sendto,sendmsg,fsync,fdatasync,syncfs,"
          "sync_file_range,openat,rename,renameat,renameat2,unlink,unlinkat,mkdir,mkdirat")


def events(trace_text):
    """(call, args, result) per syscall, in completion order; an unfinished
    call is placed where it resumed (for a sync, where it took effect)."""
    pending = {}
    for line in trace_text.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        pid, resumed_call, resumed_rest, call, rest = m.groups()
        if resumed_call:
            args = pending.pop((pid, resumed_call), "")
            yield resumed_call, args + resumed_rest
        elif rest.endswith("<unfinished ...>"):
            pending[(pid, call)] = rest[: -len("<unfinished ...>")]
        else:
            yield call, rest


def first_path(args):
    m = FD_PATH.match(args)
    return m.group(1) if m else None


def quoted_paths(args):
    return re.findall(r'"((?:[^"\\]|\\.)*)"', args)


def changed_dirs(call, args, cwd):
    """Directories whose names a call changes, as absolute paths."""
    def absolute(p, base):
        return os.path.normpath(p if p.startswith("/") else os.path.join(base, p))

    dirs = []
    if call in ("openat",):
        if "O_CREAT" not in args:
            return []
        # The returned fd names the created file.
        m = re.search(r"= \d+<(.*?)>", args)
        if m:
            dirs.append(os.path.dirname(m.group(1)))
        return dirs
    # *at calls: dirfd<path>, "name"; plain calls: "path".
    bases = re.findall(r"(?:AT_FDCWD|-?\d+)<(.*?)>", args)
    names = quoted_paths(args)
    for i, name in enumerate(names):
        base = bases[i] if i < len(bases) else cwd
        dirs.append(os.path.dirname(absolute(name, base)))
    return dirs


def check_windows(trace_text, data_dir, cwd):
    """Checks every 354 → 250 window; returns the syncs counted in each."""
    data_dir = str(data_dir)
    windows = []
    window = None
    for call, args in events(trace_text):
        path = first_path(args)
        if call in WRITES | {"sendto", "sendmsg"} and path and path.startswith("TCP:"):
            if '"354 ' in args:
                window = {"written": {}, "synced": {}, "dirs": {}, "dir_synced": {}, "syncfs": -1,
                          "syncs": 0, "n": 0}
            elif '"250 ' in args and "queued as" in args and window is not None:
                windows.append(window)
                window = None
            continue
        if window is None:
            continue
        window["n"] += 1
        n = window["n"]
        if call in WRITES and path and path.startswith(data_dir):
            window["written"][path] = n
        elif call in SYNCS and path and path.startswith(data_dir):
            window["syncs"] += 1
            window["synced"][path] = n
            window["dir_synced"][path] = n
        elif call == "syncfs":
            window["syncs"] += 1
            window["syncfs"] = n
        elif call in ("openat", "rename", "renameat", "renameat2", "unlink", "unlinkat", "mkdir", "mkdirat"):
            if "= -1" in args:
                continue
            for d in changed_dirs(call, args, cwd):
                if d.startswith(data_dir):
                    window["dirs"][d] = n
    problems = []
    for i, w in enumerate(windows):
        for path, at in w["written"].items():
            if max(w["synced"].get(path, -1), w["syncfs"]) < at:
                problems.append(f"message {i}: {path} written without a sync after it")
        for d, at in w["dirs"].items():
            if max(w["dir_synced"].get(d, -1), w["syncfs"]) < at:
                problems.append(f"message {i}: names changed in {d} without an fsync of it")
    return windows, problems


def stop_traced(strace):
    """Stops the traced server itself: strace, signalled, would only detach
    and leave it running."""
    def signal_server(sig):
        found = subprocess.run(["pgrep", "-P", str(strace.pid)], capture_output=True, text=True)
        for pid in found.stdout.split():
            try:
                os.kill(int(pid), sig)
            except ProcessLookupError:
                pass

    signal_server(signal.SIGTERM)
    try:
        strace.wait(30)
    except subprocess.TimeoutExpired:
        signal_server(signal.SIGKILL)
        strace.kill()
        strace.wait(10)


def test_every_acknowledged_message_was_synced_before_its_250(tmp_path):
    port = free_port()
    data = tmp_path / "data"
    # Relayed to a next hop that takes the connection and never greets, so
    # no delivery attempt finishes (and writes its record) while messages
    # arrive: every write in a window is the message's own.
    tarpit = socket.socket()
    tarpit.bind(("127.0.0.1", 0))
    tarpit.listen(64)
    text = config(port, data, extra='[[delivery.route]]\ndomain = "example.test"\n'
                                    f'next_hop = "127.0.0.1:{tarpit.getsockname()[1]}"\n')
    cfg = tmp_path / "sluice.toml"
    cfg.write_text(text)
    trace = tmp_path / "trace.txt"
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(["strace", "-f", "-qq", "-yy", "-s", "64", "-o", str(trace),
                             "-e", f"trace={TRACED}", BIN, "serve", "--config", str(cfg)],
                            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        smtp = None
        deadline = time.time() + 120
        while time.time() < deadline:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                smtp = smtplib.SMTP("127.0.0.1", port, timeout=30)
                break
            except OSError:
                time.sleep(0.2)
        assert smtp is not None, "server did not come up under strace"
        with smtp:
            smtp.ehlo("client.test")
            bodies = [f"Subject: small {n}\r\n\r\nsmall message {n}\r\n".encode() for n in range(SMALL)]
            for mib in LARGE_MIB:
                line = b"y" * 998 + b"\r\n"
                bodies.append(b"Subject: large\r\n\r\n" + line * (mib * 1024 * 1024 // len(line)))
            for body in bodies:
                assert smtp.sendmail("a@example.org", ["user@example.test"], body) == {}
    finally:
        stop_traced(proc)
        log.close()
        tarpit.close()

    windows, problems = check_windows(trace.read_text(errors="replace"), data, tmp_path)
    assert len(windows) == SMALL + len(LARGE_MIB), f"found {len(windows)} DATA windows"
    print("syncs per message:", [w["syncs"] for w in windows])
    assert not problems, "\n".join(problems)
    # Nothing was acknowledged without a single sync.
    assert all(w["syncs"] >= 1 for w in windows)


def test_the_checker_catches_a_write_left_unsynced():
    """The check itself: a window whose file write has no sync after it, or
    whose new name's directory was not synced, is reported."""
    tcp = "3<TCP:[127.0.0.1:2525->127.0.0.1:4000]>"
    base = "/d/spool/segments/1.seg"
    good = "\n".join([
        f'1 write({tcp}, "354 End data"..., 12) = 12',
        f'2 pwrite64(5<{base}>, "SLR1"..., 20, 16) = 20',
        f'2 fdatasync(5<{base}>) = 0',
        f'1 write({tcp}, "250 2.0.0 queued as 1"..., 20) = 20',
    ])
    assert check_windows(good, "/d", "/")[1] == []
    unsynced = "\n".join([
        f'1 write({tcp}, "354 End data"..., 12) = 12',
        f'2 fdatasync(5<{base}>) = 0',
        f'2 pwrite64(5<{base}>, "SLR1"..., 20, 16) = 20',
        f'2 sync_file_range(5<{base}>, 0, 20, 7) = 0',
        f'1 write({tcp}, "250 2.0.0 queued as 1"..., 20) = 20',
    ])
    assert len(check_windows(unsynced, "/d", "/")[1]) == 1
    new_name = "\n".join([
        f'1 write({tcp}, "354 End data"..., 12) = 12',
        '2 openat(AT_FDCWD</>, "/d/spool/segments/2.seg", O_RDWR|O_CREAT|O_EXCL|O_CLOEXEC, 0666) = 6</d/spool/segments/2.seg>',
        '2 fdatasync(6</d/spool/segments/2.seg>) = 0',
        f'1 write({tcp}, "250 2.0.0 queued as 1"..., 20) = 20',
    ])
    assert check_windows(new_name, "/d", "/")[1] == [
        "message 0: names changed in /d/spool/segments without an fsync of it"]
    resumed = "\n".join([
        f'1 write({tcp}, "354 End data"..., 12) = 12',
        f'2 pwrite64(5<{base}>, "SLR1"..., 20, 16) = 20',
        f'2 fdatasync(5<{base}> <unfinished ...>',
        f'1 write({tcp}, "250 2.0.0 queued as 1"..., 20) = 20',
        '2 <... fdatasync resumed>) = 0',
    ])
    assert len(check_windows(resumed, "/d", "/")[1]) == 1

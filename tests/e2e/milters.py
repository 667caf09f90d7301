"""Real milters for the end-to-end suite, each started by the test with its
own configuration in the test's tmp dir, listening on 127.0.0.1 only, and
stopped (SIGTERM, then SIGKILL) when the test ends: OpenDKIM signing,
clamav-milter in front of a clamd whose only signature database is one
the test writes (no freshclam, no downloaded signatures), and rspamd's
proxy worker in milter mode scanning itself, on its local rules only (its
resolver pointed at a local DNS server, no Redis)."""
import shutil
import signal
import tempfile
import socket
import subprocess
import time
from pathlib import Path

from conftest import free_port

# The marker the test signature matches: an EICAR-style harmless string.
VIRUS_MARKER = b"SLUICE-MILTER-TEST-SIGNATURE-7f3a9c-NOT-A-REAL-VIRUS"


def require(program):
    """Fails (never skips) when a milter's program is missing."""
    assert shutil.which(program), f"{program} is missing: run `bash tests/install-peers.sh` (as root)"


def wait_listening(address, proc, log, timeout=120):
    """Until something accepts on `address` (a TCP port on 127.0.0.1, or a
    unix socket path); fails if the daemon exits first."""
    family, target = ((socket.AF_INET, ("127.0.0.1", address)) if isinstance(address, int)
                      else (socket.AF_UNIX, str(address)))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode}: {Path(log).read_text(errors='replace')}")
        try:
            with socket.socket(family) as s:
                s.settimeout(1)
                s.connect(target)
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {address}: {Path(log).read_text(errors='replace')}")


class Process:
    """One daemon run in the foreground, its output in `log`."""

    def __init__(self, args, log):
        self.log = Path(log)
        self.proc = subprocess.Popen(args, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class OpenDkim(Process):
    """OpenDKIM signing mail from example.org with selector `selector`;
    `record` is the TXT record to publish."""

    def __init__(self, tmp, selector="m1", domain="example.org"):
        require("opendkim")
        require("opendkim-genkey")
        tmp = Path(tmp) / "opendkim"
        tmp.mkdir()
        subprocess.run(["opendkim-genkey", "-D", str(tmp), "-d", domain, "-s", selector], check=True, timeout=60)
        text = (tmp / f"{selector}.txt").read_text()
        self.record = "".join(text.split('"')[1::2])
        self.port = free_port()
        conf = tmp / "opendkim.conf"
        conf.write_text(f"""Syslog no
Mode s
Domain {domain}
Selector {selector}
KeyFile {tmp / f'{selector}.private'}
RequireSafeKeys false
Socket inet:{self.port}@127.0.0.1
Canonicalization relaxed/relaxed
PidFile {tmp / 'opendkim.pid'}
""")
        super().__init__(["opendkim", "-f", "-x", str(conf)], tmp / "opendkim.log")
        wait_listening(self.port, self.proc, self.log)


class Clamav:
    """clamd on a database holding only a signature for VIRUS_MARKER, and
    clamav-milter doing `on_infected` (Reject, Quarantine…) with what it
    finds."""

    def __init__(self, tmp, on_infected="Reject", unix=False):
        require("clamd")
        require("clamav-milter")
        tmp = Path(tmp) / "clamav"
        (tmp / "db").mkdir(parents=True)
        (tmp / "db" / "sluice-test.ndb").write_text(f"Sluice.Test.Signature:0:*:{VIRUS_MARKER.hex()}\n")
        self.clamd_port, self.port = free_port(), free_port()
        # A socket path must fit sun_path (108 octets): a short dir of its own.
        self.socket_dir = Path(tempfile.mkdtemp(prefix="milter-")) if unix else None
        self.address = (f"unix:{self.socket_dir / 'clamav-milter.sock'}" if unix
                        else f"inet:127.0.0.1:{self.port}")
        milter_socket = self.address if unix else f"inet:{self.port}@127.0.0.1"
        clamd_conf = tmp / "clamd.conf"
        clamd_conf.write_text(f"""Foreground yes
TCPSocket {self.clamd_port}
TCPAddr 127.0.0.1
DatabaseDirectory {tmp / 'db'}
LogFile {tmp / 'clamd.file.log'}
PidFile {tmp / 'clamd.pid'}
Bytecode no
""")
        milter_conf = tmp / "clamav-milter.conf"
        milter_conf.write_text(f"""Foreground yes
MilterSocket {milter_socket}
ClamdSocket tcp:127.0.0.1:{self.clamd_port}
OnInfected {on_infected}
RejectMsg "Virus found: %v"
OnFail Defer
AddHeader Replace
LogFile {tmp / 'milter.file.log'}
LogInfected Basic
PidFile {tmp / 'clamav-milter.pid'}
""")
        self.clamd = Process(["clamd", "--config-file", str(clamd_conf)], tmp / "clamd.log")
        try:
            wait_listening(self.clamd_port, self.clamd.proc, self.clamd.log)
            self.milter = Process(["clamav-milter", "--config-file", str(milter_conf)], tmp / "milter.log")
            where = self.socket_dir / "clamav-milter.sock" if unix else self.port
            wait_listening(where, self.milter.proc, self.milter.log)
        except BaseException:
            self.stop()
            raise

    def stop(self):
        for process in (getattr(self, "milter", None), self.clamd):
            if process:
                process.stop()
        if self.socket_dir:
            shutil.rmtree(self.socket_dir, ignore_errors=True)


# rspamd's GTUBE: the test string its rules reject on sight.
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


class Rspamd(Process):
    """rspamd's packaged rules (CONFDIR) with a top-level config of the
    test's own: only the proxy worker, in milter mode, scanning itself;
    its databases, run and log dirs in the tmp dir. Its headers are added
    for loopback clients too (skip_local = false)."""

    def __init__(self, tmp, dns_port):
        require("rspamd")
        tmp = Path(tmp) / "rspamd"
        local = tmp / "local" / "local.d"
        for d in (local, tmp / "db", tmp / "run", tmp / "log"):
            d.mkdir(parents=True)
        self.port = free_port()
        (local / "options.inc").write_text(f"""dns {{
    nameserver = ["127.0.0.1:{dns_port}"];
    timeout = 1s;
    retransmits = 1;
}}
""")
        (local / "milter_headers.conf").write_text("""extended_spam_headers = true;
skip_local = false;
skip_authenticated = false;
""")
        conf = tmp / "rspamd.conf"
        conf.write_text(f"""
.include "$CONFDIR/common.conf"
options {{
    pidfile = "$RUNDIR/rspamd.pid";
    .include "$CONFDIR/options.inc"
    .include(try=true; priority=1,duplicate=merge) "$LOCAL_CONFDIR/local.d/options.inc"
}}
logging {{
    type = "file";
    filename = "$LOGDIR/rspamd.log";
    level = "info";
}}
worker "rspamd_proxy" {{
    bind_socket = "127.0.0.1:{self.port}";
    milter = yes;
    timeout = 120s;
    upstream "local" {{
        default = yes;
        self_scan = yes;
    }}
    count = 1;
    spam_header = "X-Spam";
    reject_message = "Spam message rejected";
}}
""")
        args = ["rspamd", "-f", "-i", "-c", str(conf), f"--var=LOCAL_CONFDIR={tmp / 'local'}",
                f"--var=DBDIR={tmp / 'db'}", f"--var=RUNDIR={tmp / 'run'}", f"--var=LOGDIR={tmp / 'log'}"]
        super().__init__(args, tmp / "rspamd.out")
        wait_listening(self.port, self.proc, self.log)

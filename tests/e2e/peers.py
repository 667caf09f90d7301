"""Real peers for the end-to-end suite, each a separate instance of software
nobody here wrote: a Postfix MX offering STARTTLS and relaying into a Sink,
a Dovecot LMTP server with a few mailboxes, and Postfix's smtp-sink and
smtp-source. Every peer listens on 127.0.0.1 only and is stopped (and its
leftover processes killed) when the test ends, failed or not.

Postfix's and Dovecot's daemons run as unprivileged users (postfix, dovenull,
nobody) that cannot enter pytest's private tmp directories (mode 0700), so
each peer works in its own world-readable directory under the system temp
dir, removed on stop after its logs are copied into the test's tmp dir."""
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import Sink, free_port

POSTFIX_SBIN = "/usr/sbin/postfix"
POSTFIX_DAEMONS = "/usr/lib/postfix/sbin"


def require(*paths):
    """Fails (never skips) when a peer's program is missing."""
    for path in paths:
        found = shutil.which(path) if "/" not in path else (path if os.path.exists(path) else None)
        assert found, f"{path} is missing: run `bash tests/install-peers.sh` (as root)"


def peer_dir(prefix):
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def wait_for(predicate, timeout=30, step=0.1):
    """Polls predicate until it returns something truthy or the bound runs out;
    returns its last value either way."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(step)


def wait_greeting(port, timeout=30, proc=None, prefix=b"220"):
    def greets():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"peer on port {port} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.settimeout(5)
                return s.recv(512).startswith(prefix)
        except OSError:
            return False

    assert wait_for(greets, timeout), f"nothing greets on 127.0.0.1:{port} within {timeout} s"


def descendants(pid):
    """pid and every process below it, from /proc."""
    children = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def kill_all(pids):
    for pid in pids:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# --- certificates ------------------------------------------------------------

class Certs:
    """A throwaway CA and a server certificate it signed, for 127.0.0.1 and
    `names` (default localhost) (a self-signed CA:TRUE certificate is refused as a server
    certificate by webpki, so the CA and the leaf are separate)."""

    def __init__(self, directory: Path, names=("localhost",)):
        require("openssl")
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.ca_file = d / "ca.pem"
        self.cert_file = d / "cert.pem"
        self.key_file = d / "key.pem"
        ca_key = d / "ca.key"
        ext = d / "leaf.ext"
        ext.write_text("basicConstraints = critical, CA:FALSE\n"
                       "keyUsage = critical, digitalSignature, keyEncipherment\n"
                       "extendedKeyUsage = serverAuth\n"
                       "subjectAltName = IP:127.0.0.1, " + ", ".join(f"DNS:{n}" for n in names) + "\n")
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)
        run("req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(self.ca_file), "-days", "7",
            "-subj", "/CN=sluice test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        csr = d / "leaf.csr"
        run("req", "-new", *ec, "-keyout", str(self.key_file), "-out", str(csr), "-subj", f"/CN={names[0]}")
        run("x509", "-req", "-in", str(csr), "-CA", str(self.ca_file), "-CAkey", str(ca_key),
            "-CAcreateserial", "-out", str(self.cert_file), "-days", "7", "-extfile", str(ext))
        self.key_file.chmod(0o600)


# --- Postfix -------------------------------------------------------------------

POSTFIX_MAIN = """\
compatibility_level = 3.6
# a separate instance: own config dir, queue, data dir and log file
queue_directory = {root}/queue
data_directory = {root}/data
command_directory = /usr/sbin
daemon_directory = {daemons}
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
syslog_name = postfix-sluice-test
maillog_file = {root}/postfix.log
maillog_file_prefixes = {root}

myhostname = mx.example.net
mydomain = example.net
myorigin = $myhostname
mydestination =
local_recipient_maps =
local_transport = error:5.1.1 no local delivery here
alias_maps =
alias_database =
biff = no
append_dot_mydomain = no
smtp_dns_support_level = disabled
smtp_host_lookup = native
smtpd_peername_lookup = no
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtp_bind_address = 127.0.0.1
# a sink that fails is retried soon, not in Postfix's default minutes
minimal_backoff_time = 1s
maximal_backoff_time = 2s
queue_run_delay = 1s

# mail for the test domain goes to the Sink
relay_domains = {domain}
relay_recipient_maps =
transport_maps = inline:{{ {domain}=smtp:[127.0.0.1]:{sink_port} }}
smtp_tls_security_level = none

{tls}
{extra}
"""

POSTFIX_TLS = """\
smtpd_tls_security_level = may
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_loglevel = 1
# the Received header names the TLS version and cipher of each message
smtpd_tls_received_header = yes
"""

POSTFIX_MASTER = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixMX:
    """A Postfix instance on 127.0.0.1:port accepting mail for `domain` (with
    STARTTLS unless starttls=False) and relaying it to its own Sink.
    `main_extra` is appended to its main.cf (a later setting wins).
    `nameserver` (an address answering DNS on port 53): its SMTP client
    runs chrooted in the queue directory, whose etc/resolv.conf names only
    that server, so MX lookups go to the test's zone, not the system's.
    `cert_names`: the names its STARTTLS certificate is for."""

    def __init__(self, keep_dir: Path, port=None, domain="example.net", starttls=True, main_extra="",
                 nameserver=None, cert_names=("localhost",)):
        require(POSTFIX_SBIN, f"{POSTFIX_DAEMONS}/master", "openssl")
        self.keep_dir = Path(keep_dir)
        self.address = "127.0.0.1"
        self.port = port or free_port()
        self.domain = domain
        self.starttls = starttls
        self.main_extra = main_extra
        self.nameserver = nameserver
        self.root = peer_dir("sluice-postfix-")
        self.conf = self.root / "etc"
        self.conf.mkdir()
        self.log_file = self.root / "postfix.log"
        self.certs = Certs(self.root / "tls", names=cert_names) if starttls else None
        self.sink = Sink(free_port())
        self.pid = None
        self.sink_running = False

    @property
    def ca_file(self):
        """The CA that signed the server certificate (what a client trusts)."""
        return self.certs.ca_file if self.certs else None

    @property
    def cert_file(self):
        return self.certs.cert_file if self.certs else None

    def start(self):
        tls = POSTFIX_TLS.format(cert=self.certs.cert_file, key=self.certs.key_file) if self.certs else \
            "smtpd_tls_security_level = none\n"
        (self.conf / "main.cf").write_text(POSTFIX_MAIN.format(
            root=self.root, daemons=POSTFIX_DAEMONS, domain=self.domain, sink_port=self.sink.port, tls=tls,
            extra=self.main_extra))
        master = POSTFIX_MASTER.format(port=self.port)
        (self.root / "queue").mkdir()
        if self.nameserver:
            master = re.sub(r"(?m)^smtp      unix  -       -       n", "smtp      unix  -       -       y", master)
            (self.root / "queue" / "etc").mkdir()
            (self.root / "queue" / "etc" / "resolv.conf").write_text(
                f"nameserver {self.nameserver}\noptions attempts:2 timeout:2\n")
        (self.conf / "master.cf").write_text(master)
        data = self.root / "data"
        data.mkdir()
        shutil.chown(data, "postfix", "postfix")
        self.log_file.touch()
        self.sink.start()
        self.sink_running = True
        self._postfix("start")
        self.pid = wait_for(self._master_pid, 30)
        assert self.pid, f"postfix master did not start:\n{self.log()}"
        wait_greeting(self.port)
        return self

    def _postfix(self, command, check=True):
        result = subprocess.run([POSTFIX_SBIN, "-c", str(self.conf), command], capture_output=True, text=True)
        if check and result.returncode != 0:
            raise AssertionError(f"postfix {command} failed: {result.stdout}{result.stderr}\n{self.log()}")
        return result

    def _master_pid(self):
        try:
            pid = int((self.root / "queue" / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            return pid if Path(f"/proc/{pid}/comm").read_text().strip() == "master" else None
        except OSError:
            return None

    def log(self):
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def wait_log(self, pattern, count=1, timeout=30):
        """Waits until `pattern` (a regex) occurs `count` times in the log;
        returns the matches found."""
        wait_for(lambda: len(re.findall(pattern, self.log())) >= count, timeout)
        return re.findall(pattern, self.log())

    def queue_files(self):
        n = 0
        for d in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _, _, files in os.walk(self.root / "queue" / d):
                n += len(files)
        return n

    def stop(self):
        if self.pid:
            pids = descendants(self.pid)
            self._postfix("stop", check=False)
            wait_for(lambda: not alive(self.pid), 20)
            kill_all(pids)
            self.pid = None
        if self.sink_running:
            self.sink.stop()
            self.sink_running = False
        if self.root.exists():
            if self.log_file.exists():
                shutil.copy(self.log_file, self.keep_dir / f"postfix-{self.port}.log")
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def postfix_mx(tmp_path):
    """Factory: postfix_mx(port=None, domain="example.net", starttls=True,
    run=True) makes a PostfixMX and starts it (unless run=False: the test
    calls .start() itself); every one is stopped at teardown."""
    started = []

    def start(run=True, **kw):
        mx = PostfixMX(tmp_path, **kw)
        started.append(mx)
        return mx.start() if run else mx

    yield start
    for mx in started:
        mx.stop()


# --- Dovecot LMTP --------------------------------------------------------------

DOVECOT_CONF = """\
base_dir = {root}/run
state_dir = {root}/state
instance_name = sluice-test-{port}
log_path = {root}/dovecot.log
protocols = lmtp
listen = 127.0.0.1
ssl = no
mail_location = maildir:{root}/mail/%d/%n
mail_uid = nobody
mail_gid = nogroup
first_valid_uid = 1
auth_username_format = %Lu
passdb {{
  driver = passwd-file
  args = {root}/users
}}
userdb {{
  driver = passwd-file
  args = {root}/users
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
  unix_listener lmtp {{
    mode = 0666
  }}
}}
"""


class DovecotLMTP:
    """A Dovecot instance speaking LMTP on 127.0.0.1:port and on a unix
    socket, with mailboxes for `users` (user@domain); any other recipient
    gets 550 at RCPT. `conf_extra` is appended to its dovecot.conf."""

    def __init__(self, keep_dir: Path, users=("alice@example.org", "bob@example.org"), port=None, conf_extra=""):
        require("dovecot", "doveadm")
        self.keep_dir = Path(keep_dir)
        self.port = port or free_port()
        self.users = [u.lower() for u in users]
        self.root = peer_dir("sluice-dovecot-")
        self.conf = self.root / "dovecot.conf"
        self.log_file = self.root / "dovecot.log"
        self.socket_path = self.root / "run" / "lmtp"
        self.conf_extra = conf_extra
        self.proc = None

    def start(self):
        self.conf.write_text(DOVECOT_CONF.format(root=self.root, port=self.port) + self.conf_extra)
        nobody = (65534, 65534)
        mail = self.root / "mail"
        mail.mkdir()
        os.chown(mail, *nobody)
        (self.root / "users").write_text("".join(
            f"{u}:{{PLAIN}}secret:{nobody[0]}:{nobody[1]}::{mail}/{u.split('@')[1]}/{u.split('@')[0]}::\n"
            for u in self.users))
        self.proc = subprocess.Popen(["dovecot", "-c", str(self.conf), "-F"],
                                     stdout=open(self.root / "dovecot.out", "ab"), stderr=subprocess.STDOUT)
        wait_greeting(self.port, 30, self.proc)
        assert wait_for(self.socket_path.exists, 10), f"no LMTP socket at {self.socket_path}"
        return self

    def maildir(self, user):
        local, domain = user.lower().split("@")
        return self.root / "mail" / domain / local

    def messages(self, user):
        """The raw messages in user's INBOX (Maildir new/ and cur/), oldest first."""
        files = []
        for sub in ("new", "cur"):
            d = self.maildir(user) / sub
            if d.exists():
                files.extend(d.iterdir())
        return [f.read_bytes() for f in sorted(files, key=lambda f: f.name)]

    def wait_messages(self, user, count=1, timeout=30):
        wait_for(lambda: len(self.messages(user)) >= count, timeout)
        return self.messages(user)

    def fetch(self, user):
        """The user's messages as Dovecot itself reads them back (doveadm)."""
        result = subprocess.run(["doveadm", "-c", str(self.conf), "fetch", "-u", user, "text", "ALL"],
                                capture_output=True)
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        return result.stdout

    def log(self):
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            pids = descendants(self.proc.pid)
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
            kill_all(pids)
            self.proc.wait(10)
        if self.root.exists():
            if self.log_file.exists():
                shutil.copy(self.log_file, self.keep_dir / f"dovecot-{self.port}.log")
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def dovecot_lmtp(tmp_path):
    """Factory: dovecot_lmtp(users=(...), port=None) starts a DovecotLMTP;
    every one started is stopped at teardown."""
    started = []

    def start(**kw):
        server = DovecotLMTP(tmp_path, **kw)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


# --- smtp-sink / smtp-source -----------------------------------------------------

class SmtpSink:
    """Postfix's smtp-sink on 127.0.0.1:port, dumping every transaction to
    one file so tests can read what arrived (Message-IDs in particular)."""

    def __init__(self, keep_dir: Path, port=None, backlog=256):
        require("smtp-sink")
        self.port = port or free_port()
        self.backlog = backlog
        self.keep_dir = Path(keep_dir)
        self.root = peer_dir("sluice-smtp-sink-")
        os.chown(self.root, 65534, 65534)
        self.dump = self.root / "dump"
        self.proc = None

    def start(self):
        # smtp-sink refuses to run as root without -u; nobody owns the dump dir
        self.proc = subprocess.Popen(
            ["smtp-sink", "-u", "nobody", "-h", "sink.example.test", "-D", str(self.dump),
             f"127.0.0.1:{self.port}", str(self.backlog)],
            stdout=open(self.keep_dir / f"smtp-sink-{self.port}.out", "ab"), stderr=subprocess.STDOUT)
        wait_greeting(self.port, 30, self.proc)
        return self

    def content(self):
        try:
            return self.dump.read_bytes()
        except FileNotFoundError:
            return b""

    def message_ids(self):
        """Every Message-ID received, one entry per delivered copy."""
        return [m.decode() for m in re.findall(rb"(?im)^Message-ID:\s*(<[^>\r\n]*>)", self.content())]

    def count(self):
        return len(re.findall(rb"(?m)^X-Client-Proto:", self.content()))

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.root.exists():
            if self.dump.exists():
                shutil.copy(self.dump, self.keep_dir / f"smtp-sink-{self.port}.dump")
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def smtp_sink_proc(tmp_path):
    """Factory: smtp_sink_proc(port=None) starts an SmtpSink; every one
    started is stopped at teardown."""
    started = []

    def start(**kw):
        sink = SmtpSink(tmp_path, **kw)
        started.append(sink)
        return sink.start()

    yield start
    for sink in started:
        sink.stop()


def smtp_source(port, messages, sessions=1, size=1024, sender="source@example.org",
                recipient="user@example.test", reuse=True, extra=(), timeout=600):
    """Runs Postfix's smtp-source against 127.0.0.1:port and returns the
    completed process (output captured; smtp-source prints its running
    count with -c)."""
    require("smtp-source")
    args = ["smtp-source", "-c", "-s", str(sessions), "-m", str(messages), "-l", str(size),
            "-f", sender, "-t", recipient, "-M", "source.example.org"]
    if reuse:
        args.append("-d")
    args.extend(extra)
    args.append(f"127.0.0.1:{port}")
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)

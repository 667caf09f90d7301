"""Shared pieces of the TLS and AUTH suites: a server with a plain, a
STARTTLS and an implicit-TLS listener, users added with the real CLI,
certificates made with openssl, and TLS-wrapped raw sockets."""
import re
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

from conftest import BIN, Raw, Server, config, free_port


def require_tool(name, perl_module=None):
    """The suites need real clients: fail (never skip) when one is missing."""
    assert shutil.which(name), f"{name} is not installed (.ci/run installs it)"
    if perl_module:
        ok = subprocess.run(["perl", f"-M{perl_module}", "-e", "1"], capture_output=True).returncode == 0
        assert ok, f"perl module {perl_module} is missing (.ci/run installs it)"


def client_context(minimum=None, maximum=None):
    """A client context that accepts the server's self-signed certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if minimum:
        ctx.minimum_version = minimum
    if maximum:
        ctx.maximum_version = maximum
    return ctx


def make_cert(directory: Path, name: str, cn: str, rsa=False):
    """A self-signed certificate and key made by openssl; returns (cert, key)."""
    require_tool("openssl")
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    if rsa:
        # PKCS#1 "BEGIN RSA PRIVATE KEY", the other PEM key form.
        subprocess.run(["openssl", "genrsa", "-traditional", "-out", str(key), "2048"], check=True, capture_output=True)
        newkey = ["-key", str(key)]
    else:
        newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-keyout", str(key)]
    subprocess.run(
        ["openssl", "req", "-x509", *newkey, "-nodes", "-days", "2", "-subj", f"/CN={cn}",
         "-addext", f"subjectAltName=DNS:{cn}", "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def cert_der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


class TlsEnv:
    """A running server: `mx` (plain, for readiness), `submission`
    (STARTTLS, auth optional) and `smtps` (implicit TLS, auth required).
    Loopback clients are not trusted: only authenticated ones may relay."""

    def __init__(self, tmp_path, extra="", sink_port=None, submission_extra="", trusted="[]", server_extra="",
                 submission_auth="optional", pipeline_extra=""):
        self.tmp = Path(tmp_path)
        self.mx, self.submission, self.smtps = free_port(), free_port(), free_port()
        route = ""
        if sink_port:
            route = f'[[delivery.route]]\ndomain = "example.test"\nnext_hop = "127.0.0.1:{sink_port}"\n'
        listeners = f"""
[[listener]]
name = "submission"
address = "127.0.0.1:{self.submission}"
pipeline = "inbound"
tls = "starttls"
auth = "{submission_auth}"
{submission_extra}

[[listener]]
name = "smtps"
address = "127.0.0.1:{self.smtps}"
pipeline = "inbound"
tls = "implicit"
auth = "required"
"""
        text = config(self.mx, self.tmp / "data", trusted=trusted, extra=route + extra + listeners,
                      server_extra=server_extra, pipeline_extra=pipeline_extra)
        self.config_path = self.tmp / "sluice.toml"
        self.server = Server(self.tmp, text)
        # Server.start writes the same text to the same path.
        self.server.start(self.mx)

    def user(self, *args, password=None):
        """Runs `sluice user ...` on this server's configuration."""
        cmd = [BIN, "user", *args, "--config", str(self.config_path)]
        if password is not None:
            cmd.append("--password-stdin")
        return subprocess.run(cmd, input=(password + "\n") if password is not None else None,
                              capture_output=True, text=True, timeout=60)

    def add_user(self, name, password):
        done = self.user("add", name, password=password)
        assert done.returncode == 0, done.stderr
        return done

    def log(self):
        """The server log without terminal colour codes."""
        return re.sub(r"\x1b\[[0-9;]*m", "", self.server.log.read_text(errors="replace"))

    def wait_log(self, needle, count=1, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.log().count(needle) >= count:
                return True
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not logged:\n{self.log()}")

    def stop(self):
        self.server.stop()


class TlsRaw(Raw):
    """A raw SMTP socket that can switch to TLS mid-session."""

    def __init__(self, port, source="127.0.0.1", implicit=False, ctx=None):
        super().__init__(port, source)
        if implicit:
            self.starttls(ctx)

    def starttls(self, ctx=None):
        assert self.buf == b"", f"unread bytes before the handshake: {self.buf!r}"
        ctx = ctx or client_context()
        self.sock = ctx.wrap_socket(self.sock, server_hostname="mx.example.test")
        return self.sock

    def silent(self, seconds=1.0):
        """True when nothing arrives within `seconds`."""
        self.sock.settimeout(seconds)
        try:
            data = self.sock.recv(4096)
        except (socket.timeout, TimeoutError):
            return True
        self.buf += data
        return False

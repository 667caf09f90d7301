"""Several certificates per listener chosen by the client's server name
(SNI, RFC 6066 §3): `[[tls.certificate]]` and `[[listener.certificate]]`
tables, checked with openssl s_client -servername and Python's ssl, the
default for clients that send no name, and SIGHUP reloading every pair."""
import os
import re
import signal
import subprocess

import pytest

from conftest import BIN
from tlsenv import TlsEnv, TlsRaw, cert_der, client_context, make_cert, require_tool


@pytest.fixture
def certs(tmp_path):
    d = tmp_path / "certs"
    return {
        "a": make_cert(d, "a", "a.example"),
        "wild": make_cert(d, "wild", "wild.b.example"),
        "default": make_cert(d, "default", "mx.example.test"),
        "own": make_cert(d, "own", "smtps.example"),
    }


def table(prefix, names, pair):
    cert, key = pair
    names_line = f"names = {names!r}\n".replace("'", '"') if names is not None else ""
    return f'[[{prefix}.certificate]]\n{names_line}certificate = "{cert}"\nkey = "{key}"\n'


@pytest.fixture
def env(tmp_path, certs):
    tls = (
        "[tls]\n"
        + table("tls", ["A.example"], certs["a"])
        + table("tls", ["*.b.example"], certs["wild"])
        + table("tls", None, certs["default"])
    )
    e = TlsEnv(tmp_path, extra=tls)
    yield e
    e.stop()


def served(port, server_name, implicit=False):
    """The DER certificate the server presents for `server_name` (None: no SNI)."""
    raw = TlsRaw(port)
    if not implicit:
        assert raw.reply()[0] == 220
        assert raw.cmd(b"EHLO client.test")[0] == 250
        assert raw.cmd(b"STARTTLS")[0] == 220
    raw.sock = client_context().wrap_socket(raw.sock, server_hostname=server_name)
    der = raw.sock.getpeercert(binary_form=True)
    raw.sock.close()
    return der


def s_client_subject(port, server_name):
    require_tool("openssl")
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-starttls", "smtp",
         "-servername", server_name],
        input=b"QUIT\r\n", capture_output=True, timeout=30,
    )
    out = done.stdout.decode(errors="replace")
    match = re.search(r"^subject=.*CN\s*=\s*([^\s,/]+)", out, re.M)
    assert match, out + done.stderr.decode(errors="replace")
    return match.group(1)


def test_openssl_gets_the_certificate_for_its_server_name(env):
    assert s_client_subject(env.submission, "a.example") == "a.example"
    assert s_client_subject(env.submission, "mx.b.example") == "wild.b.example"
    assert s_client_subject(env.submission, "unknown.example") == "mx.example.test"


def test_names_match_case_insensitively_and_wildcards_one_label(env, certs):
    a, wild, default = (cert_der(certs[k][0]) for k in ("a", "wild", "default"))
    assert served(env.submission, "A.EXAMPLE") == a
    assert served(env.smtps, "a.example", implicit=True) == a
    assert served(env.smtps, "x.b.example", implicit=True) == wild
    # `*.b.example` covers one label: not b.example, not y.x.b.example.
    assert served(env.smtps, "b.example", implicit=True) == default
    assert served(env.smtps, "y.x.b.example", implicit=True) == default
    # No SNI at all (most MTAs): the table without names.
    assert served(env.submission, None) == default


def test_a_listener_with_its_own_tables_overrides_tls(tmp_path, certs):
    own = table("listener", ["smtps.example"], certs["own"])
    e = TlsEnv(tmp_path, submission_extra=own,
               extra=f'[tls]\ncertificate = "{certs["default"][0]}"\nkey = "{certs["default"][1]}"\n')
    try:
        assert served(e.submission, "smtps.example") == cert_der(certs["own"][0])
        # All its tables have names: the first is its default too.
        assert served(e.submission, None) == cert_der(certs["own"][0])
        # Other TLS listeners keep [tls].
        assert served(e.smtps, "smtps.example", implicit=True) == cert_der(certs["default"][0])
    finally:
        e.stop()


def test_sighup_reloads_every_pair(env, certs, tmp_path):
    before = served(env.submission, "a.example")
    new_cert, new_key = make_cert(tmp_path / "next", "a2", "a.example", rsa=True)
    os.replace(new_key, certs["a"][1])
    os.replace(new_cert, certs["a"][0])
    env.server.proc.send_signal(signal.SIGHUP)
    env.wait_log("certificate reloaded")
    after = served(env.submission, "a.example")
    assert after != before and after == cert_der(certs["a"][0])
    assert served(env.submission, None) == cert_der(certs["default"][0])

    # One broken pair keeps all of the previous ones.
    certs["wild"][0].write_text("not a certificate\n")
    env.server.proc.send_signal(signal.SIGHUP)
    env.wait_log("certificate not reloaded")
    assert served(env.submission, "a.example") == after
    assert env.server.proc.poll() is None


def test_config_errors_name_key_and_line(tmp_path, certs):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        '[[listener]]\nname = "mx"\naddress = "127.0.0.1:2525"\npipeline = "p"\ntls = "starttls"\n'
        '[pipeline.p]\n[tls]\n'
        + table("tls", ["a.example"], certs["a"])
        + table("tls", ["a.example", "not a name"], certs["wild"])
        + f'[[tls.certificate]]\nnames = ["c.example"]\ncertificate = "{tmp_path}/missing.pem"\n'
          f'key = "{certs["a"][1]}"\n'
    )
    done = subprocess.run([BIN, "check-config", str(cfg)], capture_output=True, text=True)
    assert done.returncode != 0
    err = done.stderr
    assert f"{cfg}:13:" in err and "a.example is already the name of certificate[0]" in err, err
    assert "not a server name" in err, err
    # With the form right, the file that does not open is named.
    cfg.write_text(cfg.read_text().replace('"a.example", "not a name"', '"b.example"'))
    done = subprocess.run([BIN, "check-config", str(cfg)], capture_output=True, text=True)
    assert done.returncode != 0
    assert f"{cfg}:18:" in done.stderr and "tls.certificate[2].certificate" in done.stderr, done.stderr
    assert "missing.pem" in done.stderr, done.stderr

"""DANE (RFC 7672) against real peers on loopback: BIND's named serves a
zone signed at test time with dnssec-keygen/dnssec-signzone, sluice
validates its answers against the zone's own key as trust anchor, and a
real Postfix with a test certificate is the MX. A matching TLSA record
means TLS to that certificate; a mismatch or a bogus signature means the
mail waits and nothing is sent in clear; an unsigned (insecurely
delegated) zone means no DANE; `[delivery] tls = "none"` turns it off.
DANE-TA checks the chain and the MX name, a `tls = "dane"` route its next
hop, and `trust_ad` believes a second, validating named's AD bit."""
import hashlib
import json
import re
import smtplib
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BIN, Server, config, free_port
from peers import Certs, require, wait_for
from test_mta_sts import PolicyHost, policy_address

ZONE = "dane.test"
# A real but unrelated SHA-256: a TLSA record that matches nothing.
OTHER_KEY = hashlib.sha256(b"not the server's key").hexdigest()


def spki_sha256(cert_file):
    """TLSA x 1 1 data: SHA-256 of the certificate's SubjectPublicKeyInfo."""
    pem = subprocess.run(["openssl", "x509", "-in", str(cert_file), "-pubkey", "-noout"],
                         check=True, capture_output=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pem,
                         check=True, capture_output=True).stdout
    return hashlib.sha256(der).hexdigest()


class SignedZone:
    """named on 127.0.0.1:port, primary for dane.test (signed here) and
    plain.dane.test (unsigned, delegated from dane.test without DS)."""

    def __init__(self, directory: Path, mx_port: int, tlsa: str):
        """`tlsa`: the TLSA RDATA of the MX host, "3 1 1 <hex>" and so on."""
        require("/usr/sbin/named", "/usr/bin/dnssec-keygen", "/usr/bin/dnssec-signzone")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.mx_port = mx_port
        self.tlsa = tlsa
        self.proc = self.log = None
        key = self.run("dnssec-keygen", "-q", "-K", str(self.dir), "-a", "ECDSAP256SHA256",
                       "-f", "KSK", "-n", "ZONE", ZONE).stdout.strip()
        self.key_file = self.dir / f"{key}.key"
        self.trust_anchor = self.dir / "trust-anchor.key"
        self.trust_anchor.write_text(self.key_file.read_text())

    def run(self, *args):
        return subprocess.run(list(args), check=True, capture_output=True, text=True, cwd=self.dir)

    def sign(self, tamper=False, expired=False, records=""):
        """Writes and signs dane.test; `tamper` alters the TLSA record after
        signing, so its signature no longer verifies, `expired` signs with
        signatures that ended years ago: either way the zone is bogus.
        `records`: more lines of the zone."""
        port = self.mx_port
        (self.dir / "dane.test.zone").write_text(f"""\
$TTL 300
@ IN SOA ns.dane.test. hostmaster.dane.test. 1 3600 600 86400 300
@ IN NS ns.dane.test.
ns IN A 127.0.0.1
@ IN MX 10 mx.dane.test.
mx IN A 127.0.0.1
_{port}._tcp.mx IN TLSA {self.tlsa}
implicit IN A 127.0.0.1
_{port}._tcp.implicit IN TLSA {self.tlsa}
plain IN NS ns.dane.test.
{records}
$INCLUDE {self.key_file}
""")
        (self.dir / "plain.zone").write_text(f"""\
$TTL 300
@ IN SOA ns.dane.test. hostmaster.dane.test. 1 3600 600 86400 300
@ IN NS ns.dane.test.
@ IN MX 10 mx.plain.dane.test.
mx IN A 127.0.0.1
_{port}._tcp.mx IN TLSA 3 1 1 {OTHER_KEY}
""")
        # One key signs everything (-z); full one-line records (-O full).
        # -P: its own check would refuse signatures that already ended
        validity = ["-P", "-s", "20200101000000", "-e", "20200201000000"] if expired else []
        self.run("dnssec-signzone", "-z", "-O", "full", "-K", str(self.dir), "-o", ZONE, *validity,
                 "-f", "dane.test.signed", "dane.test.zone")
        signed = self.dir / "dane.test.signed"
        if tamper:
            text = signed.read_text()
            tampered = re.sub(r"(IN\s+TLSA\s+\d \d \d )\S+", lambda m: m.group(1) + OTHER_KEY.upper(), text)
            assert tampered != text, "no TLSA record to tamper with"
            signed.write_text(tampered)
        return self

    def start(self):
        self.proc, self.log = start_named(self.dir, self.port, f"""\
zone "{ZONE}" {{ type primary; file "{self.dir}/dane.test.signed"; }};
zone "plain.{ZONE}" {{ type primary; file "{self.dir}/plain.zone"; }};
""", "recursion no;\ndnssec-validation no;")
        answered = wait_for(lambda: dig(self.port, "mx.dane.test", "A") or self.proc.poll() is not None, 30)
        assert answered and self.proc.poll() is None, (self.dir / "named.log").read_text()
        return self

    def stop(self):
        if self.proc:
            stop_named(self.proc, self.log)


class ValidatingResolver:
    """A second named on its own port: a recursive, validating resolver
    that forwards dane.test to the zone's server and trusts the zone's
    key, so its answers carry the AD bit exactly when they validate."""

    def __init__(self, zone: SignedZone):
        self.dir = zone.dir / "resolver"
        self.dir.mkdir()
        self.port = free_port()
        fields = zone.key_file.read_text().split("DNSKEY", 1)[1].split()
        flags, protocol, algorithm, key = fields[0], fields[1], fields[2], "".join(fields[3:])
        self.proc, self.log = start_named(self.dir, self.port, f"""\
trust-anchors {{ "{ZONE}." static-key {flags} {protocol} {algorithm} "{key}"; }};
zone "{ZONE}" {{ type forward; forward only; forwarders {{ 127.0.0.1 port {zone.port}; }}; }};
""", "recursion yes;\nallow-recursion { 127.0.0.1; };\ndnssec-validation yes;")
        answered = wait_for(lambda: dig(self.port, "mx.dane.test", "A") or self.proc.poll() is not None, 30)
        assert answered and self.proc.poll() is None, (self.dir / "named.log").read_text()

    def stop(self):
        stop_named(self.proc, self.log)


def start_named(directory, port, zones, options):
    conf = directory / "named.conf"
    conf.write_text(f"""\
options {{
    directory "{directory}";
    pid-file "{directory}/named.pid";
    session-keyfile "{directory}/session.key";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    {options}
    notify no;
    allow-query {{ any; }};
}};
controls {{ }};
{zones}""")
    log = open(directory / "named.log", "w")
    proc = subprocess.Popen(["/usr/sbin/named", "-g", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    return proc, log


def stop_named(proc, log):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log.close()


def dig(port, name, kind):
    result = subprocess.run(["dig", "+short", "+time=1", "+tries=1", "-p", str(port), "@127.0.0.1", name, kind],
                            capture_output=True, text=True)
    return result.returncode == 0 and result.stdout.strip()


@pytest.fixture
def world(tmp_path, postfix_mx):
    """world(tlsa=None, tamper=False, expired=False, domain="dane.test", extra="",
    ta=False, cert_names=("localhost",), trust_ad=False, sts_policy=None): a Postfix MX for `domain` with a
    certificate for `cert_names`, the signed zone publishing the TLSA
    RDATA `tlsa` for it (default: 3 1 1 of the Postfix certificate's key,
    or with `ta` 2 1 1 of its CA's, the CA then sent in Postfix's chain),
    and sluice resolving through named with the zone's key as trust
    anchor (or, with `trust_ad`, through a validating named whose AD bit
    it believes). `sts_policy`: an MTA-STS policy the domain also has."""
    started = []

    def start(tlsa=None, tamper=False, expired=False, domain=ZONE, extra="", ta=False,
              cert_names=("localhost",), trust_ad=False, sts_policy=None):
        mx = postfix_mx(domain=domain, cert_names=cert_names, run=False)
        if ta:
            # DANE-TA's anchor must be in the chain the server sends
            chain = mx.cert_file.read_text() + mx.ca_file.read_text()
            mx.cert_file.write_text(chain)
            tlsa = tlsa or f"2 1 1 {spki_sha256(mx.ca_file)}"
        mx.start()
        zone = SignedZone(tmp_path / f"zone-{len(started)}", mx.port,
                          tlsa or f"3 1 1 {spki_sha256(mx.cert_file)}")
        started.append(zone)
        records = ""
        if sts_policy:
            # an MTA-STS policy for the domain, served over HTTPS on 443
            certs = Certs(tmp_path / f"sts-{len(started)}", names=(f"mta-sts.{ZONE}",))
            ip = policy_address()
            started.append(PolicyHost(certs, sts_policy, ip))
            records = f'_mta-sts IN TXT "v=STSv1; id=1;"\nmta-sts IN A {ip}\n'
            extra += f'ca_file = "{certs.ca_file}"\n'
        zone.sign(tamper=tamper, expired=expired, records=records).start()
        if trust_ad:
            resolver = ValidatingResolver(zone)
            started.append(resolver)
            dns = f'nameservers = ["127.0.0.1:{resolver.port}"]\ntrust_ad = true\n'
        else:
            dns = f'nameservers = ["127.0.0.1:{zone.port}"]\ntrust_anchor = "{zone.trust_anchor}"\n'
        port = free_port()
        text = config(port, tmp_path / "data", extra=(
            f'[dns]\n{dns}timeout = "2s"\n'
            f"[delivery]\nsmtp_port = {mx.port}\nignore_target_hosts = []\n{extra.format(port=mx.port)}"))
        server = Server(tmp_path, text)
        started.append(server)
        return server.start(port), mx

    yield start
    for thing in reversed(started):
        thing.stop()


def send(server, rcpt, msg_id):
    body = (f"From: a@example.org\r\nTo: {rcpt}\r\nMessage-ID: <{msg_id}@example.org>\r\n"
            f"Subject: {msg_id}\r\n\r\nDANE\r\n")
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as smtp:
        assert smtp.sendmail("a@example.org", [rcpt], body) == {}


def queue_entries(server):
    result = subprocess.run([BIN, "queue", "list", "--json", "--config", str(server.tmp / "sluice.toml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["entries"]


def deferred_reply(server, timeout=60):
    """The last reply of the one deferred recipient, once it was tried."""
    def reply():
        for entry in queue_entries(server):
            for rcpt in entry["recipients"]:
                if rcpt["status"] == "deferred" and rcpt.get("last_reply"):
                    return rcpt["last_reply"]
        return None
    return wait_for(reply, timeout)


def arrived(mx, msg_id):
    messages = mx.sink.wait(1, timeout=60)
    assert len(messages) == 1, f"not delivered to Postfix's sink; Postfix log:\n{mx.log()}"
    content = messages[0].original_content
    assert f"Message-ID: <{msg_id}@example.org>".encode() in content
    return content


def assert_nothing_sent(mx):
    """sluice connected (EHLO) at least twice and never sent MAIL."""
    attempt = r"disconnect from \S+ ehlo=.*"
    wait_for(lambda: len(re.findall(attempt, mx.log())) >= 2, timeout=60)
    attempts = re.findall(attempt, mx.log())
    assert len(attempts) >= 2, f"sluice did not try the MX twice; Postfix log:\n{mx.log()}"
    assert not [line for line in attempts if "mail=" in line], attempts
    assert mx.sink.messages == [], "delivered although DANE failed"


def test_matching_tlsa_delivers_over_tls(world):
    server, mx = world()
    send(server, "user@dane.test", "dane-match")
    content = arrived(mx, "dane-match")
    assert b"(using TLSv1.3 with cipher" in content, content[:400]
    log = server.log.read_text()
    assert re.search(r"tls_policy=\W?dane", log), "the delivery log line names no DANE policy"


def test_tlsa_mismatch_defers_and_sends_nothing_in_clear(world):
    server, mx = world(tlsa=f"3 1 1 {OTHER_KEY}")
    send(server, "user@dane.test", "dane-mismatch")
    reply = deferred_reply(server)
    assert reply and reply.startswith("451 4.7.5 mx.dane.test"), reply
    assert "DANE: no TLSA record matches the certificate chain" in reply, reply
    assert reply.endswith("(TLS policy: dane)"), reply
    assert_nothing_sent(mx)
    # the operator's view of the message names the policy of each attempt
    qid = queue_entries(server)[0]["id"]
    shown = subprocess.run([BIN, "queue", "show", qid, "--config", str(server.tmp / "sluice.toml")],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "DANE: no TLSA record matches" in shown.stdout, shown.stdout
    assert "(TLS policy: dane)" in shown.stdout, shown.stdout


@pytest.mark.parametrize("bogus", ["tampered", "expired"])
def test_bogus_signature_defers(world, bogus):
    server, mx = world(tamper=bogus == "tampered", expired=bogus == "expired")
    send(server, "user@dane.test", "dane-bogus")
    reply = deferred_reply(server)
    assert reply and reply.startswith("451 4.7.5"), reply
    assert "DNSSEC validation failed (bogus)" in reply and "(TLS policy: dane)" in reply, reply
    # a bogus answer is not "no DANE": the MX is not spoken to at all
    # (the one connection without commands is the fixture's greeting probe)
    time.sleep(2)
    assert mx.sink.messages == []
    assert not re.findall(r"ehlo=", mx.log()), mx.log()


def test_unsigned_zone_delivers_without_dane(world):
    # plain.dane.test is delegated without DS: insecure, so its (wrong)
    # TLSA record does not count and delivery is opportunistic
    server, mx = world(domain="plain.dane.test")
    send(server, "user@plain.dane.test", "dane-unsigned")
    arrived(mx, "dane-unsigned")
    log = server.log.read_text()
    assert re.search(r"recipient=user@plain\.dane\.test .*tls_policy=opportunistic", log), log[-2000:]


def test_tls_none_overrides_dane(world):
    server, mx = world(extra='tls = "none"\n')
    send(server, "user@dane.test", "dane-off")
    content = arrived(mx, "dane-off")
    assert b"using TLS" not in content, content[:400]


def test_dane_ta_delivers_to_a_certificate_for_the_mx_name(world):
    server, mx = world(ta=True, cert_names=("mx.dane.test",))
    send(server, "user@dane.test", "dane-ta")
    content = arrived(mx, "dane-ta")
    assert b"(using TLSv1.3 with cipher" in content, content[:400]


def test_dane_ta_defers_a_certificate_for_another_name(world):
    # DANE-TA checks the name (RFC 7672 §3.2.2); DANE-EE would not
    server, mx = world(ta=True, cert_names=("localhost",))
    send(server, "user@dane.test", "dane-ta-name")
    reply = deferred_reply(server)
    assert reply and "DANE: no TLSA record matches" in reply, reply
    assert_nothing_sent(mx)


def test_dane_route_checks_its_next_hop(world):
    # the route's host is resolved through the validating resolver too
    route = '[[delivery.route]]\ndomain = "dane.test"\nnext_hop = "mx.dane.test:{port}"\ntls = "dane"\n'
    server, mx = world(extra=route)
    send(server, "user@dane.test", "dane-route")
    content = arrived(mx, "dane-route")
    assert b"(using TLSv1.3 with cipher" in content, content[:400]


@pytest.mark.parametrize("matching", [True, False], ids=["tlsa-match", "tlsa-mismatch"])
def test_trusted_ad_bit_of_a_validating_resolver(world, matching):
    server, mx = world(trust_ad=True, tlsa=None if matching else f"3 1 1 {OTHER_KEY}")
    send(server, "user@dane.test", "dane-ad")
    if matching:
        content = arrived(mx, "dane-ad")
        assert b"(using TLSv1.3 with cipher" in content, content[:400]
        assert re.search(r"tls_policy=\W?dane", server.log.read_text())
    else:
        reply = deferred_reply(server)
        assert reply and "DANE: no TLSA record matches" in reply, reply
        assert_nothing_sent(mx)


# enforce, and the MX host is not listed: MTA-STS alone would defer
STS_ELSEWHERE = "version: STSv1\nmode: enforce\nmx: elsewhere.dane.test\nmax_age: 86400\n"


def test_dane_takes_precedence_over_mta_sts(world):
    server, mx = world(sts_policy=STS_ELSEWHERE)
    send(server, "user@dane.test", "dane-over-sts")
    content = arrived(mx, "dane-over-sts")
    assert b"(using TLSv1.3 with cipher" in content, content[:400]
    assert re.search(r"tls_policy=\W?dane", server.log.read_text())


def test_tls_mta_sts_skips_dane(world):
    # the same domain with tls = "mta-sts": the policy applies, and defers
    server, mx = world(sts_policy=STS_ELSEWHERE, extra='tls = "mta-sts"\n')
    send(server, "user@dane.test", "sts-not-dane")
    reply = deferred_reply(server)
    assert reply and "is in its MTA-STS policy" in reply and "(TLS policy: mta-sts enforce)" in reply, reply
    assert mx.sink.messages == []


def test_tls_dane_defers_a_domain_without_dane(world):
    # tls = "dane" makes DANE mandatory: the unsigned domain's mail waits
    server, mx = world(domain="plain.dane.test", extra='tls = "dane"\n')
    send(server, "user@plain.dane.test", "dane-mandatory")
    reply = deferred_reply(server)
    assert reply and reply.startswith("451 4.7.5 tls = \"dane\": no MX host of plain.dane.test"), reply
    assert "the MX records are not DNSSEC-signed" in reply, reply
    time.sleep(2)
    assert mx.sink.messages == []
    assert not re.findall(r"ehlo=", mx.log()), mx.log()


@pytest.mark.parametrize("matching", [True, False], ids=["tlsa-match", "tlsa-mismatch"])
def test_a_domain_proven_to_have_no_mx_is_its_own_tlsa_base(world, matching):
    # implicit.dane.test has A and TLSA records and, signed, no MX
    server, mx = world(domain="implicit.dane.test", tlsa=None if matching else f"3 1 1 {OTHER_KEY}")
    send(server, "user@implicit.dane.test", "dane-implicit")
    if matching:
        content = arrived(mx, "dane-implicit")
        assert b"(using TLSv1.3 with cipher" in content, content[:400]
        log = server.log.read_text()
        assert re.search(r"recipient=user@implicit\.dane\.test .*tls_policy=\W?dane", log), log[-2000:]
    else:
        reply = deferred_reply(server)
        assert reply and reply.startswith("451 4.7.5 implicit.dane.test"), reply
        assert "DANE: no TLSA record matches" in reply, reply
        assert_nothing_sent(mx)

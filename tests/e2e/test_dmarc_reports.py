"""DMARC aggregate reports (RFC 7489 §7.2) end to end: traffic from two
client addresses (127.0.0.2 is each domain's designated sender, 127.0.0.3
is not) for domains whose DMARC records (served by dns_server.py) ask for
reports; the reports sluice queues are delivered to its own Maildirs,
un-gzipped, validated against the schema of RFC 7489 Appendix C
(data/rfc7489-dmarc-aggregate.xsd, with lxml) and parsed back. The
reporting interval is a few seconds; reports are summed over periods, so
a message that falls into the next period is still counted once."""
import base64
import email
import gzip
import shutil
import smtplib
import subprocess
import time
import urllib.request
from collections import Counter
from pathlib import Path

import dkim
import nacl.signing
import pytest
from lxml import etree

from conftest import Server, free_port
from test_auth_results import auth_config

GOOD, BAD = "127.0.0.2", "127.0.0.3"
NS = {"d": "http://dmarc.org/dmarc-xml/0.1"}
SCHEMA = etree.XMLSchema(etree.parse(str(Path(__file__).parent / "data" / "rfc7489-dmarc-aggregate.xsd")))
REPORTER = "dmarc-reports@example.test"


@pytest.fixture(scope="module")
def ed_key():
    key = nacl.signing.SigningKey.generate()
    return {
        "private": base64.b64encode(bytes(key)),
        "record": "v=DKIM1; k=ed25519; p=" + base64.b64encode(bytes(key.verify_key)).decode(),
    }


@pytest.fixture(scope="module")
def rsa_key(tmp_path_factory):
    """An RSA-2048 key (openssl) for the forwarder's ARC seal."""
    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed to make the RSA test key (apt-get install openssl)"
    pem = tmp_path_factory.mktemp("arc") / "rsa.pem"
    subprocess.run([openssl, "genrsa", "-out", str(pem), "2048"], check=True, capture_output=True)
    der = subprocess.run(
        [openssl, "rsa", "-in", str(pem), "-pubout", "-outform", "DER"], check=True, capture_output=True
    ).stdout
    return {"private": pem.read_bytes(), "record": "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()}


def zone(ed_key):
    records = {}
    policies = {
        # Reports to the domain itself: no verification needed (§7.1).
        "alpha.test": "v=DMARC1; p=quarantine; rua=mailto:agg@alpha.test",
        # Reports to another domain that agreed to take them.
        "beta.test": "v=DMARC1; p=reject; rua=mailto:agg@reports.test",
        # Reports to another domain that did not agree: none are sent.
        "gamma.test": "v=DMARC1; p=none; rua=mailto:agg@reports.test",
        # pct=0: a failing message is sampled out, quarantined not rejected.
        "delta.test": "v=DMARC1; p=reject; pct=0; rua=mailto:agg@reports.test",
        # A destination that takes reports of at most 100 octets: none fits.
        "tiny.test": "v=DMARC1; p=none; rua=mailto:agg@reports.test!100",
    }
    for domain, policy in policies.items():
        records[domain] = {"TXT": [f"v=spf1 ip4:{GOOD} -all"]}
        records[f"_dmarc.{domain}"] = {"TXT": [policy]}
        records[f"ed._domainkey.{domain}"] = {"TXT": [ed_key["record"]]}
    for domain in ("beta.test", "delta.test", "tiny.test"):
        records[f"{domain}._report._dmarc.reports.test"] = {"TXT": ["v=DMARC1"]}
    return records


def reports_config(port, data, dns_port, interval, admin_port, auth):
    """test_auth_results.py's server (builtin:auth at mail and data) with
    the report destinations as local domains, reports on, and the admin
    endpoint for the metrics."""
    text = auth_config(port, data, dns_port, auth=auth)
    text = text.replace('local = ["localhost"]', 'local = ["localhost", "alpha.test", "reports.test"]')
    assert "alpha.test" in text
    return text + f"""
[admin]
address = "127.0.0.1:{admin_port}"

[dmarc_reports]
enabled = true
org_name = "Example Receiver"
email = "{REPORTER}"
interval = "{interval}"
"""


@pytest.fixture
def reporting_server(tmp_path, dns_zone, ed_key, rsa_key):
    servers = []
    records = zone(ed_key)
    records["rsa2048._domainkey.forwarder.test"] = {"TXT": [rsa_key["record"]]}
    dns_port = dns_zone(records)
    port = free_port()

    def start(interval="3s", auth=""):
        server = Server(
            tmp_path, reports_config(port, tmp_path / "data", dns_port, interval, free_port(), auth)
        )
        servers.append(server)
        return server.start(port)

    yield start
    for server in servers:
        server.stop()


def message(sender):
    return (
        f"From: {sender}\r\nTo: bob@localhost\r\nSubject: report test\r\n"
        f"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <{time.monotonic_ns()}@test>\r\n\r\nHello.\r\n"
    ).encode()


def send(server, sender, source, key=None, data=None, envelope=None):
    """Sends one message from `sender` (or `data` as it is) via client
    address `source`, signed by the sender's domain when `key` is given;
    returns the SMTP code."""
    data = data or message(sender)
    if key is not None:
        domain = sender.split("@")[1].encode()
        data = dkim.sign(
            data, b"ed", domain, key["private"], signature_algorithm=b"ed25519-sha256",
            include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
        ) + data
    with smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.test", source_address=(source, 0), timeout=30) as smtp:
        try:
            smtp.sendmail(envelope or sender, ["bob@localhost"], data)
            return 250
        except smtplib.SMTPDataError as refused:
            return refused.smtp_code


def reports_in(server, local, domain):
    """Every report in a Maildir: (message, XML root)."""
    found = []
    for path in server.maildir(local, domain):
        msg = email.message_from_bytes(path.read_bytes())
        parts = [p for p in msg.walk() if p.get_content_type() == "application/gzip"]
        assert len(parts) == 1, msg
        xml = gzip.decompress(parts[0].get_payload(decode=True))
        root = etree.fromstring(xml)
        SCHEMA.assertValid(root)
        found.append((msg, parts[0], root))
    return found


def rows(root):
    """(source_ip, disposition, dkim, spf, reasons) -> count of a report."""
    counted = Counter()
    for record in root.findall("d:record", NS):
        row = record.find("d:row", NS)
        evaluated = row.find("d:policy_evaluated", NS)
        key = (
            row.findtext("d:source_ip", namespaces=NS),
            evaluated.findtext("d:disposition", namespaces=NS),
            evaluated.findtext("d:dkim", namespaces=NS),
            evaluated.findtext("d:spf", namespaces=NS),
            tuple(r.findtext("d:type", namespaces=NS) for r in evaluated.findall("d:reason", NS)),
        )
        counted[key] += int(row.findtext("d:count", namespaces=NS))
    return counted


def metric(server, series):
    admin = server.config_text.split('[admin]\naddress = "')[1].split('"')[0]
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
    return None


def wait_for_log(server, text, timeout=30):
    deadline = time.time() + timeout
    while text not in server.log.read_text():
        assert time.time() < deadline, server.log.read_text()
        time.sleep(0.2)


def policy_domain(root):
    return root.findtext("d:policy_published/d:domain", namespaces=NS)


def wait_for_counts(server, local, domain, policy, expected, timeout=60):
    """The reports for `policy` in a Maildir once their rows add up to
    `expected` (periods summed)."""
    deadline = time.time() + timeout
    total = Counter()
    while time.time() < deadline:
        found = [r for r in reports_in(server, local, domain) if policy_domain(r[2]) == policy]
        total = sum((rows(r[2]) for r in found), Counter())
        if total == expected:
            return found
        assert all(total[k] <= expected.get(k, 0) for k in total), (total, expected)
        time.sleep(0.2)
    raise AssertionError(f"reports for {policy}: {total}, expected {expected}; log:\n{server.log.read_text()}")


def test_a_day_of_traffic_is_reported_to_each_domain_that_asks(reporting_server, ed_key):
    server = reporting_server()
    assert send(server, "alice@alpha.test", GOOD) == 250
    assert send(server, "alice@alpha.test", GOOD) == 250
    # SPF fails and nothing is signed: p=quarantine delivers it marked.
    assert send(server, "alice@alpha.test", BAD) == 250
    # SPF fails but the aligned signature passes.
    assert send(server, "alice@alpha.test", BAD, key=ed_key) == 250
    # p=reject refuses the failing one.
    assert send(server, "carol@beta.test", BAD) == 550
    assert send(server, "carol@beta.test", GOOD) == 250
    assert send(server, "dave@gamma.test", BAD) == 250
    assert send(server, "erin@delta.test", BAD) == 250
    assert send(server, "tom@tiny.test", GOOD) == 250

    alpha = wait_for_counts(server, "agg", "alpha.test", "alpha.test", Counter({
        (GOOD, "none", "fail", "pass", ()): 2,
        (BAD, "quarantine", "fail", "fail", ()): 1,
        (BAD, "none", "pass", "fail", ()): 1,
    }))
    beta = wait_for_counts(server, "agg", "reports.test", "beta.test", Counter({
        (BAD, "reject", "fail", "fail", ()): 1,
        (GOOD, "none", "fail", "pass", ()): 1,
    }))
    # RFC 7489 §6.6.4: the next lower policy, and the reason.
    delta = wait_for_counts(server, "agg", "reports.test", "delta.test", Counter({
        (BAD, "quarantine", "fail", "fail", ("sampled_out",)): 1,
    }))
    assert delta[0][2].findtext("d:policy_published/d:pct", namespaces=NS) == "0"

    msg, attachment, root = alpha[0]
    begin = int(root.findtext("d:report_metadata/d:date_range/d:begin", namespaces=NS))
    end = int(root.findtext("d:report_metadata/d:date_range/d:end", namespaces=NS))
    report_id = root.findtext("d:report_metadata/d:report_id", namespaces=NS)
    # §7.2.1.1: the Subject, the From and the attachment's name.
    assert " ".join(msg["Subject"].split()) == f"Report Domain: alpha.test Submitter: example.test Report-ID: <{report_id}>"
    assert REPORTER in msg["From"]
    assert attachment.get_filename() == f"example.test!alpha.test!{begin}!{end}.xml.gz"
    assert root.findtext("d:report_metadata/d:org_name", namespaces=NS) == "Example Receiver"
    assert root.findtext("d:report_metadata/d:email", namespaces=NS) == REPORTER
    published = root.find("d:policy_published", NS)
    assert [published.findtext(f"d:{t}", namespaces=NS) for t in ("p", "sp", "pct", "adkim", "aspf")] == [
        "quarantine", "quarantine", "100", "r", "r"]
    # The raw results of a signed row: the signature, and SPF's fail.
    signed = [r for r in root.findall("d:record", NS)
              if r.findtext("d:auth_results/d:dkim/d:result", namespaces=NS) == "pass"]
    for _, _, other in alpha[1:]:
        signed += [r for r in other.findall("d:record", NS)
                   if r.findtext("d:auth_results/d:dkim/d:result", namespaces=NS) == "pass"]
    assert len(signed) == 1
    auth = signed[0].find("d:auth_results", NS)
    assert auth.findtext("d:dkim/d:domain", namespaces=NS) == "alpha.test"
    assert auth.findtext("d:dkim/d:selector", namespaces=NS) == "ed"
    assert [auth.findtext(f"d:spf/d:{t}", namespaces=NS) for t in ("domain", "scope", "result")] == [
        "alpha.test", "mfrom", "fail"]
    assert signed[0].findtext("d:identifiers/d:header_from", namespaces=NS) == "alpha.test"
    assert signed[0].findtext("d:identifiers/d:envelope_from", namespaces=NS) == "alpha.test"

    assert beta[0][2].findtext("d:policy_published/d:p", namespaces=NS) == "reject"
    # gamma.test's destination never agreed (§7.1), tiny.test's takes no
    # report this large: their periods end and they are dropped, logged
    # and counted, never sent.
    wait_for_log(server, "did not agree to receive reports")
    wait_for_log(server, "larger than its destination takes")
    sent = {policy_domain(r[2]) for r in reports_in(server, "agg", "reports.test")}
    assert sent == {"beta.test", "delta.test"}, sent
    assert metric(server, 'sluice_dmarc_reports_total{outcome="unverified_destination"}') >= 1
    assert metric(server, 'sluice_dmarc_reports_total{outcome="too_large"}') >= 1
    assert metric(server, 'sluice_dmarc_reports_total{outcome="queued"}') >= 3
    assert metric(server, 'sluice_dmarc_reports_total{outcome="error"}') is None
    # Mail the reports were about was delivered as usual (the refused one not).
    assert len(server.maildir("bob")) == 8


@pytest.mark.parametrize("trusted", [True, False])
def test_a_trusted_forwarders_arc_override_is_reported(reporting_server, rsa_key, trusted):
    # RFC 8617 §7.2.1: a list (forwarder.test) relays a p=reject domain's
    # message, which fails DMARC here, under its validating ARC seal.
    sealer = "forwarder.test" if trusted else "other.test"
    server = reporting_server(auth=f'trusted_arc_sealers = ["{sealer}"]')
    data = b"Authentication-Results: forwarder.test; spf=pass smtp.mailfrom=carol@beta.test\r\n" + message("carol@beta.test")
    heads = [b"from", b"to", b"subject", b"date", b"message-id"]
    seal = dkim.arc_sign(data, b"rsa2048", b"forwarder.test", rsa_key["private"], b"forwarder.test", include_headers=heads)
    code = send(server, "carol@beta.test", BAD, data=b"".join(seal) + data, envelope="list@forwarder.test")
    if not trusted:
        # The seal validates but is not trusted: the policy applies, as reported.
        assert code == 550
        wait_for_counts(server, "agg", "reports.test", "beta.test", Counter({
            (BAD, "reject", "fail", "fail", ()): 1,
        }))
        return
    assert code == 250
    found = wait_for_counts(server, "agg", "reports.test", "beta.test", Counter({
        (BAD, "none", "fail", "fail", ("trusted_forwarder",)): 1,
    }))
    record = found[0][2].find("d:record", NS)
    assert "forwarder.test" in record.findtext("d:row/d:policy_evaluated/d:reason/d:comment", namespaces=NS)
    assert record.findtext("d:identifiers/d:envelope_from", namespaces=NS) == "forwarder.test"


def test_counts_survive_a_restart_mid_interval(reporting_server):
    interval = 20
    # Start early in a period, so the restart falls inside it.
    deadline = time.time() + interval + 5
    while time.time() % interval > 4:
        assert time.time() < deadline
        time.sleep(0.2)
    server = reporting_server(interval=f"{interval}s")
    assert send(server, "alice@alpha.test", GOOD) == 250
    assert send(server, "alice@alpha.test", BAD) == 250
    server.stop()
    before = len(server.maildir("agg", "alpha.test"))
    server = reporting_server(interval=f"{interval}s")
    assert send(server, "alice@alpha.test", GOOD) == 250
    found = wait_for_counts(server, "agg", "alpha.test", "alpha.test", Counter({
        (GOOD, "none", "fail", "pass", ()): 2,
        (BAD, "quarantine", "fail", "fail", ()): 1,
    }), timeout=2 * interval + 30)
    # Nothing was reported before the restart: the counts of the first run
    # came back from the store.
    assert before == 0 and len(found) == 1

"""builtin:auth end to end: SPF, DKIM, DMARC through the real server, a local
authoritative DNS server (dns_server.py) and messages signed with dkimpy;
the results are read back from the Authentication-Results header of the
delivered message."""
import base64
import email
import shutil
import smtplib
import subprocess
import time

import dkim
import nacl.signing
import pytest

from dns_server import NO_ANSWER, SERVFAIL

HOST = "mx.example.test"

# Client addresses: 127.0.0.2 is the designated sender, 127.0.0.3 is not.
GOOD, BAD = "127.0.0.2", "127.0.0.3"


def spf_zone():
    return {
        "pass.test": {"TXT": [f"v=spf1 ip4:{GOOD} -all"]},
        "softfail.test": {"TXT": [f"v=spf1 ip4:{GOOD} ~all"]},
        "nospf.test": {"A": [GOOD], "TXT": ["some-site-verification=1"]},
        "broken.test": SERVFAIL,
        "silent.test": NO_ANSWER,
        "two.test": {"TXT": [f"v=spf1 ip4:{GOOD} -all", "v=spf1 -all"]},
        "helo.test": {"TXT": [f"v=spf1 ip4:{GOOD} -all"]},
    }


def auth_config(port, data, dns_port, auth="", plugin_timeout="10s", dns_timeout="2s"):
    return f"""
[server]
hostname = "{HOST}"
data_dir = "{data}"

[domains]
local = ["localhost"]

[[listener]]
name = "mx"
address = "127.0.0.1:{port}"
pipeline = "inbound"

[pipeline.inbound]
mail = ["auth"]
rcpt = ["relay"]
data = ["auth"]

[plugins.relay]
path = "builtin:relay"

[plugins.auth]
path = "builtin:auth"
timeout = "{plugin_timeout}"

[plugins.auth.config]
{auth}

[dns]
nameservers = ["127.0.0.1:{dns_port}"]
timeout = "{dns_timeout}"
attempts = 1

[queue]
retry = ["1s"]
"""


@pytest.fixture
def auth_server(tmp_path, dns_zone):
    from conftest import Server, free_port

    servers = []

    def start(records, ttl=60, more_config=lambda text: text, **kw):
        dns_port = dns_zone(records, ttl=ttl)
        port = free_port()
        server = Server(tmp_path, more_config(auth_config(port, tmp_path / "data", dns_port, **kw)))
        servers.append(server)
        return server.start(port)

    yield start
    for server in servers:
        server.stop()


def message(sender, rcpt, extra_headers=b"", body=b"Hello.\r\n"):
    return (
        b"From: " + sender.encode() + b"\r\n"
        b"To: " + rcpt.encode() + b"\r\n"
        b"Subject: auth test\r\n"
        b"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
        b"Message-ID: <" + str(time.monotonic_ns()).encode() + b"@test>\r\n"
        + extra_headers + b"\r\n" + body
    )


def send(server, sender, rcpt, data, source=GOOD, helo="client.test"):
    with smtplib.SMTP("127.0.0.1", server.port, local_hostname=helo, source_address=(source, 0), timeout=30) as smtp:
        smtp.sendmail(sender, [rcpt], data)


def delivered(server, local, count=1, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        files = server.maildir(local)
        if len(files) >= count:
            return [f.read_bytes() for f in files]
        time.sleep(0.1)
    raise AssertionError(f"{count} message(s) for {local} not delivered; log:\n{server.log.read_text()}")


def auth_results(raw):
    """Every Authentication-Results value of a message, unfolded, in order."""
    msg = email.message_from_bytes(raw)
    return [" ".join(v.split()) for v in msg.get_all("Authentication-Results", [])]


def ours(raw):
    mine = [v for v in auth_results(raw) if v.split(";")[0].strip().lower() == HOST]
    assert len(mine) == 1, auth_results(raw)
    return mine[0]


@pytest.mark.parametrize(
    "sender, source, expected",
    [
        ("alice@pass.test", GOOD, "spf=pass smtp.mailfrom=alice@pass.test"),
        ("alice@pass.test", BAD, "spf=fail smtp.mailfrom=alice@pass.test"),
        ("alice@softfail.test", BAD, "spf=softfail smtp.mailfrom=alice@softfail.test"),
        ("alice@nospf.test", GOOD, "spf=none smtp.mailfrom=alice@nospf.test"),
        ("alice@nowhere.test", GOOD, "spf=none smtp.mailfrom=alice@nowhere.test"),
        ("alice@broken.test", GOOD, "spf=temperror smtp.mailfrom=alice@broken.test"),
        ("alice@two.test", GOOD, "spf=permerror smtp.mailfrom=alice@two.test"),
    ],
)
def test_spf_result_is_in_the_header(auth_server, sender, source, expected):
    server = auth_server(spf_zone())
    send(server, sender, "bob@localhost", message(sender, "bob@localhost"), source=source)
    value = ours(delivered(server, "bob")[0])
    assert value.startswith(f"{HOST}; {expected}; dkim=none; dmarc=none"), value


def test_null_sender_is_checked_as_postmaster_at_helo(auth_server):
    server = auth_server(spf_zone())
    send(server, "", "bob@localhost", message("mailer-daemon@helo.test", "bob@localhost"), helo="helo.test")
    value = ours(delivered(server, "bob")[0])
    assert "spf=pass smtp.mailfrom=postmaster@helo.test" in value, value


def test_reject_spf_fail_refuses_mail_from(auth_server):
    server = auth_server(spf_zone(), auth="reject_spf_fail = true")
    with smtplib.SMTP("127.0.0.1", server.port, source_address=(BAD, 0), timeout=30) as smtp:
        smtp.ehlo("client.test")
        code, text = smtp.mail("alice@pass.test")
        assert code == 550 and text.startswith(b"5.7.23"), (code, text)
        # The designated client of the same domain gets through.
    with smtplib.SMTP("127.0.0.1", server.port, source_address=(GOOD, 0), timeout=30) as smtp:
        smtp.ehlo("client.test")
        assert smtp.mail("alice@pass.test")[0] == 250
        # softfail is not a fail.
        smtp.rset()
        assert smtp.mail("alice@softfail.test")[0] == 250


def test_dns_timeout_is_temperror_never_a_pass(auth_server):
    # The resolver waits longer than the plugin may: the host cuts the
    # lookup at the plugin's budget and reports temperror.
    server = auth_server(spf_zone(), plugin_timeout="1s", dns_timeout="5s")
    send(server, "alice@silent.test", "bob@localhost", message("alice@silent.test", "bob@localhost"))
    value = ours(delivered(server, "bob")[0])
    assert "spf=temperror smtp.mailfrom=alice@silent.test" in value, value
    assert "pass" not in value


def test_tempfail_on_temperror_answers_451(auth_server):
    server = auth_server(spf_zone(), auth="tempfail_on_temperror = true")
    with smtplib.SMTP("127.0.0.1", server.port, source_address=(GOOD, 0), timeout=30) as smtp:
        smtp.ehlo("client.test")
        code, text = smtp.mail("alice@broken.test")
        assert code == 451 and text.startswith(b"4.7.0"), (code, text)
        smtp.rset()
        assert smtp.mail("alice@pass.test")[0] == 250


# --- DKIM and DMARC ---------------------------------------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """An RSA-2048 key (openssl) and an Ed25519 key (PyNaCl), with the
    public halves as DKIM TXT records."""
    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed to make the RSA test key (apt-get install openssl)"
    tmp = tmp_path_factory.mktemp("dkim")
    pem = tmp / "rsa.pem"
    subprocess.run([openssl, "genrsa", "-out", str(pem), "2048"], check=True, capture_output=True)
    der = subprocess.run(
        [openssl, "rsa", "-in", str(pem), "-pubout", "-outform", "DER"], check=True, capture_output=True
    ).stdout
    ed = nacl.signing.SigningKey.generate()
    return {
        "rsa_private": pem.read_bytes(),
        "rsa_record": "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode(),
        "ed_private": base64.b64encode(bytes(ed)),
        "ed_record": "v=DKIM1; k=ed25519; p=" + base64.b64encode(bytes(ed.verify_key)).decode(),
    }


def dkim_zone(keys):
    zone = spf_zone()
    for domain, policy in [("signed.test", "reject"), ("quiet.test", "none"), ("hold.test", "quarantine")]:
        zone[domain] = {"TXT": ["v=spf1 -all"]}
        zone[f"_dmarc.{domain}"] = {"TXT": [f"v=DMARC1; p={policy}"]}
        zone[f"rsa2048._domainkey.{domain}"] = {"TXT": [keys["rsa_record"]]}
        zone[f"ed._domainkey.{domain}"] = {"TXT": [keys["ed_record"]]}
    return zone


def signed(keys, domain, data):
    heads = [b"from", b"to", b"subject", b"date", b"message-id"]
    rsa = dkim.sign(data, b"rsa2048", domain.encode(), keys["rsa_private"], include_headers=heads)
    ed = dkim.sign(
        data, b"ed", domain.encode(), keys["ed_private"], signature_algorithm=b"ed25519-sha256", include_headers=heads
    )
    return ed + rsa + data


def test_dkim_rsa_and_ed25519_pass_and_dmarc_passes_on_them(auth_server, keys):
    server = auth_server(dkim_zone(keys))
    data = signed(keys, "signed.test", message("alice@signed.test", "bob@localhost"))
    # SPF fails (-all), so DMARC can only pass through the aligned signatures.
    send(server, "alice@signed.test", "bob@localhost", data)
    value = ours(delivered(server, "bob")[0])
    assert "spf=fail smtp.mailfrom=alice@signed.test" in value, value
    assert "dkim=pass header.d=signed.test header.s=rsa2048" in value, value
    assert "dkim=pass header.d=signed.test header.s=ed" in value, value
    assert "dmarc=pass (p=reject) header.from=signed.test" in value, value
    assert "; arc=" not in value


def test_body_changed_after_signing_fails_dkim(auth_server, keys):
    server = auth_server(dkim_zone(keys))
    data = signed(keys, "quiet.test", message("alice@quiet.test", "bob@localhost"))
    data = data.replace(b"Hello.", b"Hello, changed.")
    send(server, "alice@quiet.test", "bob@localhost", data)
    value = ours(delivered(server, "bob")[0])
    assert "dkim=fail header.d=quiet.test header.s=rsa2048" in value, value
    assert "dkim=fail header.d=quiet.test header.s=ed" in value, value
    assert "dmarc=fail (p=none) header.from=quiet.test" in value, value


def test_dmarc_reject_policy_refuses_the_message(auth_server, keys):
    server = auth_server(dkim_zone(keys))
    data = signed(keys, "signed.test", message("alice@signed.test", "bob@localhost"))
    data = data.replace(b"Hello.", b"Hello, changed.")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(server, "alice@signed.test", "bob@localhost", data)
    assert refused.value.smtp_code == 550 and refused.value.smtp_error.startswith(b"5.7.1")
    assert b"signed.test" in refused.value.smtp_error


def test_dmarc_policy_off_only_reports(auth_server, keys):
    server = auth_server(dkim_zone(keys), auth="dmarc_policy = false")
    data = message("alice@signed.test", "bob@localhost")
    send(server, "alice@signed.test", "bob@localhost", data)
    value = ours(delivered(server, "bob")[0])
    assert "dmarc=fail (p=reject) header.from=signed.test" in value, value


def test_dmarc_quarantine_policy_delivers_the_message_marked(auth_server, keys):
    # RFC 7489 §6.3: quarantine is "treat as suspicious", not a refusal.
    server = auth_server(dkim_zone(keys))
    send(server, "alice@hold.test", "bob@localhost", message("alice@hold.test", "bob@localhost"))
    raw = delivered(server, "bob")[0]
    assert email.message_from_bytes(raw).get_all("X-Sluice-DMARC") == ["quarantine"], raw
    assert "dmarc=fail (p=quarantine) header.from=hold.test" in ours(raw)


def test_dmarc_quarantine_hold_keeps_the_message_in_quarantine(auth_server, keys):
    server = auth_server(dkim_zone(keys), auth='dmarc_quarantine = "hold"')
    send(server, "alice@hold.test", "bob@localhost", message("alice@hold.test", "bob@localhost"))
    # A message sent after it is delivered; the quarantined one is not.
    send(server, "alice@pass.test", "bob@localhost", message("alice@pass.test", "bob@localhost"))
    messages = delivered(server, "bob")
    assert len(messages) == 1 and b"alice@pass.test" in messages[0]
    assert b"X-Sluice-DMARC" not in messages[0]
    log = server.log.read_text()
    queued = [line for line in log.splitlines() if "message queued" in line and "hold.test" in line]
    assert queued, log


def test_a_quarantine_mark_from_outside_is_removed(auth_server):
    server = auth_server(spf_zone())
    data = message("alice@pass.test", "bob@localhost", extra_headers=b"X-Sluice-DMARC: quarantine\r\n")
    send(server, "alice@pass.test", "bob@localhost", data)
    raw = delivered(server, "bob")[0]
    assert b"X-Sluice-DMARC" not in raw, raw


# --- RFC corrections over mail-auth -----------------------------------------


def delivered_to_bob(server, sender, data):
    """Sends `data` from `sender` to bob and returns the delivered copy."""
    send(server, sender, "bob@localhost", data)
    return delivered(server, "bob")[0]


def rfc_zone(keys):
    zone = dkim_zone(keys)
    # RFC 7489 §6.6.4: pct=0 samples no failing message.
    zone["pct0.test"] = {"TXT": ["v=spf1 -all"]}
    zone["_dmarc.pct0.test"] = {"TXT": ["v=DMARC1; p=reject; pct=0"]}
    zone["pct100.test"] = {"TXT": ["v=spf1 -all"]}
    zone["_dmarc.pct100.test"] = {"TXT": ["v=DMARC1; p=reject; pct=100"]}
    # RFC 7489 §6.6.3 step 5: two records, no policy.
    zone["double.test"] = {"TXT": ["v=spf1 -all"]}
    zone["_dmarc.double.test"] = {"TXT": ["v=DMARC1; p=reject", "v=DMARC1; p=reject; rua=mailto:d@double.test"]}
    return zone


def sign_without_from(keys, domain, data):
    """A valid rsa-sha256 signature whose h= leaves From out. dkimpy's
    sign() refuses to make one (RFC 6376 §5.4), so its parts are used."""
    d = dkim.DKIM(data)
    d.signature_algorithm = b"rsa-sha256"
    heads = (b"to", b"subject", b"date")
    d.include_headers = heads
    canon = dkim.CanonicalizationPolicy.from_c_value(b"relaxed/simple")
    d.hasher = dkim.HASH_ALGORITHMS[b"rsa-sha256"]
    body_hash = base64.b64encode(d.hasher(canon.canonicalize_body(d.body)).digest())
    fields = [
        (b"v", b"1"), (b"a", b"rsa-sha256"), (b"c", canon.to_c_value()), (b"d", domain.encode()),
        (b"i", b"@" + domain.encode()), (b"s", b"rsa2048"), (b"h", b" : ".join(heads)),
        (b"bh", body_hash), (b"b", b"0" * 60),
    ]
    pk = dkim.crypto.parse_pem_private_key(keys["rsa_private"])
    return b"DKIM-Signature: " + d.gen_header(fields, heads, canon, b"DKIM-Signature", pk)


def test_a_signature_not_covering_from_is_not_valid(auth_server, keys):
    # RFC 6376 §5.4, §6.1.1.
    server = auth_server(rfc_zone(keys))
    data = message("alice@quiet.test", "bob@localhost")
    data = sign_without_from(keys, "quiet.test", data) + data
    value = ours(delivered_to_bob(server, "alice@quiet.test", data))
    assert "dkim=permerror (From is not signed) header.d=quiet.test header.s=rsa2048 header.i=@quiet.test" in value, value
    assert "dmarc=fail (p=none) header.from=quiet.test" in value, value


def test_rsa_sha1_signatures_fail(auth_server, keys):
    # RFC 8301 §3.1; dmarc cannot pass on them, so p=reject refuses.
    server = auth_server(rfc_zone(keys), auth="dmarc_policy = false")
    data = message("alice@signed.test", "bob@localhost")
    heads = [b"from", b"to", b"subject"]
    data = dkim.sign(data, b"rsa2048", b"signed.test", keys["rsa_private"], include_headers=heads,
                     signature_algorithm=b"rsa-sha1") + data
    value = ours(delivered_to_bob(server, "alice@signed.test", data))
    assert "dkim=fail (rsa-sha1 is not accepted) header.d=signed.test header.s=rsa2048 header.i=@signed.test" in value, value
    assert "dmarc=fail (p=reject) header.from=signed.test" in value, value


@pytest.mark.parametrize("appended", [b"", b"Text added by a list.\r\n"])
@pytest.mark.parametrize("canonicalize", [(b"relaxed", b"simple"), (b"relaxed", b"relaxed")])
def test_l_covers_the_first_octets_of_the_body(auth_server, keys, appended, canonicalize):
    # RFC 6376 §3.5: the hash covers the first l= octets of the canonical
    # body, whatever follows them; runs of white space make the relaxed
    # body shorter than the raw one.
    server = auth_server(rfc_zone(keys))
    data = message("alice@signed.test", "bob@localhost", body=b"Hello,   world.\r\n")
    heads = [b"from", b"to", b"subject"]
    data = dkim.sign(data, b"rsa2048", b"signed.test", keys["rsa_private"], include_headers=heads,
                     canonicalize=canonicalize, length=True) + data + appended
    assert dkim.verify(data, dnsfunc=lambda name, timeout=5: keys["rsa_record"].encode())
    value = ours(delivered_to_bob(server, "alice@signed.test", data))
    assert "dkim=pass header.d=signed.test header.s=rsa2048 header.i=@signed.test" in value, value


def test_an_unreadable_signature_is_attributed(auth_server, keys):
    # RFC 8601 §2.7.1: header.d, header.s and header.i whatever the result.
    server = auth_server(rfc_zone(keys))
    broken = b"DKIM-Signature: v=1; a=rsa-sha256; d=quiet.test; s=rsa2048; i=@quiet.test; h=from:to\r\n"
    data = message("alice@quiet.test", "bob@localhost", extra_headers=broken)
    value = ours(delivered_to_bob(server, "alice@quiet.test", data))
    assert "dkim=neutral (unreadable signature) header.d=quiet.test header.s=rsa2048 header.i=@quiet.test" in value, value


def test_dmarc_pct_0_is_not_rejected_but_quarantined(auth_server, keys):
    # RFC 7489 §6.6.4: outside the sample, p=reject becomes quarantine.
    server = auth_server(rfc_zone(keys))
    raw = delivered_to_bob(server, "alice@pct0.test", message("alice@pct0.test", "bob@localhost"))
    value = ours(raw)
    assert "dmarc=fail (p=quarantine: pct=0 left this message out of the sample) header.from=pct0.test" in value, value
    assert "policy.dmarc=quarantine" in value, value
    assert email.message_from_bytes(raw).get_all("X-Sluice-DMARC") == ["quarantine"], raw


def test_dmarc_pct_100_is_rejected(auth_server, keys):
    server = auth_server(rfc_zone(keys))
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(server, "alice@pct100.test", "bob@localhost", message("alice@pct100.test", "bob@localhost"))
    assert refused.value.smtp_code == 550 and refused.value.smtp_error.startswith(b"5.7.1")


def test_several_dmarc_records_mean_no_policy(auth_server, keys):
    # RFC 7489 §6.6.3 step 5.
    server = auth_server(rfc_zone(keys))
    value = ours(delivered_to_bob(server, "alice@double.test", message("alice@double.test", "bob@localhost")))
    assert "dmarc=none (_dmarc.double.test publishes 2 DMARC records) header.from=double.test" in value, value


# --- Forged headers ----------------------------------------------------------


def test_forged_results_with_our_id_are_removed_others_kept(auth_server):
    server = auth_server(spf_zone())
    forged = (
        b"Authentication-Results: other.example; dkim=pass header.d=other.example\r\n"
        b"Authentication-Results: " + HOST.upper().encode() + b"; spf=pass smtp.mailfrom=forged@pass.test\r\n"
        b"Authentication-Results: (comment) " + HOST.encode() + b" 1; dmarc=pass header.from=forged.test\r\n"
    )
    data = message("alice@pass.test", "bob@localhost", extra_headers=forged)
    send(server, "alice@pass.test", "bob@localhost", data, source=BAD)
    raw = delivered(server, "bob")[0]
    values = auth_results(raw)
    assert b"forged" not in raw, raw
    assert values[0].startswith(f"{HOST}; spf=fail smtp.mailfrom=alice@pass.test"), values
    assert values[1:] == ["other.example; dkim=pass header.d=other.example"], values


# --- The dns interface, as a plugin sees it -----------------------------------


def test_plugin_dns_lookups_and_timeout(tmp_path, dns_zone):
    from conftest import Server, fixture, free_port

    dns_port = dns_zone(
        {
            "example.test": {"TXT": ["hello world", "x" * 300], "MX": [(10, "mx1.example.test"), (20, "mx2.example.test")]},
            "mx1.example.test": {"A": ["127.0.0.9"], "AAAA": ["::9"]},
            "77.2.0.192.in-addr.arpa": {"PTR": ["client.example.test"]},
            "broken.test": SERVFAIL,
            "silent.test": NO_ANSWER,
        }
    )
    lookups = [
        ["txt", "example.test"],
        ["mx", "example.test"],
        ["a", "mx1.example.test"],
        ["aaaa", "mx1.example.test"],
        ["a", "example.test"],
        ["ptr", "192.0.2.77"],  # TEST-NET: hickory answers loopback PTRs itself
        ["a", "missing.example.test"],
        ["txt", "broken.test"],
        ["txt", "silent.test"],
        ["ptr", "not-an-ip"],
    ]
    port = free_port()
    config = auth_config(port, tmp_path / "data", dns_port, plugin_timeout="2s", dns_timeout="10s")
    config = config.replace('data = ["auth"]', 'data = ["lookups"]').replace('mail = ["auth"]', "")
    config += f"""
[plugins.lookups]
path = "{fixture('fixture_dns')}"
allow = ["dns"]
timeout = "2s"

[plugins.lookups.config]
lookups = {lookups!r}
""".replace("'", '"')
    server = Server(tmp_path, config).start(port)
    try:
        send(server, "alice@pass.test", "bob@localhost", message("alice@pass.test", "bob@localhost"))
        msg = email.message_from_bytes(delivered(server, "bob")[0])
        assert msg.get_all("X-Dns-Lookup") == [
            "txt example.test ok hello world," + "x" * 300,
            "mx example.test ok 10:mx1.example.test,20:mx2.example.test",
            "a mx1.example.test ok 127.0.0.9",
            "aaaa mx1.example.test ok ::9",
            "a example.test ok",
            "ptr 192.0.2.77 ok client.example.test",
            "a missing.example.test nxdomain",
            "txt broken.test temporary",
            # Cut at the plugin's time, well before the resolver's 10 s.
            "txt silent.test temporary",
            "ptr not-an-ip invalid",
        ], msg.get_all("X-Dns-Lookup")
    finally:
        server.stop()


def test_arc_set_from_a_forwarder_is_validated(auth_server, keys):
    # A forwarder (forwarder.test) recorded its results and sealed them with
    # ARC (dkimpy); a body changed after the seal breaks the chain.
    zone = dkim_zone(keys)
    zone["rsa2048._domainkey.forwarder.test"] = {"TXT": [keys["rsa_record"]]}
    server = auth_server(zone)
    data = message("alice@quiet.test", "bob@localhost")
    data = b"Authentication-Results: forwarder.test; spf=pass smtp.mailfrom=alice@quiet.test\r\n" + data
    heads = [b"from", b"to", b"subject", b"date", b"message-id"]
    seal = dkim.arc_sign(data, b"rsa2048", b"forwarder.test", keys["rsa_private"], b"forwarder.test", include_headers=heads)
    sealed = b"".join(seal) + data
    send(server, "alice@pass.test", "bob@localhost", sealed)
    value = ours(delivered(server, "bob")[0])
    assert value.endswith("; arc=pass"), value

    broken = sealed.replace(b"Hello.", b"Hello, changed after sealing.")
    send(server, "alice@pass.test", "carol@localhost", broken)
    value = ours(delivered(server, "carol")[0])
    assert value.endswith("; arc=fail"), value


@pytest.mark.parametrize("trusted", [True, False])
def test_a_trusted_arc_sealer_overrides_a_dmarc_fail(auth_server, keys, trusted):
    # RFC 8617 §7.2.1: a forwarder changed a p=reject domain's message (so
    # its DKIM signature and DMARC fail here) and sealed what it verified.
    zone = dkim_zone(keys)
    zone["rsa2048._domainkey.forwarder.test"] = {"TXT": [keys["rsa_record"]]}
    sealers = '["forwarder.test"]' if trusted else '["other.test"]'
    server = auth_server(zone, auth=f"trusted_arc_sealers = {sealers}")
    data = signed(keys, "signed.test", message("alice@signed.test", "bob@localhost"))
    data = data.replace(b"Hello.", b"Hello, from the list.")
    data = b"Authentication-Results: forwarder.test; dkim=pass header.d=signed.test\r\n" + data
    heads = [b"from", b"to", b"subject", b"date", b"message-id"]
    seal = dkim.arc_sign(data, b"rsa2048", b"forwarder.test", keys["rsa_private"], b"forwarder.test", include_headers=heads)
    sealed = b"".join(seal) + data
    if not trusted:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            send(server, "list@forwarder.test", "bob@localhost", sealed)
        assert refused.value.smtp_code == 550
        return
    value = ours(delivered_to_bob(server, "list@forwarder.test", sealed))
    assert "dkim=fail header.d=signed.test" in value, value
    assert (
        "dmarc=fail (p=reject) header.from=signed.test policy.dmarc=none policy.arc-sealer=forwarder.test" in value
    ), value
    assert value.endswith("; arc=pass"), value


def test_results_are_computed_once_per_transaction_and_shared(auth_server, dns_zone):
    # TTL 0: the resolver caches nothing, so every computation shows up in
    # the DNS server's query log. Two plugins ask for SPF at MAIL and for
    # everything at DATA; each transaction computes each result once.
    def two_plugins(text):
        text = text.replace('mail = ["auth"]', 'mail = ["auth", "auth2"]')
        text = text.replace('data = ["auth"]', 'data = ["auth", "auth2"]')
        return text + """
[plugins.auth2]
path = "builtin:auth"
timeout = "10s"

[plugins.auth2.config]
reject_spf_fail = true
"""

    zone = spf_zone()
    zone["_dmarc.pass.test"] = {"TXT": ["v=DMARC1; p=none"]}
    server = auth_server(zone, ttl=0, more_config=two_plugins)
    dns = dns_zone.servers[-1]
    with smtplib.SMTP("127.0.0.1", server.port, source_address=(GOOD, 0), timeout=30) as smtp:
        smtp.ehlo("client.test")
        assert smtp.mail("alice@pass.test")[0] == 250
        # SPF was computed at MAIL: one lookup, the record read once and
        # handed to mail-auth.
        assert dns.asked("pass.test", "TXT") == 1
        assert dns.asked("_dmarc.pass.test") == 0
        assert smtp.rcpt("bob@localhost")[0] == 250
        assert smtp.data(message("alice@pass.test", "bob@localhost"))[0] == 250
        assert dns.asked("pass.test", "TXT") == 1
        # DMARC was computed once: mail-auth's lookup plus RFC 7489's
        # policy discovery (several records, pct).
        assert dns.asked("_dmarc.pass.test", "TXT") == 2
        # A new transaction computes again.
        smtp.rset()
        assert smtp.mail("alice@pass.test")[0] == 250
        assert dns.asked("pass.test", "TXT") == 2
    raw = delivered(server, "bob")[0]
    values = [v for v in auth_results(raw) if v.startswith(HOST)]
    assert len(values) == 2 and values[0] == values[1], values
    assert "spf=pass" in values[0] and "dmarc=pass (p=none)" in values[0], values

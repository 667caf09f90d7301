"""The OpenSPF RFC 7208 test suite (release 2014.04, as shipped in the
pyspf 2.0.14 source distribution; vendored in openspf/ with its licence)
run against sluice's SPF evaluation.

Each scenario's zone data is served by a local DNS server (dns_server.py);
each test's host, helo and mailfrom go through the real binary
(`sluice spf`, the evaluation the auth checks use) and its result is
compared with the suite's, which allows alternatives for some tests.

Tests sluice answers otherwise are listed: DEVIATIONS with the reason the
RFC accepts sluice's answer, DEFECTS with what is wrong (all in mail-auth
0.13.3's evaluation, which sluice's host layer cannot reach from outside).
Both are strict xfails, so an entry that starts passing must be removed."""
import json
import pathlib
import subprocess

import pytest
import yaml

from conftest import BIN
from dns_server import TIMEOUT, DnsServer

SUITE = pathlib.Path(__file__).parent / "openspf" / "rfc7208-tests.yml"

# test id -> why sluice's answer is an accepted one.
DEVIATIONS = {}

# test id -> the defect (RFC 7208 section), not accepted, to be fixed.
DEFECTS = {
    "redirect-after-mechanisms2": "§4.6.1, §6: mail-auth refuses an unknown modifier whose name "
    "holds '.', '-' or '_' (permerror) where it must be ignored; sluice removes them from the "
    "checked domain's own record only, and here it is in the redirect target's",
    "a-colon-domain": "§7.1: mail-auth cannot parse a domain-spec holding ':' or '/' (permerror)",
    "a-colon-domain-ip4mapped": "§7.1: as a-colon-domain",
    "mx-colon-domain": "§7.1: as a-colon-domain",
    "mx-colon-domain-ip4mapped": "§7.1: as a-colon-domain",
    "invalid-domain-long-via-macro": "§4.3, §4.8: a target that is not a domain name once its "
    "macros are expanded is a temperror in mail-auth (the resolver refuses the name) instead of a "
    "name that does not exist (sluice handles literal targets only)",
    "invalid-hello-macro": "§7.1: %{h} expands to a name the resolver refuses: temperror, not fail",
    "hello-domain-literal": "§7.1: as invalid-hello-macro, for a domain literal",
    "macro-mania-in-domain": "§7.1: a name with spaces and '%' after macro expansion is refused "
    "by the resolver (temperror) instead of being looked up",
    "p-macro-multiple": "§7.1 (%{p}): mail-auth's %{p} expansion gives a permerror",
    "exists-ip6only": "§5.7: exists must look up A records only; mail-auth falls back to AAAA "
    "for an IPv6 client",
}


def scenarios():
    with SUITE.open("rb") as f:
        return list(yaml.safe_load_all(f))


def zone(zonedata):
    """The suite's zone data as dns_server records. Type SPF (99) is no
    longer looked up (RFC 7208 §3.1, §14.1): like the suite's own drivers,
    an SPF record is served as TXT when the name lists no TXT record. `TXT:
    NONE` says the name has no TXT record; `TIMEOUT` makes the types the
    name has no record of go unanswered."""
    records = {}
    for name, rdata in zonedata.items():
        has_txt = any(isinstance(r, dict) and "TXT" in r for r in rdata)
        entry = {}
        for r in rdata:
            if r == "TIMEOUT":
                entry[TIMEOUT] = True
                continue
            ((rtype, value),) = r.items()
            if rtype == "SPF":
                if has_txt:
                    continue
                rtype = "TXT"
            if value == "NONE":
                continue
            if value == []:
                # A TXT record of no strings cannot be sent (RFC 1035
                # §3.3.14: one or more); the nearest is one empty string.
                value = [""]
            if rtype == "CNAME":
                entry["CNAME"] = value
            elif rtype == "MX":
                entry.setdefault("MX", []).append((value[0], value[1]))
            else:
                entry.setdefault(rtype, []).append(value)
        records[name] = entry
    return records


def cases():
    for index, scenario in enumerate(scenarios()):
        for test_id, test in scenario["tests"].items():
            marks = []
            reason = DEVIATIONS.get(test_id) or DEFECTS.get(test_id)
            if reason:
                marks.append(pytest.mark.xfail(reason=reason, strict=True))
            yield pytest.param(index, test_id, test, id=test_id, marks=marks)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """One DNS server per scenario, started on first use."""
    started = {}
    tmp = tmp_path_factory.mktemp("openspf")

    def config_for(index):
        if index not in started:
            server = DnsServer(zone(scenarios()[index]["zonedata"]), ttl=0).start()
            path = tmp / f"scenario{index}.toml"
            path.write_text(f"""
[server]
hostname = "receiver.example.test"
data_dir = "{tmp / 'data'}"

[[listener]]
name = "mx"
address = "127.0.0.1:2525"
pipeline = "inbound"

[pipeline.inbound]

[dns]
nameservers = ["127.0.0.1:{server.port}"]
timeout = "1s"
attempts = 1
""")
            started[index] = (server, path)
        return started[index][1]

    yield config_for
    for server, _ in started.values():
        server.stop()


def spf(config, host, helo, mailfrom):
    args = [BIN, "spf", "--config", str(config), "--ip", host, "--helo", helo, "--mail-from", mailfrom, "--json"]
    run = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_the_whole_suite_is_run():
    total = sum(len(scenario["tests"]) for scenario in scenarios())
    assert total == 203
    known = {test_id for scenario in scenarios() for test_id in scenario["tests"]}
    assert set(DEVIATIONS) | set(DEFECTS) <= known


@pytest.mark.parametrize("index, test_id, test", list(cases()))
def test_openspf(servers, index, test_id, test):
    expected = test["result"] if isinstance(test["result"], list) else [test["result"]]
    got = spf(servers(index), test["host"], test["helo"], test["mailfrom"])
    assert got["result"] in expected, (test.get("spec"), test.get("description"), got)

"""nmap's smtp-open-relay script (16 relay tricks: foreign sender and
recipient, `<>`, the server's own name and address literal as sender,
`%`-hacks, quoted local parts, `@`-chains, source routes, `!`-paths)
against the configurations sluice ships: the embedded default
(config/default.toml) and the inbound MX pipeline (config/inbound.toml).

nmap runs from 127.0.0.5 (`-S`), outside every trusted network of those
configs, the way a stranger on the internet would. A control run with the
client inside `trusted_networks` must find the relay, so the check can
tell the two apart."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import Server, free_port

ROOT = Path(__file__).resolve().parents[2]
OUTSIDER = "127.0.0.5"


def shipped_config(name, port, data, dns_port):
    """A config file from config/, listening on one loopback port, with its
    data in `data`, its recipients file in a temporary one, and DNS (dnsbl,
    SPF, reverse names) from a local server that knows nothing, so every
    lookup answers NXDOMAIN at once."""
    text = (ROOT / "config" / name).read_text()
    recipients = Path(data).parent / "recipients"
    recipients.write_text("alice@example.org\nsales@example.org: alice@example.org\n")
    text = text.replace("/etc/sluice/recipients", str(recipients))
    text = re.sub(r'(?m)^data_dir = "[^"]*"', f'data_dir = "{data}"', text)
    # Every listener onto the one port nmap scans: the first keeps it, the
    # others (submission) move to free ports.
    ports = iter([port] + [free_port() for _ in range(8)])
    text = re.sub(r'(?m)^address = "[^"]*:\d+"', lambda _: f'address = "127.0.0.1:{next(ports)}"', text)
    text = re.sub(r"(?ms)^\[admin\].*?(?=^\[|\Z)", "", text)
    text = re.sub(r"(?ms)^\[delivery\].*?(?=^\[|\Z)", "[delivery]\n", text)
    if "[dns]" in text:
        text = re.sub(r"(?ms)^\[dns\].*?(?=^\[|\Z)", "", text)
    return text + f'\n[dns]\nnameservers = ["127.0.0.1:{dns_port}"]\ntimeout = "1s"\n'


def nmap_open_relay(port):
    nmap = shutil.which("nmap")
    assert nmap, "nmap is missing: tests/install-peers.sh installs it"
    # -sV names the service smtp, which the script's port rule wants on a
    # port other than 25/465/587.
    result = subprocess.run(
        [nmap, "-Pn", "-n", "-sV", "--version-light", "-e", "lo", "-S", OUTSIDER,
         "-p", str(port), "--script", "smtp-open-relay", "-v", "127.0.0.1"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    match = re.search(r"smtp-open-relay: (.*)", result.stdout)
    assert match, f"the script did not run:\n{result.stdout}"
    return match.group(1), result.stdout


def start(tmp_path, text, port):
    server = Server(tmp_path, text)
    return server.start(port)


@pytest.mark.parametrize("name", ["default.toml", "inbound.toml"])
def test_shipped_configs_are_no_open_relay(tmp_path, dns_zone, name):
    dns_port = dns_zone({})
    port = free_port()
    server = start(tmp_path, shipped_config(name, port, tmp_path / "data", dns_port), port)
    try:
        verdict, output = nmap_open_relay(port)
    finally:
        server.stop()
    assert "doesn't seem to be an open relay, all tests failed" in verdict, output
    # The probes really came from the outsider's address.
    assert f"client={OUTSIDER}:" in server.log.read_text()


def test_nmap_finds_a_relay_for_a_trusted_client(tmp_path, dns_zone):
    dns_port = dns_zone({})
    port = free_port()
    text = shipped_config("default.toml", port, tmp_path / "data", dns_port)
    text, count = re.subn(r"(?m)^trusted_networks = \[[^\]]*\]", 'trusted_networks = ["127.0.0.0/8"]', text)
    assert count == 1, "config/default.toml has one trusted_networks list (relay's)"
    server = start(tmp_path, text, port)
    try:
        verdict, output = nmap_open_relay(port)
    finally:
        server.stop()
    assert re.match(r"Server is an open relay \(\d+/16 tests\)", verdict), output

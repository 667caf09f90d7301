"""A local authoritative DNS server for the tests (dnslib), serving a zone
given as zone-file lines, on UDP and TCP on one loopback port.

Names without records answer NXDOMAIN; a name that exists with other
types answers NOERROR with no answers; names listed in `servfail` answer
SERVFAIL, which sluice must treat as a temporary failure."""
import socket

import pytest
from dnslib import QTYPE, RCODE, RR
from dnslib.server import BaseResolver, DNSLogger, DNSServer


# Errors only; a line per query drowns the test output.
QUIET = DNSLogger(log="-request,-reply,-truncated,-data,+error", prefix=False)


class ZoneResolver(BaseResolver):
    def __init__(self, zone, servfail=()):
        self.records = []
        for line in zone:
            self.records.extend(RR.fromZone(line))
        self.servfail = {name.rstrip(".").lower() + "." for name in servfail}

    def _named(self, name):
        return [rr for rr in self.records if str(rr.rname).lower() == name]

    def resolve(self, request, handler):
        reply = request.reply()
        name = str(request.q.qname).lower()
        qtype = request.q.qtype
        if name in self.servfail:
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        # Follow CNAMEs inside the zone, as a recursive resolver would.
        for _ in range(8):
            named = self._named(name)
            if not named:
                if not reply.rr:
                    reply.header.rcode = RCODE.NXDOMAIN
                return reply
            cname = [rr for rr in named if rr.rtype == QTYPE.CNAME]
            if cname and qtype != QTYPE.CNAME:
                reply.add_answer(*cname)
                name = str(cname[0].rdata.label).lower()
                continue
            reply.add_answer(*[rr for rr in named if rr.rtype == qtype])
            return reply
        return reply


def free_udp_tcp_port():
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket() as t:
                try:
                    t.bind(("127.0.0.1", port))
                    return port
                except OSError:
                    continue


class DnsZone:
    """A running server; `address` is what `[dns] nameservers` takes."""

    def __init__(self, zone, servfail=()):
        self.resolver = ZoneResolver(zone, servfail)
        self.port = free_udp_tcp_port()
        self.servers = [
            DNSServer(self.resolver, address="127.0.0.1", port=self.port, tcp=tcp, logger=QUIET)
            for tcp in (False, True)
        ]

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def start(self):
        for server in self.servers:
            server.start_thread()
        return self

    def stop(self):
        for server in self.servers:
            server.stop()
            server.server.server_close()


@pytest.fixture
def dns_zone():
    """`dns_zone(lines, servfail=())` starts a server; all stop at the end."""
    zones = []

    def start(zone, servfail=()):
        z = DnsZone(zone, servfail).start()
        zones.append(z)
        return z

    yield start
    for z in zones:
        z.stop()

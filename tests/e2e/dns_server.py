"""A small authoritative DNS server for the end-to-end tests (dnslib), on
127.0.0.1 over UDP and TCP on one port.

Records come from a dict, names case-insensitive and with or without the
final dot:

    {
        "example.org": {"TXT": ["v=spf1 ip4:127.0.0.2 -all"], "MX": [(10, "mx.example.org")]},
        "mx.example.org": {"A": ["127.0.0.1"], "AAAA": ["::1"]},
        "2.0.0.127.in-addr.arpa": {"PTR": ["mail.example.org"]},
        "www.example.org": {"CNAME": "example.org"},
        "broken.example": SERVFAIL,      # answers SERVFAIL to every query
        "silent.example": NO_ANSWER,     # never answers (the client times out)
        "slow.example": {"TXT": ["v=spf1 -all"], TIMEOUT: True},
                                         # answers TXT, times out on other types
    }

A name in the dict answers its records of the asked type, or an empty
NOERROR answer when it has none of that type (as does a name that only has
names below it); any other name is NXDOMAIN. A CNAME is answered for every
type and followed inside the zone. TXT strings longer than 255 octets are
split into several character-strings, as DKIM keys need; a TXT value that
is a list of strings is one record of those character-strings.

Answers carry a TTL of 60 s (`ttl=0` makes the resolver ask every time).
The pytest fixture `dns_zone(records, ttl=60) -> port` (see conftest.py)
starts one server per call and stops it after the test; `DnsServer.queries` lists what was
asked, as (name, type) pairs.
"""
import socket
import threading

from dnslib import AAAA, CNAME, DNSError, MX, PTR, QTYPE, RCODE, RR, TXT, A
from dnslib.server import DNSLogger, DNSServer

SERVFAIL = "servfail"
NO_ANSWER = "no-answer"
# A key of a name's records: queries for the types it has none of go unanswered.
TIMEOUT = "TIMEOUT"
TTL = 60


def _label(name):
    return name.lower().rstrip(".")


def _txt_chunks(text):
    if isinstance(text, (list, tuple)):
        return [part.encode() if isinstance(part, str) else bytes(part) for part in text]
    data = text.encode() if isinstance(text, str) else bytes(text)
    return [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]


class _ZoneResolver:
    def __init__(self, records, queries, ttl):
        self.records = {_label(name): value for name, value in records.items()}
        self.queries = queries
        self.ttl = ttl
        self.lock = threading.Lock()

    def _rdatas(self, rtype, values):
        if rtype == "A":
            return [A(v) for v in values]
        if rtype == "AAAA":
            return [AAAA(v) for v in values]
        if rtype == "TXT":
            return [TXT(_txt_chunks(v)) for v in values]
        if rtype == "MX":
            return [MX(exchange, preference) for preference, exchange in values]
        if rtype == "PTR":
            return [PTR(v) for v in values]
        if rtype == "CNAME":
            return [CNAME(values)]
        raise ValueError(f"unsupported record type {rtype}")

    def _has_descendants(self, name):
        suffix = "." + name
        return any(other.endswith(suffix) for other in self.records)

    def resolve(self, request, handler):
        qname = str(request.q.qname)
        qtype = QTYPE[request.q.qtype]
        with self.lock:
            self.queries.append((_label(qname), qtype))
        reply = request.reply()
        name = _label(qname)
        owner = qname
        for _ in range(8):  # CNAME chain bound
            entry = self.records.get(name)
            if entry == NO_ANSWER:
                # dnslib sends nothing when the resolver raises DNSError.
                raise DNSError(f"{name}: configured not to answer")
            if entry == SERVFAIL:
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            if entry is None:
                if not reply.rr and not self._has_descendants(name):
                    reply.header.rcode = RCODE.NXDOMAIN
                return reply
            if entry.get(TIMEOUT) and qtype not in entry:
                raise DNSError(f"{name}: configured not to answer {qtype}")
            target = entry.get("CNAME")
            if target and qtype != "CNAME":
                reply.add_answer(RR(owner, QTYPE.CNAME, rdata=CNAME(target), ttl=self.ttl))
                name, owner = _label(target), target
                continue
            for rtype, values in entry.items():
                if rtype != TIMEOUT and qtype in (rtype, "ANY"):
                    for rdata in self._rdatas(rtype, values):
                        reply.add_answer(RR(owner, getattr(QTYPE, rtype), rdata=rdata, ttl=self.ttl))
            return reply
        reply.header.rcode = RCODE.SERVFAIL
        return reply


class DnsServer:
    """One zone served on address:port (127.0.0.1 by default) over UDP and
    TCP; a resolver that only knows port 53 needs its own loopback address."""

    def __init__(self, records, port=0, ttl=TTL, address="127.0.0.1"):
        self.address = address
        self.queries = []
        self.resolver = _ZoneResolver(records, self.queries, ttl)
        self.requested_port = port
        self.port = None
        self.servers = []

    def start(self):
        logger = DNSLogger(log="-recv,-send,-request,-reply,-truncated,-data", prefix=False, logf=lambda s: None)
        for _ in range(20):
            port = self.requested_port or _free_udp_port()
            try:
                udp = DNSServer(self.resolver, port=port, address=self.address, logger=logger)
                try:
                    tcp = DNSServer(self.resolver, port=port, address=self.address, logger=logger, tcp=True)
                except OSError:
                    udp.server.server_close()
                    raise
            except OSError:
                if self.requested_port:
                    raise
                continue
            self.servers = [udp, tcp]
            for server in self.servers:
                server.start_thread()
            self.port = port
            return self
        raise RuntimeError("no free port for the DNS server")

    def stop(self):
        for server in self.servers:
            server.stop()
            server.server.server_close()
        self.servers = []

    def asked(self, name, qtype=None):
        """How many queries for `name` (of `qtype`, if given) were made."""
        name = _label(name)
        return sum(1 for n, t in list(self.queries) if n == name and (qtype is None or t == qtype))


def _free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

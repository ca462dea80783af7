"""A small authoritative DNS server on loopback (dnslib) for benchmarks and tests: the machine's
own resolver answers nothing useful, and nothing may leave loopback."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from dnslib import AAAA, MX, QTYPE, RCODE, RR, TXT, A, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer

__all__ = ["Zone", "ZoneServer", "bench_zone"]


@dataclass
class Zone:
    mx: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    a: dict[str, str] = field(default_factory=dict)
    aaaa: dict[str, str] = field(default_factory=dict)
    # a name's TXT record, or several (as when two tenants each publish a verification token)
    txt: dict[str, str | list[str]] = field(default_factory=dict)
    # names that exist but have no records of the asked type are answered NOERROR/NODATA;
    # names listed here are never answered (the client times out)
    silent: set[str] = field(default_factory=set)

    def exists(self, name: str) -> bool:
        return any(name in table for table in (self.mx, self.a, self.aaaa, self.txt))


def _character_strings(value: str) -> list[bytes]:
    """A TXT value as the character-strings of at most 255 bytes it must be sent as (RFC 1035);
    a reader joins them back (a DKIM key record is about 400 bytes)."""
    data = value.encode()
    return [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]


class _Resolver(BaseResolver):  # type: ignore[misc]  # dnslib ships no types
    def __init__(
        self, zone: Zone, counts: dict[tuple[str, str], int], lock: threading.Lock
    ) -> None:
        self.zone = zone
        self.counts = counts
        self.lock = lock

    def resolve(self, request: DNSRecord, handler: object) -> DNSRecord:
        reply = request.reply()
        q = request.q
        name = str(q.qname).rstrip(".").lower()
        qtype = QTYPE[q.qtype]
        with self.lock:
            self.counts[(name, qtype)] = self.counts.get((name, qtype), 0) + 1
        if name in self.zone.silent:
            time.sleep(5)  # longer than any client timeout in the tests
            return reply
        if not self.zone.exists(name):
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        if qtype == "MX":
            for pref, host in self.zone.mx.get(name, []):
                reply.add_answer(RR(q.qname, QTYPE.MX, rdata=MX(host, pref), ttl=300))
        elif qtype == "A" and name in self.zone.a:
            reply.add_answer(RR(q.qname, QTYPE.A, rdata=A(self.zone.a[name]), ttl=300))
        elif qtype == "AAAA" and name in self.zone.aaaa:
            reply.add_answer(RR(q.qname, QTYPE.AAAA, rdata=AAAA(self.zone.aaaa[name]), ttl=300))
        elif qtype == "TXT" and name in self.zone.txt:
            values = self.zone.txt[name]
            for value in [values] if isinstance(values, str) else values:
                rdata = TXT(_character_strings(value))
                reply.add_answer(RR(q.qname, QTYPE.TXT, rdata=rdata, ttl=300))
        return reply


class ZoneServer:
    """UDP DNS server on ``host:port`` answering from ``zone``; counts queries per (name, type)."""

    def __init__(self, zone: Zone, host: str = "127.0.0.53", port: int = 0) -> None:
        self.zone = zone
        self.counts: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        quiet = DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data")
        self.server = DNSServer(
            _Resolver(zone, self.counts, self._lock), port=port, address=host, logger=quiet
        )
        self.host = host
        self.port = self.server.server.server_address[1]

    @property
    def nameserver(self) -> str:
        return f"{self.host}:{self.port}"

    def queries(self, name: str, qtype: str) -> int:
        with self._lock:
            return self.counts.get((name, qtype), 0)

    def start(self) -> None:
        self.server.start_thread()

    def stop(self) -> None:
        self.server.stop()


def bench_zone(domains: int) -> Zone:
    """The benchmarks' zone: ``d0.bench.example`` ... ``d<n-1>.bench.example``, all with one
    MX on loopback (the address the bench's SMTP peers listen on)."""
    zone = Zone()
    for i in range(domains):
        zone.mx[f"d{i}.bench.example"] = [(10, "mx.bench.example")]
    zone.a["mx.bench.example"] = "127.0.0.1"
    return zone

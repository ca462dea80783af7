"""MX lookup (aiodns / c-ares) against configurable nameservers, and its pure classification.

RFC 5321 section 5.1: no MX means the domain's own A/AAAA is the implicit MX.
RFC 7505: a lone MX with exchange "." (a null MX) says the domain accepts no mail.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import aiodns
import pycares

__all__ = ["MxAnswer", "MxResolver", "MxStatus", "classify_mx"]

MxStatus = Literal["ok", "null_mx", "implicit", "no_mail", "nxdomain", "timeout", "error"]


@dataclass(frozen=True)
class MxAnswer:
    status: MxStatus
    hosts: tuple[str, ...] = ()
    ttl: int = 0
    error: str | None = None

    @property
    def accepts_mail(self) -> bool | None:
        if self.status in ("ok", "implicit"):
            return True
        if self.status in ("null_mx", "no_mail", "nxdomain"):
            return False
        return None  # timeout/error: we do not know

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MxAnswer:
        return cls(data["status"], tuple(data["hosts"]), int(data["ttl"]), data.get("error"))


def classify_mx(records: Iterable[tuple[int, str]], ttl: int = 0) -> MxAnswer:
    """Order MX records by preference; detect a null MX."""
    found = sorted((pref, host.rstrip(".").lower()) for pref, host in records)
    if not found:
        return MxAnswer("no_mail", ttl=ttl)
    if any(host == "" for _, host in found):
        return MxAnswer("null_mx", ttl=ttl)
    hosts = tuple(dict.fromkeys(host for _, host in found))
    return MxAnswer("ok", hosts, ttl)


_TIMEOUTS = {pycares.errno.ARES_ETIMEOUT, pycares.errno.ARES_ECONNREFUSED}
_NO_DATA = {pycares.errno.ARES_ENODATA}
_NX = {pycares.errno.ARES_ENOTFOUND}


def _code(exc: aiodns.error.DNSError) -> int:
    return int(exc.args[0]) if exc.args and isinstance(exc.args[0], int) else -1


class MxResolver:
    def __init__(self, nameservers: Sequence[str], timeout: float, tries: int = 2) -> None:
        self._nameservers = list(nameservers)
        self._timeout = timeout
        self._tries = tries
        self._resolver: aiodns.DNSResolver | None = None

    def _get(self) -> aiodns.DNSResolver:
        # created lazily: c-ares binds to the running loop
        if self._resolver is None:
            kwargs: dict[str, Any] = {"timeout": self._timeout, "tries": self._tries}
            if self._nameservers:
                kwargs["nameservers"] = self._nameservers
            self._resolver = aiodns.DNSResolver(**kwargs)
        return self._resolver

    async def lookup(self, domain: str) -> MxAnswer:
        resolver = self._get()
        try:
            result = await resolver.query_dns(domain, "MX")
        except aiodns.error.DNSError as exc:
            code = _code(exc)
            if code in _NO_DATA:
                return await self._implicit(domain)
            if code in _NX:
                return MxAnswer("nxdomain", error=str(exc.args[-1]))
            status: MxStatus = "timeout" if code in _TIMEOUTS else "error"
            return MxAnswer(status, error=str(exc.args[-1]))
        records = [
            (r.data.priority, r.data.exchange)
            for r in result.answer
            if isinstance(r.data, pycares.MXRecordData)
        ]
        ttl = min((r.ttl for r in result.answer), default=0)
        if not records:
            return await self._implicit(domain)
        return classify_mx(records, ttl)

    async def addresses(self, host: str) -> list[str]:
        """IPv4 then IPv6 addresses of an MX host, through the same nameservers."""
        resolver = self._get()
        found: list[str] = []
        for qtype in ("A", "AAAA"):
            try:
                result = await resolver.query_dns(host, qtype)
            except aiodns.error.DNSError:
                continue
            found.extend(
                r.data.addr
                for r in result.answer
                if isinstance(r.data, (pycares.ARecordData, pycares.AAAARecordData))
            )
        return found

    async def _implicit(self, domain: str) -> MxAnswer:
        resolver = self._get()
        answers = await asyncio.gather(
            resolver.query_dns(domain, "A"),
            resolver.query_dns(domain, "AAAA"),
            return_exceptions=True,
        )
        ttls = [r.ttl for a in answers if not isinstance(a, BaseException) for r in a.answer]
        if ttls:
            return MxAnswer("implicit", (domain,), min(ttls))
        errors = [a for a in answers if isinstance(a, aiodns.error.DNSError)]
        if any(_code(e) in _TIMEOUTS for e in errors):
            return MxAnswer("timeout", error="A/AAAA lookup timed out")
        return MxAnswer("no_mail", error="no MX and no A/AAAA record")

"""MX lookup (aiodns / c-ares) against configurable nameservers, its pure classification, and
the cache verification and delivery share; TXT lookup through the same resolver (sender
verification tokens and DKIM key records).

RFC 5321 section 5.1: no MX means the domain's own A/AAAA is the implicit MX.
RFC 7505: a lone MX with exchange "." (a null MX) says the domain accepts no mail.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Generic, Literal, TypeVar

import aiodns
import pycares

__all__ = ["MxAnswer", "MxCache", "MxResolver", "MxStatus", "TxtAnswer", "TxtStatus", "classify_mx"]

T = TypeVar("T")

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


TxtStatus = Literal["ok", "nxdomain", "no_data", "timeout", "error"]


@dataclass(frozen=True)
class TxtAnswer:
    """The TXT records of a name, each one's character-strings joined (RFC 7208 3.3)."""

    status: TxtStatus
    values: tuple[str, ...] = ()
    error: str | None = None


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

    async def txt(self, name: str) -> TxtAnswer:
        """The TXT records at ``name``; never raises for a DNS failure, the status says it."""
        try:
            result = await self._get().query_dns(name, "TXT")
        except aiodns.error.DNSError as exc:
            code = _code(exc)
            status: TxtStatus = (
                "no_data"
                if code in _NO_DATA
                else "nxdomain"
                if code in _NX
                else "timeout"
                if code in _TIMEOUTS
                else "error"
            )
            return TxtAnswer(status, error=str(exc.args[-1]))
        values = tuple(
            r.data.data.decode("utf-8", "replace")
            for r in result.answer
            if isinstance(r.data, pycares.TXTRecordData)
        )
        return TxtAnswer("ok" if values else "no_data", values)

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


class _Expiring(Generic[T]):
    """A bounded table of values that expire, whose concurrent fetches of one key are shared: a
    campaign to one domain asks DNS once, not once per message."""

    def __init__(self, max_entries: int, clock: Callable[[], float]) -> None:
        self._max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[float, T]] = {}
        self._pending: dict[str, asyncio.Task[T]] = {}

    async def get(self, key: str, fetch: Callable[[], Awaitable[tuple[T, float | None]]]) -> T:
        entry = self._entries.get(key)
        if entry is not None:
            if entry[0] > self._clock():
                return entry[1]
            del self._entries[key]
        task = self._pending.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch(key, fetch))
            self._pending[key] = task
            task.add_done_callback(lambda _: self._pending.pop(key, None))
        # one waiter's cancellation must not cancel the fetch the others wait for
        return await asyncio.shield(task)

    async def _fetch(self, key: str, fetch: Callable[[], Awaitable[tuple[T, float | None]]]) -> T:
        value, ttl = await fetch()
        if ttl is not None:
            if len(self._entries) >= self._max_entries:
                del self._entries[next(iter(self._entries))]  # the oldest: crude, but bounded
            self._entries[key] = (self._clock() + ttl, value)
        return value

    def fresh(self, key: str) -> bool:
        entry = self._entries.get(key)
        return entry is not None and entry[0] > self._clock()


class MxCache:
    """The one MX cache, shared by verification and delivery: MX answers for their TTL clamped
    to [min_ttl, max_ttl]; failed lookups (timeout, error) are not kept, so the next caller asks
    again. MX host addresses for ``min_ttl``, as ``MxResolver.addresses`` does not say their
    TTL. Concurrent lookups of one name share one query. ``clock``: monotonic seconds."""

    def __init__(
        self,
        resolver: MxResolver,
        *,
        min_ttl: float = 60.0,
        max_ttl: float = 3600.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._resolver = resolver
        self._min_ttl = min_ttl
        self._max_ttl = max_ttl
        self._answers: _Expiring[MxAnswer] = _Expiring(max_entries, clock)
        self._addresses: _Expiring[tuple[str, ...]] = _Expiring(max_entries, clock)

    def __contains__(self, domain: object) -> bool:
        """Whether a live answer for ``domain`` is kept (a lookup would need no network)."""
        return isinstance(domain, str) and self._answers.fresh(domain)

    def ttl(self, answer: MxAnswer) -> float | None:
        """How long to keep ``answer``; None for a failure, which the next message asks again."""
        if answer.status in ("timeout", "error"):
            return None
        return min(max(float(answer.ttl), self._min_ttl), self._max_ttl)

    async def lookup(self, domain: str) -> MxAnswer:
        async def fetch() -> tuple[MxAnswer, float | None]:
            answer = await self._resolver.lookup(domain)
            return answer, self.ttl(answer)

        return await self._answers.get(domain, fetch)

    async def addresses(self, host: str) -> tuple[str, ...]:
        async def fetch() -> tuple[tuple[str, ...], float | None]:
            found = tuple(await self._resolver.addresses(host))
            # nothing found may be a timeout: ask again next time
            return found, (self._min_ttl if found else None)

        return await self._addresses.get(host, fetch)

"""Verify one address: caches first, then syntax, lists, MX, optional SMTP probe, verdict.

MX answers come from the ``MxCache`` delivery uses too (``streams.mail.dns``). Verdicts are kept in
plain mutable mappings with JSON-safe values carrying an ``expires`` epoch: a bounded in-memory
cache for cheap verdicts (recomputed after a restart at the cost of a DNS lookup), and a state
store with a changelog for probe verdicts, which cost an SMTP session.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any, cast

from streams.contract.records import VerificationResult, VerifyTask
from streams.mail.dns import MxAnswer, MxCache
from streams.mail.syntax import SyntaxResult, check_syntax
from streams.verify.lists import Lists
from streams.verify.probe import ProbeResult, SmtpProber
from streams.verify.verdict import apply_suppression, build_result, cache_ttl, judge

__all__ = ["Verifier"]


def _to_ms(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp() * 1000)


def _from_ms(value: int | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value / 1000, UTC)


class Verifier:
    def __init__(
        self,
        lists: Lists,
        mx_cache: MxCache,
        prober: SmtpProber | None,
        verdict_cache: MutableMapping[str, Any],
        *,
        suppressed: Callable[[str, str], bool] = lambda _t, _a: False,
    ) -> None:
        self.lists = lists
        self.prober = prober
        self.mx_cache = mx_cache
        self.verdict_cache = verdict_cache
        self.suppressed = suppressed
        self._catch_all: dict[str, tuple[bool, float]] = {}
        # concurrent checks of one address share the first one's work (and its SMTP probe)
        self._inflight: dict[str, asyncio.Future[None]] = {}

    async def _probe(self, mx: MxAnswer, address: str, domain: str) -> ProbeResult:
        assert self.prober is not None
        known = self._catch_all.get(domain)
        catch_all = known[0] if known and known[1] > time.monotonic() else None
        addresses: list[str] = []
        for host in mx.hosts[:3]:
            addresses.extend((await self.mx_cache.addresses(host))[:1])
        result = await self.prober.probe(addresses, address, domain, catch_all=catch_all)
        if catch_all is None and result.catch_all is not None:
            self._catch_all[domain] = (result.catch_all, time.monotonic() + 3600)
        return result

    def mx_is_cached(self, domain: str) -> bool:
        """A verification of an address at ``domain`` without a probe needs no network."""
        return domain.lower() in self.mx_cache

    async def verify(
        self, task: VerifyTask, now: datetime, durable: MutableMapping[str, Any] | None = None
    ) -> VerificationResult:
        """``durable``: where probe verdicts are kept (a state store with a changelog: a probe
        is worth remembering across restarts); other verdicts stay in ``verdict_cache``."""
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)  # Avro keeps milliseconds
        ts = now.timestamp()
        probe = bool(task["smtp_probe"]) and self.prober is not None
        cache = durable if probe and durable is not None else self.verdict_cache
        syntax = check_syntax(task["address"])
        cache_key = f"{(syntax.normalized or task['address']).lower()}\x1f{int(probe)}"
        pending = self._inflight.get(cache_key)
        if pending is not None:
            await asyncio.shield(pending)
        hit = cache.get(cache_key)
        result: VerificationResult
        if hit is not None and hit["expires"] > ts:
            stored = hit["result"]  # JSON-safe: verified_at in epoch milliseconds
            result = cast(
                "VerificationResult",
                {
                    **stored,
                    "request_id": task["request_id"],
                    "tenant": task["tenant"],
                    "address": task["address"],
                    "cached": True,
                    "requested_at": task["requested_at"],
                    "verified_at": _from_ms(stored["verified_at"]),
                },
            )
        else:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._inflight[cache_key] = done
            try:
                result = await self._fresh(task, syntax, now, probe, cache_key, cache)
            finally:
                del self._inflight[cache_key]
                done.set_result(None)
        if self.suppressed(task["tenant"], syntax.normalized or task["address"]):
            result = apply_suppression(result)
        return result

    async def _fresh(
        self,
        task: VerifyTask,
        syntax: SyntaxResult,
        now: datetime,
        probe: bool,
        cache_key: str,
        cache: MutableMapping[str, Any],
    ) -> VerificationResult:
        ts = now.timestamp()
        mx = misc = smtp = None
        if syntax.valid:
            assert syntax.ascii_domain is not None
            assert syntax.local_part is not None
            mx = await self.mx_cache.lookup(syntax.ascii_domain)
            misc = self.lists.flags(syntax.local_part, syntax.ascii_domain)
            if probe and mx.accepts_mail and mx.hosts:
                smtp = await self._probe(
                    mx, syntax.normalized or task["address"], syntax.ascii_domain
                )
        verdict = judge(syntax, mx, misc, smtp)
        result = build_result(task, syntax, mx, misc, smtp, verdict, now)
        stored = {**result, "verified_at": _to_ms(now), "requested_at": None}
        cache[cache_key] = {
            "result": stored,
            "expires": ts + cache_ttl(verdict, smtp is not None),
        }
        return result

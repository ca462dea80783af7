"""Verify stage on the batch runtime: VerifyTask in, VerificationResult out; the work is in
streams/verify/service.py. Partitioned by recipient domain, so one worker owns a domain's probe
connections and its probe verdicts (the ``verdicts`` store, co-partitioned with the topic)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, MutableMapping, Sequence
from datetime import datetime
from typing import Any

from streams.contract.codec import Codec
from streams.contract.records import VerificationResult, VerifyTask
from streams.db.directory import DirectoryHolder
from streams.errors import CodecError
from streams.kafka.config import TopicNames
from streams.mail.dns import MxCache, MxResolver
from streams.obs import tracing
from streams.obs.metrics import EndToEnd
from streams.runtime.cache import BoundedCache
from streams.runtime.deadletter import dead_letter
from streams.runtime.records import Consumed, Headers, Out
from streams.runtime.stage import Step
from streams.runtime.state import Store
from streams.settings import VerifySettings
from streams.verify.lists import load_lists
from streams.verify.probe import SmtpProber
from streams.verify.service import Verifier

__all__ = ["STAGE", "VerifyStage", "build_verifier"]

STAGE = "verify"
MX_CACHE_ENTRIES = 50_000  # domains: an entry is a few hosts


def build_verifier(verify: VerifySettings, directory: DirectoryHolder | None) -> Verifier:
    prober = SmtpProber(
        port=verify.smtp_probe_port,
        helo_name=verify.smtp_probe_helo,
        mail_from=verify.smtp_probe_from,
        timeout=verify.smtp_probe_timeout,
    )

    def suppressed(tenant: str, address: str) -> bool:
        return directory is not None and directory.current.is_suppressed(tenant, address)

    resolver = MxResolver(verify.nameservers, verify.dns_timeout, verify.dns_tries)
    mx_cache = MxCache(
        resolver,
        min_ttl=verify.mx_cache_min_ttl,
        max_ttl=verify.mx_cache_max_ttl,
        max_entries=MX_CACHE_ENTRIES,
    )
    return Verifier(
        load_lists(verify.lists_dir),
        mx_cache,
        prober,
        BoundedCache(verify.cache_entries),
        suppressed=suppressed,
    )


class _PartitionView(MutableMapping[str, Any]):
    """One partition of a store as the mapping the verifier caches probe verdicts in."""

    def __init__(self, store: Store, partition: int) -> None:
        self.store = store
        self.partition = partition

    def __getitem__(self, key: str) -> Any:
        found = self.store.get(self.partition, key)
        if found is None:
            raise KeyError(key)
        return found

    def get(self, key: str, default: Any = None) -> Any:
        return self.store.get(self.partition, key, default)

    def __setitem__(self, key: str, value: Any) -> None:
        self.store.put(self.partition, key, value)

    def __delitem__(self, key: str) -> None:
        self.store.delete(self.partition, key)

    def __iter__(self) -> Iterator[str]:
        return (key for key, _ in self.store.items(self.partition))

    def __len__(self) -> int:
        return sum(1 for _ in self.store.items(self.partition))


class VerifyStage:
    name = STAGE
    max_batch = 1000
    concurrency = 0

    def __init__(
        self,
        codec: Codec,
        topics: TopicNames,
        verifier: Verifier,
        store: Store | None,
        *,
        concurrency: int,
    ) -> None:
        self.codec = codec
        self.topics = topics
        self.verifier = verifier
        self.store = store
        self.stores: tuple[Store, ...] = (store,) if store is not None else ()
        self.inputs: tuple[str, ...] = (topics.verify,)
        self.writes: tuple[str, ...] = (topics.verifications, topics.rejections)
        self.lookups = concurrency  # verifications waiting on the network at once
        self._verified = EndToEnd("verified")

    def _dead_letter(self, record: Consumed, error: Exception, now: datetime) -> Out:
        return dead_letter(self.codec, self.topics.rejections, STAGE, record, error, now)

    async def process(self, batch: Sequence[Consumed], now: datetime) -> Step:
        step = Step()
        ready: list[tuple[Consumed, VerifyTask]] = []
        waiting: list[tuple[Consumed, VerifyTask]] = []
        for record in batch:
            try:
                task = self.codec.decode_as(record.value or b"", "VerifyTask")
            except CodecError as exc:
                step.outputs.append(self._dead_letter(record, exc, now))
                step.outcomes["undecodable"] += 1
                continue
            domain = task["address"].rpartition("@")[2]
            fast = not task["smtp_probe"] and self.verifier.mx_is_cached(domain)
            (ready if fast else waiting).append((record, task))
        verified: list[tuple[VerificationResult, Out]] = []
        # no network needed: awaiting in turn costs less than a task each
        for record, task in ready:
            verified.append(await self._verify(record, task, now))
        if waiting:
            limit = asyncio.Semaphore(self.lookups)

            async def one(record: Consumed, task: VerifyTask) -> tuple[VerificationResult, Out]:
                async with limit:
                    return await self._verify(record, task, now)

            verified.extend(await asyncio.gather(*(one(r, t) for r, t in waiting)))
        for result, out in verified:
            step.outputs.append(out)
            # is_reachable is a schema enum (safe, risky, invalid, unknown): a bounded label
            step.outcomes[result["is_reachable"]] += 1
            self._verified.since(result["requested_at"], now)
        return step

    async def _verify(
        self, record: Consumed, task: VerifyTask, now: datetime
    ) -> tuple[VerificationResult, Out]:
        """One verification and its record; with tracing on, in the span of its own record."""
        if not tracing.enabled():
            result = await self.verifier.verify(task, now, self._durable(record))
            return result, self._output(result, ())
        where = (record.topic, record.partition, record.offset)
        with tracing.record_span(STAGE, *where, record.headers) as span:
            result = await self.verifier.verify(task, now, self._durable(record))
            span.set_attribute("postwire.verdict", result["is_reachable"])
            out = self._output(result, tracing.with_context(()))
        return result, out

    def _output(self, result: VerificationResult, headers: Headers) -> Out:
        value = self.codec.encode("VerificationResult", result)
        return Out(self.topics.verifications, result["request_id"].encode(), value, headers)

    def _durable(self, record: Consumed) -> MutableMapping[str, Any] | None:
        return None if self.store is None else _PartitionView(self.store, record.partition)

    def housekeeping(self, now: datetime) -> None:
        if self.store is None:
            return
        ts = now.timestamp()
        for p in self.store.partitions():
            for key, value in self.store.items(p):
                if float(value["expires"]) <= ts:
                    self.store.delete(p, key)

    def crashed(self, record: Consumed, error: Exception, now: datetime) -> Step:
        step = Step(outputs=[self._dead_letter(record, error, now)])
        step.outcomes["crashed"] += 1
        return step

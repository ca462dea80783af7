"""Verify stage (faust shell): VerifyTask in, VerificationResult out; the work is in
streams/verify/service.py. Partitioned by recipient domain, so the MX and verdict tables are
co-partitioned with the stream and each domain's probes share one worker's connection pool."""

from __future__ import annotations

import time
from typing import Any

from streams.codec import Codec, Record
from streams.deadletter import SourcePosition, rejection
from streams.errors import CodecError
from streams.obs.metrics import EndToEnd, StageMeter
from streams.settings import Settings
from streams.stages.shell import Clock, DirectoryHolder, Outputs, raw_topic
from streams.verify.dns import MxResolver
from streams.verify.lists import load_lists
from streams.verify.probe import SmtpProber
from streams.verify.service import Verifier

__all__ = ["STAGE", "build_verifier", "process", "register"]

STAGE = "verify"


def build_verifier(
    settings: Settings, mx_cache: Any, verdict_cache: Any, directory: DirectoryHolder | None
) -> Verifier:
    prober = SmtpProber(
        port=settings.smtp_probe_port,
        helo_name=settings.smtp_probe_helo,
        mail_from=settings.smtp_probe_from,
        timeout=settings.smtp_probe_timeout,
    )

    def suppressed(tenant: str, address: str) -> bool:
        return directory is not None and directory.current.is_suppressed(tenant, address)

    return Verifier(
        load_lists(settings.lists_dir),
        MxResolver(settings.nameservers, settings.dns_timeout, settings.dns_tries),
        prober,
        mx_cache,
        verdict_cache,
        mx_min_ttl=settings.mx_cache_min_ttl,
        mx_max_ttl=settings.mx_cache_max_ttl,
        suppressed=suppressed,
    )


async def process(
    codec: Codec,
    verifier: Verifier,
    outputs: Any,
    clock: Clock,
    key: bytes | None,
    value: bytes | None,
    source: SourcePosition,
) -> Record | None:
    """One VerifyTask: its VerificationResult (returned), or a dead letter (None). Shared by the
    agent and `postwire replay --stage verify`, so a replay verifies exactly as the live stage
    does."""
    try:
        _, task = codec.decode(value or b"", expected="VerifyTask")
    except CodecError as exc:
        await outputs.rejection(rejection(source, STAGE, exc, key, value or b"", clock()))
        return None
    result = await verifier.verify(task, clock())
    await outputs.verifications.send(
        key=task["request_id"].encode(), value=codec.encode("VerificationResult", result)
    )
    return result


def register(
    app: Any,
    settings: Settings,
    codec: Codec,
    outputs: Outputs,
    directory: DirectoryHolder,
    clock: Clock,
) -> Any:
    mx_table = app.Table(f"{settings.app_id}-mx", default=None, partitions=settings.partitions)
    verdicts = app.Table(
        f"{settings.app_id}-verdicts", default=None, partitions=settings.partitions
    )
    verifier = build_verifier(settings, mx_table, verdicts, directory)
    meter = StageMeter(STAGE)
    verified = EndToEnd("verified")

    @app.agent(
        raw_topic(app, settings.topics.verify),
        name=f"{settings.app_id}.verify",
        concurrency=settings.verify_concurrency,
    )
    async def verify(stream: Any) -> None:
        async for event in stream.events():
            started = time.perf_counter()
            msg = event.message
            source = SourcePosition(msg.topic, msg.partition, msg.offset)
            result = await process(codec, verifier, outputs, clock, event.key, event.value, source)
            if result is None:
                meter.done("undecodable", started)
                continue
            # is_reachable is a schema enum (safe, risky, invalid, unknown): a bounded label
            meter.done(result["is_reachable"], started)
            verified.since(result["requested_at"], clock())

    return verify

"""One metadata request to the cluster, for the health probe and the start-up topic check.

A fresh connection per call (``create_conn``: version lookup, SASL, TLS as every client does)
rather than a long-lived client: a long-lived client retries and logs in the background, and
what the probe wants to know is whether a new connection gets an answer now. Topics are never
auto-created by asking (``allow_auto_topic_creation=False``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.protocol.metadata import MetadataRequest

from streams.errors import StackError, UnreachableError
from streams.kafka.connect import CONNECTION_KEYS, refusal_of

__all__ = ["Metadata", "fetch_metadata", "require_topics", "unready_topics", "wait_for_cluster"]

log = logging.getLogger("postwire.kafka")


@dataclass(frozen=True)
class Metadata:
    brokers: int
    # topic -> partitions that have a leader, and their count; absent: the cluster has no such topic
    topics: dict[str, tuple[int, int]]


async def fetch_metadata(
    options: Mapping[str, Any], topics: Sequence[str] | None = (), timeout: float = 2.0
) -> Metadata:
    """Ask the first bootstrap server that answers about ``topics`` (None: all, empty: none);
    KafkaError when none answers within ``timeout`` each, KafkaRefusedError when one refuses
    this client's credentials or TLS."""
    connection: dict[str, Any] = {k: options[k] for k in CONNECTION_KEYS if k in options}
    errors: list[str] = []
    for host, port, _ in collect_hosts(options["bootstrap_servers"], randomize=False):
        try:
            async with asyncio.timeout(timeout):
                conn = await create_conn(
                    host, port, request_timeout_ms=int(timeout * 1000), **connection
                )
                try:
                    request = MetadataRequest(
                        None if topics is None else list(topics), allow_auto_topic_creation=False
                    )
                    response = await conn.send(request)
                finally:
                    conn.close()
        except (OSError, KafkaError, TimeoutError) as exc:
            refused = refusal_of(exc, f"{host}:{port}", options)
            # a dropped connection may be a broker shutting down, not a refusal: no answer
            if refused is not None and refused.code != "kafka.protocol_mismatch":
                raise refused from exc  # wrong credentials or TLS: say so, never "no answer"
            errors.append(f"{host}:{port}: {type(exc).__name__} {exc}".strip())
            continue
        return _parse(response.to_object())
    raise KafkaConnectionError(f"no answer to a metadata request ({'; '.join(errors)})")


def _parse(obj: Mapping[str, Any]) -> Metadata:
    topics = {}
    for topic in obj["topics"]:
        if topic["error_code"] != 0:  # unknown topic (3), or not yet ready
            continue
        parts = topic["partitions"]
        led = sum(1 for p in parts if p["leader"] >= 0 and p["error_code"] == 0)
        topics[topic["topic"]] = (led, len(parts))
    return Metadata(len(obj["brokers"]), topics)


def unready_topics(metadata: Metadata, names: Sequence[str]) -> tuple[list[str], list[str]]:
    """Of ``names``: the ones the cluster does not have, and the ones with a partition that has
    no leader yet (just created, or a broker away)."""
    missing = sorted({n for n in names if n not in metadata.topics})
    leaderless = sorted(
        {n for n in names if n in metadata.topics and metadata.topics[n][0] < metadata.topics[n][1]}
    )
    return missing, leaderless


async def require_topics(
    options: Mapping[str, Any],
    names: Sequence[str],
    *,
    wait: float = 10.0,
    timeout: float = 5.0,
    hint: str = "run `postwire topics` (`postwire up` does it) to create them",
) -> None:
    """Return once every topic of ``names`` exists with a leader for each partition, asking
    again for up to ``wait`` seconds (a topic created a moment ago reaches the broker's
    metadata a little later); StackError naming the missing ones otherwise."""
    if not names:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        try:
            metadata = await fetch_metadata(options, names, timeout)
        except KafkaError as exc:  # no answer this time (a refusal is raised as it is)
            if loop.time() >= deadline:
                raise StackError(f"could not check the topics on the cluster: {exc}") from exc
            await asyncio.sleep(0.25)
            continue
        missing, leaderless = unready_topics(metadata, names)
        if not missing and not leaderless:
            return
        if loop.time() >= deadline:
            break
        await asyncio.sleep(0.25)
    parts = []
    if missing:
        parts.append(f"missing topic(s) {', '.join(missing)}: {hint}")
    if leaderless:
        parts.append(f"topic(s) without a partition leader: {', '.join(leaderless)}")
    raise StackError("; ".join(parts))


async def wait_for_cluster(
    options: Mapping[str, Any], timeout: float, *, first_pause: float = 0.5
) -> None:
    """Return once a bootstrap server answers a metadata request; wait up to ``timeout``
    seconds for one to (pausing longer each time, up to 5 s). A process started while Kafka is
    down (or being restarted) waits here instead of exiting and being restarted in a loop that
    spends its supervisor's restart budget. A refusal (credentials, TLS) is raised at once:
    waiting cannot mend it; UnreachableError (``kafka.unreachable``) when the time is up."""
    deadline = time.monotonic() + timeout
    pause = first_pause
    where = options["bootstrap_servers"]
    while True:
        try:
            await fetch_metadata(options, (), timeout=min(5.0, max(timeout, 0.5)))
        except KafkaError:
            pass  # nobody answered yet
        else:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise UnreachableError(
                "kafka.unreachable", f"no Kafka broker at {where} answered for {timeout:.0f}s"
            )
        log.warning("waiting for Kafka at %s (%.0fs left)", where, left)
        await asyncio.sleep(min(pause, left))
        pause = min(pause * 2, 5.0)

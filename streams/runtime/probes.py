"""The two dependency probes every process runs (``streams.obs.health.Probe``): Kafka (one
metadata request on a fresh connection) and PostgreSQL (``SELECT 1``), each bounded by
``timeout`` and repeated every ``interval`` seconds."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streams.db.ping import PostgresPing
from streams.kafka.metadata import fetch_metadata
from streams.obs.health import Probe

__all__ = ["kafka_probe", "postgres_probe"]


def kafka_probe(client: Mapping[str, Any], *, interval: float, timeout: float) -> Probe:
    """``client``: the options of ``streams.kafka.config.client_options``."""

    async def check() -> None:
        await fetch_metadata(client, (), timeout)

    return Probe("kafka", check, interval=interval, timeout=timeout)


def postgres_probe(dsn: str, *, interval: float, timeout: float) -> Probe:
    return Probe("postgres", PostgresPing(dsn), interval=interval, timeout=timeout)

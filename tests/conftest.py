"""Shared fixtures. Integration tests share one embedded stack per session (real Kafka, real
PostgreSQL, the real faust worker and sinks as subprocesses), or the cluster and database named by
POSTWIRE_KAFKA_BOOTSTRAP / POSTWIRE_DATABASE_URL, isolated by a per-session topic prefix."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from streams.bench.smtp_peers import free_port_block
from streams.contract.codec import Codec, default_codec
from streams.settings import Settings
from streams.stack.stack import Stack
from tests.peers.world import World, start_world


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stack_settings(data_dir: Path, **overrides: object) -> Settings:
    """Settings for a throwaway stack: its own data dir, free ports, a unique topic prefix."""
    suffix = uuid.uuid4().hex[:8]
    values: dict[str, object] = {
        "data_dir": data_dir,
        "kafka_port": free_port(),
        "kafka_controller_port": free_port(),
        "postgres_port": free_port(),
        # three workers per slot, then the webhooks process
        "worker_web_port": free_port_block(3 * int(str(overrides.get("worker_processes", 1))) + 1),
        "api_port": free_port(),
        "sinks_web_port": free_port(),
        "lag_interval": 1.0,
        "topic_prefix": f"pwtest{suffix}",
        "app_id": f"pwtest{suffix}",
        "partitions": 2,
        "sink_linger": 0.1,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


# the domain the suite's mail comes from: every tenant of `new_tenant` may send as it (the
# operator vouches for it, shared), and `install_dkim_key` gives a tenant its own key of it
SENDER_DOMAIN = "acme.example"


def pipeline_overrides(world: World) -> dict[str, object]:
    """Settings of a pipeline that delivers to and verifies against ``world`` (or the cluster and
    database of POSTWIRE_KAFKA_BOOTSTRAP / POSTWIRE_DATABASE_URL)."""
    overrides: dict[str, object] = {}
    if os.environ.get("POSTWIRE_KAFKA_BOOTSTRAP"):
        overrides["kafka_bootstrap"] = os.environ["POSTWIRE_KAFKA_BOOTSTRAP"]
    if os.environ.get("POSTWIRE_DATABASE_URL"):
        overrides["database_url"] = os.environ["POSTWIRE_DATABASE_URL"]
    overrides.update(
        # delivery against the fake MXs: short timeouts and a ladder of seconds, not minutes
        smtp_port=world.smtp_port,
        smtp_tls="none",
        smtp_connect_timeout=1.5,
        smtp_command_timeout=2.0,
        smtp_data_timeout=3.0,
        retry_first=1.0,
        retry_cap=4.0,
        retry_max_age=60.0,
        retry_tiers="1,2,4",
        breaker_threshold=50,
        deliver_concurrency=16,
        dns_nameservers=world.dns.nameserver,
        dns_timeout=0.5,
        dns_tries=1,
        smtp_probe_port=world.smtp_port,
        smtp_probe_timeout=1.5,
        directory_refresh=0.3,
        # webhooks: retries a second apart, given up on after 8 s, endpoints reloaded often
        webhook_timeout=4.0,
        webhook_retry_first=1.0,
        webhook_retry_cap=2.0,
        webhook_retry_max_age=8.0,
        webhook_retry_tiers="1,2",
        webhook_breaker_threshold=50,
        webhook_refresh=0.3,
        webhook_allow_private=True,  # the receivers are on loopback
        # small enough that the ingress tests can cross them cheaply
        api_max_body=256 * 1024,
        api_rate=5.0,
        api_burst=10,
    )
    return overrides


@pytest.fixture(scope="session")
def codec() -> Codec:
    return default_codec()


@pytest.fixture(scope="session")
def world() -> Iterator[World]:
    """DNS and SMTP peers on loopback for the fake domains (see tests/peers/world.py)."""
    running = start_world()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
async def stack(pipeline: Stack) -> Settings:
    """Settings pointing at the session's running pipeline."""
    return pipeline.settings


@pytest.fixture(scope="session")
async def pipeline(tmp_path_factory: pytest.TempPathFactory, world: World) -> AsyncIterator[Stack]:
    """The session's running pipeline: Kafka, PostgreSQL, the worker and the sinks."""
    data_dir = tmp_path_factory.mktemp("stack")
    overrides = pipeline_overrides(world)
    settings = stack_settings(data_dir, **overrides)
    running = Stack(settings, workers=True)
    await running.start(detach=False)
    try:
        yield running
    finally:
        running.stop()

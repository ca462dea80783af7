"""Health that tells the truth, against the real broker and PostgreSQL: a worker's /healthz is
503 with the reason until its stages are assigned and recovered, then 200; the API's and the
sinks' turn 503 naming PostgreSQL while its server is frozen (SIGSTOP) and 200 again after
SIGCONT, while /livez stays 200; a stage whose topic is missing is refused at start and
consumes nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.errors import StackError
from streams.kafka.config import client_options
from streams.kafka.topics import CHANGELOG_CONFIG, changelog_topic, ensure_topics
from streams.runtime.host import HostConfig, StageHost
from streams.runtime.records import Consumed
from streams.runtime.stage import Step
from streams.runtime.state import Store
from streams.settings import Settings
from streams.stack.stack import Stack
from tests.conftest import stack_settings
from tests.integration.helpers import eventually

pytestmark = pytest.mark.integration

FAST = {"health_interval": 0.5, "health_timeout": 1.0}


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as r:
            return r.status, await r.json()
    except (aiohttp.ClientError, TimeoutError):
        return 0, {}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class _Recorder:
    """A stage that only remembers what it was given."""

    name = "health-probe"
    max_batch = 10
    concurrency = 0

    def __init__(self, inputs: Sequence[str], writes: Sequence[str]) -> None:
        self.inputs = tuple(inputs)
        self.writes = tuple(writes)
        self.stores: tuple[Store, ...] = ()
        self.seen: list[Consumed] = []

    async def process(self, batch: Sequence[Consumed], now: datetime) -> Step:
        self.seen.extend(batch)
        return Step()

    def housekeeping(self, now: datetime) -> None:
        pass

    def crashed(self, record: Consumed, error: Exception, now: datetime) -> Step:
        return Step()


async def test_a_stage_whose_output_topic_is_missing_is_refused_at_start(stack: Settings) -> None:
    client = client_options(stack.kafka)
    source = f"{stack.topic_prefix}.health-{uuid.uuid4().hex[:6]}"
    missing = f"{stack.topic_prefix}.absent-{uuid.uuid4().hex[:6]}"
    admin = AIOKafkaAdminClient(**client)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(source, 1, 1)])
        producer = AIOKafkaProducer(**client, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(source, b"waiting", key=b"k")
        finally:
            await producer.stop()
        stage = _Recorder([source], [missing])
        app_id = f"{stack.app_id}-h{uuid.uuid4().hex[:6]}"
        host = StageHost(HostConfig(client, app_id, topic_wait=1.0), [stage])
        with pytest.raises(StackError) as raised:
            await asyncio.wait_for(host.run(asyncio.Event()), 60)
        message = str(raised.value)
        assert missing in message, message
        assert "postwire topics" in message, message
        assert source not in message  # the topic that exists is not blamed
        assert stage.seen == []
        groups = {g[0] for g in await admin.list_consumer_groups()}
        assert f"{app_id}-{stage.name}" not in groups  # it never joined its group
    finally:
        await admin.close()


async def _fill_changelog(settings: Settings, topic: str, records: int) -> None:
    """``records`` entries on the two partitions of a store's changelog (made here)."""
    client = client_options(settings.kafka)
    admin = AIOKafkaAdminClient(**client)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 2, 1, topic_configs=CHANGELOG_CONFIG)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(**client, linger_ms=20, max_batch_size=512 * 1024)
    await producer.start()
    try:
        for i in range(records):
            await producer.send(topic, b'{"v": 1}', key=f"filler:{i}".encode(), partition=i % 2)
        await producer.flush()
    finally:
        await producer.stop()


async def test_a_worker_is_unready_until_its_stages_run_and_alive_throughout(
    pipeline: Stack, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    shared = pipeline.settings
    settings = stack_settings(
        tmp_path, kafka_bootstrap=shared.bootstrap, database_url=shared.dsn, **FAST
    )
    await ensure_topics(settings.kafka)
    # a verify store with plenty to recover, so the worker is visibly unready for a while
    # after its web server is up (an empty store recovers between two looks)
    await _fill_changelog(settings, changelog_topic(settings.app_id, "verdicts"), 60_000)
    worker = Stack(settings, workers=False).process("health-worker", "worker", "--stage", "verify")
    base = f"http://127.0.0.1:{settings.worker_web_port}"
    worker.start(detach=False)
    seen: list[tuple[int, dict[str, Any]]] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        status, body = 0, {}
        while status != 200 and loop.time() < deadline:
            status, body = await _get(http, f"{base}/healthz")
            if status:
                seen.append((status, body))
            await asyncio.sleep(0.02)
        assert status == 200, (body, worker.log_tail())
        assert body["ok"] is True
        assert body["reasons"] == []
        assert body["stages"] == {"verify": "running"}
        assert body["kafka"]["ok"] is True
        unready = [b for s, b in seen if s != 200]
        assert unready, f"never 503 before 200: {seen[:3]}"  # the web server is up first
        assert all(s == 503 for s, _ in seen[: len(unready)])
        for b in unready:
            assert b["ok"] is False, b
            assert b["reasons"], b
        # seen on the reference machine: "stage verify starting" (+ "kafka not checked yet"),
        # then "recovering verify[0, 1]", then 200
        stage_reasons = {
            r
            for b in unready
            for r in b["reasons"]
            if r.endswith("verify starting") or "verify[" in r
        }
        assert stage_reasons, unready
        live, alive = await _get(http, f"{base}/livez")
        assert live == 200
        assert alive["ok"] is True
        assert alive["pid"] == worker.pid
    finally:
        worker.stop()


async def test_api_and_sinks_are_unready_while_postgres_is_frozen_and_alive_throughout(
    pipeline: Stack, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    # a PostgreSQL of its own (never the session's): it is frozen here
    settings = stack_settings(tmp_path, kafka_bootstrap=pipeline.settings.bootstrap, **FAST)
    own = Stack(settings, workers=False)
    await own.start(detach=False)
    api = own.process("health-api", "api")
    sinks = own.process("health-sinks", "sink")
    base = settings.api_base
    sinks_base = f"http://127.0.0.1:{settings.sinks_web_port}"
    try:
        api.start(detach=False)
        sinks.start(detach=False)
        status, body = await eventually(
            lambda: _get(http, f"{base}/healthz"), lambda v: v[0] == 200, timeout=90
        )
        assert status == 200, (body, api.log_tail())
        assert body["postgres"]["ok"] is True
        assert body["kafka"]["ok"] is True
        status, body = await eventually(
            lambda: _get(http, f"{sinks_base}/healthz"), lambda v: v[0] == 200, timeout=90
        )
        assert status == 200, (body, sinks.log_tail())
        assert set(body["sinks"].values()) == {"running"}
        assert own.postgres is not None
        pg = own.postgres.process.pid
        assert pg is not None
        os.kill(pg, signal.SIGSTOP)
        try:
            status, body = await eventually(
                lambda: _get(http, f"{base}/healthz"), lambda v: v[0] == 503, timeout=30
            )
            assert status == 503, body
            assert body["ok"] is False
            assert any(r.startswith("postgres unreachable") for r in body["reasons"]), body
            assert body["postgres"]["ok"] is False
            live, alive = await _get(http, f"{base}/livez")
            assert live == 200
            assert alive["ok"] is True
            status, body = await eventually(
                lambda: _get(http, f"{sinks_base}/healthz"), lambda v: v[0] == 503, timeout=30
            )
            assert status == 503, body
            assert any(r.startswith("postgres unreachable") for r in body["reasons"]), body
            live, alive = await _get(http, f"{sinks_base}/livez")
            assert live == 200
            assert alive["ok"] is True
        finally:
            os.kill(pg, signal.SIGCONT)
        status, body = await eventually(
            lambda: _get(http, f"{base}/healthz"), lambda v: v[0] == 200, timeout=30
        )
        assert status == 200, body
        assert body["reasons"] == []
        status, body = await eventually(
            lambda: _get(http, f"{sinks_base}/healthz"), lambda v: v[0] == 200, timeout=30
        )
        assert status == 200, body
    finally:
        sinks.stop()
        api.stop()
        own.stop()

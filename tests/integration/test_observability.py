"""Metrics, health and logs of the running stack, over real HTTP and from the real log files:
traffic goes in through Kafka, and the counters of the right stage and outcome must move."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from streams.contract.codec import Codec
from streams.kafka.config import client_options
from streams.obs.logs import KEY_FILE
from streams.obs.redact import Redactor
from streams.settings import Settings
from streams.stack.stack import WORKER_ROLES, worker_port
from tests.conftest import SENDER_DOMAIN
from tests.integration.helpers import eventually, new_tenant, signer

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _has(samples: Samples, name: str, **labels: str) -> bool:
    return (name, frozenset(labels.items())) in samples


def _sum(samples: Samples, name: str, **labels: str) -> float:
    """Over every series of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


async def _scrape(http: aiohttp.ClientSession, *ports: int) -> Samples:
    """The series of every process on ``ports``; a series several of them have is summed."""
    summed: Samples = {}
    for port in ports:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain")
            for key, value in _parse(await r.text()).items():
                summed[key] = summed.get(key, 0.0) + value
    return summed


def _request(tenant: str, operation: str, recipient: str) -> dict[str, Any]:
    return {
        "request_id": str(uuid.uuid4()),
        "tenant": tenant,
        "operation": operation,
        "priority": "high",  # the transactional lane: the tx process
        "recipients": [{"email": recipient}],
        "from": {"email": f"news@{SENDER_DOMAIN}"},
        "content": {"subject": "obs", "text": "obs"},
        "created_at": datetime.now(UTC),
    }


async def _publish(settings: Settings, values: list[bytes], tenant: str, api_key: str) -> None:
    headers = await signer(settings, tenant, api_key)
    producer = AIOKafkaProducer(**client_options(settings.kafka), acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send(
                settings.topics.requests, value, key=tenant.encode(), headers=headers(value)
            )
        await producer.flush()
    finally:
        await producer.stop()


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_workers_and_sinks_serve_health(stack: Settings, http: aiohttp.ClientSession) -> None:
    ports = {role: worker_port(stack, role, 0) for role in WORKER_ROLES}
    ports["sinks"] = stack.sinks_web_port
    for name, port in ports.items():

        async def health(port: int = port) -> tuple[int, dict[str, Any]]:
            try:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                    return r.status, await r.json()
            except aiohttp.ClientError:
                return 0, {}

        status, body = await eventually(health, lambda v: v[0] == 200, timeout=60)
        assert status == 200, (name, body)
        assert body["ok"] is True


async def test_traffic_moves_the_counters_of_its_stage_and_outcome(
    stack: Settings, codec: Codec, http: aiohttp.ClientSession
) -> None:
    tenant, key = await new_tenant(stack, "obs", settle=True)
    # the gate and verify run in the front worker, the transactional lane in the tx process
    front = (worker_port(stack, "worker", 0), worker_port(stack, "tx", 0))
    sinks = stack.sinks_web_port
    w0, s0 = await _scrape(http, *front), await _scrape(http, sinks)
    unknown = f"obs-{uuid.uuid4().hex[:8]}@normal.example"  # the MX says 550 user unknown
    requests = [
        _request(tenant, "send", "bob@normal.example"),
        _request(tenant, "send", unknown),
        _request(tenant, "verify", "alice@normal.example"),
    ]
    # (no garbage record: other tests count every rejection on the shared requests topic)
    values = [codec.encode("EmailRequest", r) for r in requests]
    await _publish(stack, values, tenant, key)

    def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
        return _sum(after, name, **labels) - _sum(before, name, **labels)

    def worker_done(w: Samples) -> bool:
        return (
            moved(w0, w, "postwire_records_total", stage="deliver.tx") >= 2
            and moved(w0, w, "postwire_records_total", stage="verify") >= 1
        )

    w1 = await eventually(lambda: _scrape(http, *front), worker_done, timeout=60)
    gate = {"stage": "gate"}
    assert moved(w0, w1, "postwire_records_total", **gate, outcome="admitted") >= 3
    # the gate decides batches: one timing per batch, and the batch sizes add up to the records
    assert moved(w0, w1, "postwire_stage_seconds_count", **gate) >= 1
    assert moved(w0, w1, "postwire_stage_batch_records_sum", **gate) >= 3
    tx = {"stage": "deliver.tx"}
    assert moved(w0, w1, "postwire_records_total", **tx, outcome="delivered") >= 1
    assert moved(w0, w1, "postwire_records_total", **tx, outcome="bounced") >= 1
    assert moved(w0, w1, "postwire_smtp_results_total", result="delivered") >= 1
    bounced = {"result": "bounced", "class": "user_unknown"}
    assert moved(w0, w1, "postwire_smtp_results_total", **bounced) >= 1
    assert moved(w0, w1, "postwire_end_to_end_seconds_count", kind="delivered") >= 1
    assert moved(w0, w1, "postwire_end_to_end_seconds_count", kind="verified") >= 1
    assert moved(w0, w1, "postwire_records_total", stage="verify") >= 1
    # no label anywhere carries an address or the tenant
    exposed = " ".join(f"{n}{sorted(ls)}" for n, ls in w1)
    assert "@" not in exposed
    assert tenant not in exposed

    group = f"{stack.app_id}-sink-requests"

    def sinks_done(s: Samples) -> bool:
        return (
            moved(s0, s, "postwire_records_total", stage="sink.requests", outcome="written") >= 3
            and moved(s0, s, "postwire_end_to_end_seconds_count", kind="row.verifications") >= 1
            and _has(s, "postwire_consumer_lag", group=group, topic=stack.topics.accepted)
        )

    s1 = await eventually(lambda: _scrape(http, sinks), sinks_done, timeout=60)
    assert moved(s0, s1, "postwire_records_total", stage="sink.requests", outcome="written") >= 3
    assert moved(s0, s1, "postwire_sink_batch_rows_count", table="requests") >= 1
    assert moved(s0, s1, "postwire_sink_batch_rows_sum", table="requests") >= 3
    assert moved(s0, s1, "postwire_sink_flush_seconds_count", table="requests") >= 1
    assert moved(s0, s1, "postwire_end_to_end_seconds_count", kind="row.requests") >= 3
    assert moved(s0, s1, "postwire_end_to_end_seconds_count", kind="row.verifications") >= 1
    lag = _get(s1, "postwire_consumer_lag", group=group, topic=stack.topics.accepted)
    assert lag >= 0
    # the stages' groups are measured too
    gate_group = ("group", f"{stack.app_id}-gate")
    assert any(n == "postwire_consumer_lag" and gate_group in ls for n, ls in s1)

    # the bounce put the address on the suppression list, and the lane's process logged that
    logs = stack.data_dir / "logs"
    redactor = Redactor((stack.data_dir / KEY_FILE).read_text().strip().encode())
    hashed = f"addr:{redactor.digest(unknown)}@normal.example"

    async def worker_log() -> str:
        return (logs / "tx.log").read_text()

    text = await eventually(worker_log, lambda t: hashed in t, timeout=30)
    assert hashed in text
    assert unknown not in text
    assert unknown.split("@", maxsplit=1)[0] not in text
    lines = text.splitlines()
    assert lines
    for line in lines:
        record = json.loads(line)  # every line is one JSON object
        assert {"timestamp", "level", "logger", "event", "role"} <= record.keys()
    for name in ("worker.log", "bulk.log", "sinks.log", "api.log"):
        for line in (logs / name).read_text().splitlines():
            json.loads(line)

"""A replicated embedded cluster as an operator starts it (`postwire up --brokers 3 --detach
--no-workers`): three KRaft brokers on loopback, every postwire topic made with three replicas
and min.insync.replicas 2, `postwire topics` reporting drift without changing a topic, and a
broker killed with SIGKILL mid-run, twice:

- under the real gate and verify stages and the sinks (worker and sink processes), fed by a
  direct producer: they keep running, and every acknowledged request gets its `requests` and
  `verifications` row;
- under a stream of numbered records from an idempotent acks=all producer (the settings of all
  of postwire's producers) and a reader: every acknowledged record is in the log exactly once,
  offsets are still committed while the broker is down, and it rejoins (every replica back in
  sync) once up's supervisor has started it again.

The delivery lanes, the API and SMTP counting on three brokers are left to the chaos suite:
two shared cores do not run the whole stack on three JVMs in a test's time."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime

import aiohttp
import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from streams.bench.smtp_peers import free_port_block
from streams.contract.codec import default_codec
from streams.contract.signing import sign
from streams.db.tenants import create_api_key, create_tenant
from streams.kafka.config import client_options
from streams.kafka.drift import read_topics, topic_drift
from streams.kafka.topics import topic_specs
from streams.settings import Settings
from streams.stack.kafka import wait_for_kafka
from streams.stack.process import pid_alive, stop_pid
from streams.stack.stack import Stack
from streams.stages.policies import delay_topics
from tests.conftest import stack_settings
from tests.integration.helpers import eventually
from tests.peers.world import World

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "streams"]
BROKERS = 3
RECORDS = 3000


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTWIRE_")}
    return {**env, **settings.to_env(), **extra}


def _cli(settings: Settings, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        env=_env(settings, **extra),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def _pids(settings: Settings) -> dict[str, int]:
    return {p.stem: int(p.read_text()) for p in (settings.data_dir / "run").glob("*.pid")}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """`postwire up --brokers 3` (no workers) on free ports; `postwire down` at the end (and
    what it left, if it failed, stopped by its pid)."""
    base = free_port_block(2 * BROKERS)
    settings = stack_settings(
        tmp_path_factory.mktemp("cluster"),
        kafka_port=base,
        kafka_controller_port=base + 1,
        # 3 JVMs on a shared machine: a modest heap each, and time to start on two busy cores
        kafka_heap="256m",
        kafka_start_timeout=150.0,
    )
    started = _cli(settings, "up", "--brokers", str(BROKERS), "--detach", "--no-workers")
    assert started.returncode == 0, started.stdout + started.stderr
    # the flag made it three; settings read now (as every later command's are) find the size
    # the data dir's cluster was formatted with, without POSTWIRE_KAFKA_BROKERS
    settings = Settings(**settings.model_dump())
    assert settings.kafka_brokers is None
    assert settings.embedded_brokers == BROKERS
    try:
        yield settings
    finally:
        pids = _pids(settings)
        stopped = _cli(settings, "down")
        for pid in pids.values():
            stop_pid(pid, timeout=30.0)
        assert stopped.returncode == 0, stopped.stderr
        assert not [name for name, pid in pids.items() if pid_alive(pid)]


async def _restarted(cluster: Settings, name: str, old: int) -> int:
    """Wait for the supervisor of `up` to start ``name`` again (a new live pid in its pid file)
    and for the cluster to have every broker registered; return the new pid."""

    async def pid() -> int:
        return _pids(cluster).get(name, old)

    new = await eventually(pid, lambda p: p != old and pid_alive(p), timeout=60)
    assert new != old, f"{name} was not restarted"
    await wait_for_kafka(cluster.kafka, 120, brokers=BROKERS)
    return new


def _ps(cluster: Settings) -> dict[str, dict[str, object]]:
    shown = _cli(cluster, "ps", "--json")
    assert shown.returncode == 0, shown.stderr
    return {row["name"]: row for row in json.loads(shown.stdout)["children"]}


def test_up_runs_one_process_per_broker_and_the_bootstrap_lists_them(cluster: Settings) -> None:
    pids = _pids(cluster)
    assert {"kafka", "kafka1", "kafka2", "postgres"} <= set(pids)
    assert all(pid_alive(pid) for pid in pids.values())
    assert cluster.bootstrap.count(",") == BROKERS - 1
    # each node has a data dir of its own under <data dir>/kafka/<n>, one cluster id for all
    ids = {
        line.split("=", 1)[1]
        for n in range(BROKERS)
        for line in (cluster.data_dir / "kafka" / str(n) / "data" / "meta.properties")
        .read_text()
        .splitlines()
        if line.startswith("cluster.id=")
    }
    assert len(ids) == 1


async def test_every_topic_has_three_replicas_and_needs_two_in_sync(cluster: Settings) -> None:
    specs = topic_specs(cluster.kafka, delay_topics(cluster))
    wanted = {s.name for s in specs}

    async def described() -> dict[str, object]:
        return dict(await read_topics(cluster.kafka, sorted(wanted)))

    # a broker that just (re)joined may answer before its metadata lists every topic
    found = await eventually(described, lambda states: set(states) == wanted, timeout=60)
    states = await read_topics(cluster.kafka, sorted(wanted))
    assert set(found) == wanted
    assert set(states) == wanted
    for spec in specs:
        assert spec.replication == 3
        assert set(states[spec.name].replicas) == {3}, spec.name
        assert states[spec.name].config["min.insync.replicas"] == "2", spec.name
        assert topic_drift(spec, states[spec.name]) == [], spec.name


def test_topics_reports_drift_and_changes_nothing(cluster: Settings) -> None:
    # settings that differ from what the topics were made with
    shown = _cli(
        cluster, "topics", "--json", POSTWIRE_PARTITIONS="3", POSTWIRE_MIN_INSYNC_REPLICAS="1"
    )
    assert shown.returncode == 0, shown.stderr
    rows = {row["topic"]: row for row in json.loads(shown.stdout)}
    events = rows[cluster.topics.events]
    assert events["created"] is False
    assert {(d["setting"], d["configured"], d["actual"]) for d in events["drift"]} == {
        ("partitions", "3", "2"),
        ("min.insync.replicas", "1", "2"),
    }
    assert all("kafka-" in d["fix"] for d in events["drift"])
    # the control topic has one partition whatever the settings say: only min.insync differs
    assert [d["setting"] for d in rows[cluster.topics.control]["drift"]] == ["min.insync.replicas"]
    # and the same settings as at creation: no drift, nothing was altered by the first run
    again = _cli(cluster, "topics", "--json")
    assert again.returncode == 0, again.stderr
    assert [row["drift"] for row in json.loads(again.stdout)] == [[]] * len(rows)
    table = _cli(cluster, "topics", POSTWIRE_MIN_INSYNC_REPLICAS="1")
    assert "differ from the settings" in table.stdout
    assert "--add-config min.insync.replicas=1" in table.stdout


async def _publish_requests(settings: Settings, tenant: str, key: tuple[str, str], n: int) -> int:
    """Produce ``n`` signed validate requests as a direct producer does; return how many Kafka
    acknowledged."""
    codec = default_codec()
    producer = AIOKafkaProducer(
        **client_options(settings.kafka), acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        futures = []
        for _ in range(n):
            record = {
                "request_id": str(uuid.uuid4()),
                "tenant": tenant,
                "operation": "validate",
                "recipients": [{"email": "alice@normal.example"}],
                "created_at": datetime.now(UTC),
            }
            value = codec.encode("EmailRequest", record)
            headers = sign(value, tenant=tenant, key_id=key[0], api_key=key[1])
            futures.append(
                await producer.send(
                    settings.topics.requests, value, key=tenant.encode(), headers=headers
                )
            )
        results = await asyncio.gather(*futures, return_exceptions=True)
    finally:
        await producer.stop()
    return sum(not isinstance(r, BaseException) for r in results)


async def _healthy(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as answer:
            return answer.status == 200
    except aiohttp.ClientError:
        return False


async def test_the_pipeline_keeps_going_through_a_broker_kill(
    cluster: Settings, world: World
) -> None:
    """The real gate and verify stages and the sinks on the cluster: a broker killed while they
    work neither stops them nor loses a request."""
    env = {
        "POSTWIRE_DNS_NAMESERVERS": world.dns.nameserver,
        "POSTWIRE_DNS_TIMEOUT": "0.5",
        "POSTWIRE_DNS_TRIES": "1",
        "POSTWIRE_STATE_STORE": "memory",
    }
    stack = Stack(cluster, workers=False)
    procs = [
        stack.process("worker", "worker", "--stage", "gate", "--stage", "verify", env=env),
        stack.process("sinks", "sink", "--table", "requests", "--table", "verifications"),
    ]
    conn = await asyncpg.connect(cluster.dsn)
    pids = _pids(cluster)
    victim = "kafka2"
    try:
        tenant = f"cl-{uuid.uuid4().hex[:6]}"
        await create_tenant(conn, tenant)
        key = await create_api_key(conn, tenant, secret=cluster.secret)
        for proc in procs:
            proc.start(detach=False)
        health = f"http://{cluster.web_host}:{cluster.worker_web_port}/healthz"
        assert await eventually(lambda: _healthy(health), bool, timeout=120), procs[0].log_tail()
        acked = await _publish_requests(cluster, tenant, key, 100)

        async def rows() -> tuple[int, int]:
            found = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM requests WHERE tenant_id = $1),"
                " (SELECT count(*) FROM verifications WHERE tenant_id = $1)",
                tenant,
            )
            assert found is not None
            return int(found[0]), int(found[1])

        # mid-run: some of the first hundred are through, the rest in flight
        await eventually(rows, lambda r: r[1] > 0, timeout=60)
        os.kill(pids[victim], signal.SIGKILL)
        acked += await _publish_requests(cluster, tenant, key, 100)
        # up's supervisor starts it again; the pipeline goes on meanwhile
        await _restarted(cluster, victim, pids[victim])
        acked += await _publish_requests(cluster, tenant, key, 100)
        assert acked == 300
        # every request admitted and verified once (the rows' keys are the request ids)
        assert await eventually(rows, lambda r: r == (acked, acked), timeout=120) == (
            acked,
            acked,
        )
        for proc in procs:
            assert proc.running(), proc.log_tail()
    finally:
        for proc in procs:
            proc.stop()
        await conn.close()


async def _commit(consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
    """Commit, waiting out a group coordinator that moves off a dead broker."""
    deadline = time.monotonic() + 60
    while True:
        try:
            await consumer.commit(offsets)
            return
        except KafkaError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def test_a_killed_broker_loses_and_doubles_nothing_and_rejoins(cluster: Settings) -> None:
    topic = cluster.topics.events
    options = client_options(cluster.kafka)
    parts = [TopicPartition(topic, p) for p in range(cluster.partitions)]
    reader = AIOKafkaConsumer(
        **options, group_id=f"{cluster.app_id}-cluster-test", enable_auto_commit=False
    )
    await reader.start()
    reader.assign(parts)
    await reader.seek_to_end(*parts)
    start = {tp: await reader.position(tp) for tp in parts}
    seen: Counter[int] = Counter()
    acked: set[int] = set()
    done = asyncio.Event()

    async def read() -> None:
        # by position, not by group: a reader that never re-reads shows what the log holds
        while not done.is_set() or sum(seen.values()) < len(acked):
            batch = await reader.getmany(timeout_ms=500)
            for records in batch.values():
                seen.update(int(r.value or b"-1") for r in records)
            if batch:
                await _commit(reader, {tp: msgs[-1].offset + 1 for tp, msgs in batch.items()})

    producer = AIOKafkaProducer(
        **options, acks="all", enable_idempotence=True, linger_ms=2, request_timeout_ms=60000
    )
    await producer.start()
    failed: list[str] = []
    reading = asyncio.create_task(read())
    pids = _pids(cluster)
    victim = ""
    killed_at = 0.0
    try:
        for first in range(0, RECORDS, 25):
            futures = {
                i: await producer.send(topic, str(i).encode(), key=str(i % 97).encode())
                for i in range(first, min(first + 25, RECORDS))
            }
            for i, future in futures.items():
                try:
                    await future
                    acked.add(i)
                except KafkaError as exc:
                    failed.append(f"{i}: {exc!r}")
            if not victim and len(acked) >= RECORDS // 3:
                # the leader of partition 0: its clients must move to another broker
                meta = await read_leader(cluster, topic)
                victim = "kafka" if meta == 1 else f"kafka{meta - 1}"
                os.kill(pids[victim], signal.SIGKILL)
                killed_at = time.monotonic()
        produced_in = time.monotonic() - killed_at
        done.set()
        # a lost record would keep the reader waiting: the asserts below name it
        await asyncio.wait([reading], timeout=90)
    finally:
        done.set()
        reading.cancel()
        await producer.stop()

    assert victim, "the broker was never killed"
    # a broker of three gone, min.insync 2: every write was still acknowledged
    assert not failed, failed[:5]
    assert len(acked) == RECORDS
    assert sorted(i for i in acked if seen[i] != 1) == []
    assert [i for i, n in seen.items() if n > 1] == []
    assert sum(seen.values()) == RECORDS
    # offsets are committed with the broker down (the offsets topic has three replicas too)
    committed = {tp: await reader.committed(tp) for tp in parts}
    assert sum((committed[tp] or 0) - start[tp] for tp in parts) == RECORDS
    await reader.stop()
    print(f"{RECORDS} acknowledged, read once each; {produced_in:.1f}s of producing after the kill")

    # up's supervisor starts the killed broker again from its data dir, and it catches up
    await _restarted(cluster, victim, pids[victim])

    async def behind() -> int:
        states = await read_topics(cluster.kafka, [topic])
        return states[topic].under_replicated

    assert await eventually(behind, lambda n: n == 0, timeout=120) == 0
    assert int(str(_ps(cluster)[victim]["restarts"])) >= 1


async def read_leader(settings: Settings, topic: str) -> int:
    admin = AIOKafkaAdminClient(**client_options(settings.kafka))
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        return int(next(p["leader"] for p in described["partitions"] if p["partition"] == 0))
    finally:
        await admin.close()

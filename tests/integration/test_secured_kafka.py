"""postwire against a secured cluster: a second embedded broker whose only client listener speaks
SASL_SSL (SCRAM users made at format time, a throwaway CA), and every kind of client reaching it
through the settings alone: the admin (topic creation), the API's producer, the real worker
process (faust host, the gate and verify stages' consumers, producer and changelogs), the sinks
process, lag, replay. Wrong credentials, a wrong CA and a plaintext client are refused with an
error that says so, at once."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import SecretStr

from streams.api.context import Api
from streams.errors import KafkaRefusedError
from streams.kafka.config import client_options
from streams.kafka.connect import start_client
from streams.kafka.topics import ensure_topics
from streams.obs.lag import LagMonitor
from streams.replay.into_sinks import replay_into_sinks
from streams.runtime.producer import BatchProducer
from streams.settings import Settings
from streams.stack.kafka import EmbeddedKafka, SecuredListener, wait_for_kafka
from streams.stack.process import ManagedProcess
from streams.stack.stack import Stack
from streams.stack.tls import make_ca, write_broker_tls
from streams.stages.policies import delay_topics
from tests.conftest import free_port, stack_settings
from tests.integration.api_client import healthy_client
from tests.integration.helpers import eventually, new_tenant

pytestmark = pytest.mark.integration

USER = "pw-app"


@dataclass
class Secured:
    settings: Settings  # the clients' settings: SASL_SSL, SCRAM-SHA-512, the broker's CA
    values: dict[str, object]  # what they were made from, to vary one knob
    password: str
    created: list[str]  # the topics the admin made through the secured listener
    began: datetime

    def with_(self, **over: object) -> Settings:
        return Settings(**{**self.values, **over})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
async def secured(
    tmp_path_factory: pytest.TempPathFactory, stack: Settings
) -> AsyncIterator[Secured]:
    """One SASL_SSL broker for the module (free ports, its own data dir), stopped by its pid;
    the session's PostgreSQL serves as the database."""
    data_dir = tmp_path_factory.mktemp("secured")
    tls = write_broker_tls(data_dir / "tls")
    password = secrets.token_urlsafe(18)
    port = free_port()
    base = stack_settings(data_dir, kafka_port=port)
    values: dict[str, object] = {
        **{name: getattr(base, name) for name in type(base).model_fields},
        "kafka_bootstrap": f"127.0.0.1:{port}",
        "database_url": stack.dsn,
        "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_mechanism": "SCRAM-SHA-512",
        "kafka_sasl_username": USER,
        "kafka_sasl_password": password,
        "kafka_ssl_cafile": tls.ca,
        "dns_nameservers": stack.dns_nameservers,
        "dns_timeout": stack.dns_timeout,
        "dns_tries": stack.dns_tries,
        "directory_refresh": stack.directory_refresh,
        "state_store": "memory",
    }
    settings = Settings(**values)  # type: ignore[arg-type]
    broker = EmbeddedKafka(settings, SecuredListener(tls, {USER: SecretStr(password)}))
    began = datetime.now(UTC)
    broker.start(detach=False)
    try:
        await broker.wait_ready()
        created = await ensure_topics(settings.kafka, delay_topics(settings))
        yield Secured(settings, values, password, created, began)
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def processes(secured: Secured) -> Iterator[dict[str, ManagedProcess]]:
    """The real processes against the secured broker: a worker (gate, verify), the sinks of
    the verifications table, the API; each stopped by its pid at the end."""
    stack = Stack(secured.settings, workers=False)
    procs = {
        "worker": stack.process("worker", "worker", "--stage", "gate", "--stage", "verify"),
        "sinks": stack.process("sinks", "sink", "--table", "verifications"),
        "api": stack.process("api", "api"),
    }
    try:
        for proc in procs.values():
            proc.start(detach=False)
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()


async def test_the_admin_made_every_topic_through_the_secured_listener(secured: Secured) -> None:
    topics = secured.settings.topics
    assert {topics.requests, topics.verify, topics.verifications} <= set(secured.created)
    options = client_options(secured.settings.kafka)
    admin = AIOKafkaAdminClient(**options)
    try:
        await start_client(admin, options)
        assert set(secured.created) <= set(await admin.list_topics())
    finally:
        await admin.close()


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_each_sasl_mechanism_carries_records(secured: Secured, mechanism: str) -> None:
    settings = secured.with_(kafka_sasl_mechanism=mechanism)
    options = client_options(settings.kafka)
    topic = settings.topics.tenants  # compacted, read by nobody in this module
    marker = f"{mechanism}-{uuid.uuid4().hex[:6]}".encode()
    producer = AIOKafkaProducer(**options, acks="all")
    await start_client(producer, options)
    try:
        sent = await producer.send_and_wait(topic, marker, key=marker, partition=0)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(**options, enable_auto_commit=False)
    await start_client(consumer, options)
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, sent.offset)
        batch = await consumer.getmany(tp, timeout_ms=10_000)
    finally:
        await consumer.stop()
    assert [r.value for r in batch[tp]][:1] == [marker]


async def _healthy(url: str, session: aiohttp.ClientSession) -> bool:
    try:
        async with session.get(url) as r:
            return r.status == 200
    except aiohttp.ClientError:
        return False


async def test_a_verification_goes_through_api_worker_and_sinks(
    secured: Secured, processes: dict[str, ManagedProcess]
) -> None:
    settings = secured.settings
    _tenant, key = await new_tenant(settings, "sec")
    worker_health = f"http://{settings.web_host}:{settings.worker_web_port}/healthz"
    async with aiohttp.ClientSession() as session:
        # the faust host is up and every stage has its partitions and its state (on a loaded
        # machine that can take a while)
        healthy = await eventually(lambda: _healthy(worker_health, session), bool, timeout=120)
        assert healthy, processes["worker"].log_tail()
        api = (await healthy_client(settings.api_base, session)).as_key(key)
        answer = await api.call("POST", "/v1/verify", {"email": "x@nullmx.example", "timeout": 30})
        if answer.status == 202:  # not within the wait: poll its job as a client would
            answer = await api.until(answer.body["url"], lambda a: a.body["status"] == "done")
            answer.body["result"] = answer.body["results"][0]
    # the verdict: the API produced the request over SASL_SSL, the worker's gate and verify
    # stages consumed and produced over it, and the sink consumed the result into PostgreSQL,
    # where the API found it
    assert answer.status == 200, (answer.body, processes["worker"].log_tail())
    assert answer.body["result"]["is_reachable"] == "invalid"
    assert "null_mx" in answer.body["result"]["reasons"]
    for proc in processes.values():
        assert proc.running(), proc.log_tail()
        assert "Unable connect" not in proc.log_path.read_text(), proc.log_tail()


async def test_lag_and_replay_read_the_secured_cluster(
    secured: Secured, processes: dict[str, ManagedProcess]
) -> None:
    settings = secured.settings
    topics = settings.topics
    monitor = LagMonitor(settings.kafka, 1.0)
    try:
        lag = await eventually(
            monitor.measure,
            lambda found: (f"{settings.app_id}-gate", topics.requests) in found,
            timeout=30,
        )
    finally:
        await monitor.close()
    assert (f"{settings.app_id}-gate", topics.requests) in lag, lag
    assert (f"{settings.app_id}-sink-verifications", topics.verifications) in lag, lag
    summary = await replay_into_sinks(
        settings,
        "verifications",
        secured.began,
        datetime.now(UTC) + timedelta(seconds=1),
        lambda done, total: None,
    )
    assert summary.records >= 1
    # the rows were there: replaying them changes nothing
    assert summary.after["verifications"] == summary.before["verifications"]


async def test_a_wrong_password_is_refused_at_once_by_every_door(secured: Secured) -> None:
    wrong = secured.with_(kafka_sasl_password="not-the-password")
    began = time.monotonic()
    with pytest.raises(
        KafkaRefusedError, match=f"refused the SCRAM-SHA-512 credentials of user '{USER}'"
    ) as refused:
        await ensure_topics(wrong.kafka)
    assert refused.value.code == "kafka.sasl_auth_failed"
    assert secured.password not in str(refused.value)
    api = Api(wrong)
    with pytest.raises(KafkaRefusedError) as refused:
        await api.start()
    assert refused.value.code == "kafka.sasl_auth_failed"
    await api.stop()
    producer = BatchProducer(client_options(wrong.kafka))
    with pytest.raises(KafkaRefusedError):
        await producer.start()
    # waiting for a broker to come up gives up at once too: waiting cannot mend a password
    with pytest.raises(KafkaRefusedError, match="refused the SCRAM-SHA-512 credentials"):
        await wait_for_kafka(wrong.kafka, timeout=60)
    assert time.monotonic() - began < 10  # refused, not retried until a timeout


async def test_a_wrong_ca_and_a_plaintext_client_are_refused(
    secured: Secured, tmp_path: Path
) -> None:
    other = tmp_path / "other-ca.pem"
    other.write_bytes(make_ca("someone else's CA").cert_pem())
    with pytest.raises(KafkaRefusedError, match=r"TLS certificate of Kafka at .* was not accepted"):
        await ensure_topics(secured.with_(kafka_ssl_cafile=other).kafka)
    plaintext = secured.with_(
        kafka_security_protocol="PLAINTEXT",
        kafka_sasl_username=None,
        kafka_sasl_password=None,
        kafka_ssl_cafile=None,
    )
    with pytest.raises(KafkaRefusedError) as refused:
        await ensure_topics(plaintext.kafka)
    assert refused.value.code == "kafka.protocol_mismatch"


async def test_processes_with_a_wrong_password_exit_saying_why(secured: Secured) -> None:
    """The worker, the sinks and the API each stop (status 1) with the refusal in their log,
    rather than retrying a password that will never work."""
    stack = Stack(secured.settings, workers=False)
    wrong = {
        "POSTWIRE_KAFKA_SASL_PASSWORD": "not-the-password",
        "POSTWIRE_WORKER_WEB_PORT": str(free_port()),
        "POSTWIRE_SINKS_WEB_PORT": str(free_port()),
        "POSTWIRE_API_PORT": str(free_port()),
    }
    procs = [
        stack.process("worker-wrong", "worker", "--stage", "verify", env=wrong),
        stack.process("sinks-wrong", "sink", "--table", "events", env=wrong),
        stack.process("api-wrong", "api", env=wrong),
    ]
    try:
        for proc in procs:
            proc.start(detach=False)
        stopped = await eventually(
            lambda: asyncio.sleep(0, [p.name for p in procs if p.running()]),
            lambda running: not running,
            timeout=60,
        )
        assert not stopped, f"still running with a refused password: {stopped}"
    finally:
        for proc in procs:
            proc.stop()
    for proc in procs:
        assert proc.exit_code() not in (0, None), proc.name
        log = " ".join(proc.log_path.read_text().split())  # a command's error line is wrapped
        assert f"refused the SCRAM-SHA-512 credentials of user '{USER}'" in log, proc.log_tail()

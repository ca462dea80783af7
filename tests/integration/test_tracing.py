"""One mail/send is one trace across processes: a stack of its own (the session's Kafka and
PostgreSQL, its own topics) with tracing on exports to a real OTLP/HTTP receiver on loopback,
and the spans of the API, the gate, both deliver attempts (the first greylisted, the retry back
from a delay topic) and the sink share one trace id."""

from __future__ import annotations

import gzip
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from streams.settings import Settings
from streams.stack.process import ManagedProcess
from streams.stack.stack import Stack
from tests.conftest import SENDER_DOMAIN, free_port, pipeline_overrides, stack_settings
from tests.integration.api_client import healthy_client
from tests.integration.helpers import eventually, new_tenant
from tests.peers.world import World

pytestmark = pytest.mark.integration


@dataclass
class Span:
    service: str
    pid: int
    name: str
    trace_id: str
    span_id: str
    parent: str
    kind: int
    attributes: dict[str, Any]
    links: list[tuple[str, str]]


@dataclass
class Receiver:
    """A minimal OTLP/HTTP traces endpoint: decodes each export, keeps its spans."""

    spans: list[Span] = field(default_factory=list)
    posts: int = 0

    async def traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        self.posts += 1
        for resource in export.resource_spans:
            res = {a.key: _value(a.value) for a in resource.resource.attributes}
            for scope in resource.scope_spans:
                for s in scope.spans:
                    self.spans.append(
                        Span(
                            service=str(res.get("service.name")),
                            pid=int(res.get("process.pid") or 0),
                            name=s.name,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent=s.parent_span_id.hex(),
                            kind=s.kind,
                            attributes={a.key: _value(a.value) for a in s.attributes},
                            links=[(x.trace_id.hex(), x.span_id.hex()) for x in s.links],
                        )
                    )
        answer = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=answer, content_type="application/x-protobuf")


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/v1/traces", found.traces)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield found, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def traced(
    tmp_path: Path, pipeline: Stack, world: World, receiver: tuple[Receiver, str]
) -> AsyncIterator[Settings]:
    """The gate, the delivery lanes with their delay tiers, the events sink and the API, each a
    process of its own with tracing on, over the session's Kafka and PostgreSQL."""
    shared = pipeline.settings
    overrides = pipeline_overrides(world)
    overrides.update(
        kafka_bootstrap=shared.bootstrap,
        database_url=shared.dsn,
        tracing_endpoint=receiver[1],
        tracing_sample_ratio=1.0,
    )
    settings = stack_settings(tmp_path / "stack", **overrides)
    own = Stack(settings, workers=False)
    await own.start(detach=False)  # topics and migrations; no servers of its own
    ports = {"POSTWIRE_WORKER_WEB_PORT": str(free_port())}
    processes: list[ManagedProcess] = [
        own.process("trace-gate", "worker", "--stage", "gate", env=ports),
        own.process(
            "trace-deliver",
            "worker",
            "--stage",
            "deliver",
            env={"POSTWIRE_WORKER_WEB_PORT": str(free_port())},
        ),
        own.process("trace-sinks", "sink", "--table", "events"),
        own.process("trace-api", "api"),
    ]
    for process in processes:
        process.start(detach=False)
    try:
        yield settings
    finally:
        for process in processes:
            process.stop()
        own.stop()


async def test_one_mail_send_is_one_trace_from_the_api_to_the_sink(
    traced: Settings, receiver: tuple[Receiver, str], world: World
) -> None:
    found, _ = receiver
    settings = traced
    _, key = await new_tenant(settings, "traced")
    # the flaky MX greylists an address's first RCPT and accepts the next
    local = f"trace-{uuid.uuid4().hex[:8]}"
    world.mx["flaky"].behaviour.users.add(local)
    recipient = f"{local}@flaky.example"
    body = {
        "personalizations": [{"to": [{"email": recipient}]}],
        "from": {"email": f"ops@{SENDER_DOMAIN}"},
        "subject": "Password reset",
        "content": [{"type": "text/plain", "value": "Your code is 123456"}],
    }
    async with aiohttp.ClientSession() as session:
        client = (await healthy_client(settings.api_base, session)).as_key(key)
        answer = await client.call("POST", "/v3/mail/send", body, **{"X-Postwire-Priority": "high"})
    assert answer.status == 202, answer.body
    message_id = answer.headers["X-Message-Id"]

    async def delivered() -> int:
        return len(list(world.mx["flaky"].messages_to(recipient)))

    assert await eventually(delivered, bool, timeout=90) == 1

    def trace_of_message() -> list[Span]:
        http = [
            s
            for s in found.spans
            if s.name == "POST /v3/mail/send"
            and s.attributes.get("postwire.message_id") == message_id
        ]
        if not http:
            return []
        trace_id = http[0].trace_id
        return [s for s in found.spans if s.trace_id == trace_id]

    def complete(spans: list[Span]) -> bool:
        names = {s.name for s in spans}
        attempts = [s for s in spans if s.name == "deliver process"]
        rows = [s for s in spans if s.name == "sink events row"]
        # rows: processed, deferred, delivered
        return {"POST /v3/mail/send", "gate process"} <= names and (
            len(attempts) == 2 and len(rows) == 3
        )

    async def probe() -> list[Span]:
        return trace_of_message()

    spans = await eventually(probe, complete, timeout=60)
    names = sorted({s.name for s in spans})
    assert complete(spans), (names, len(found.spans), found.posts)

    by_name = {s.name: s for s in spans}
    http, gate = by_name["POST /v3/mail/send"], by_name["gate process"]
    first, retry = sorted(
        (s for s in spans if s.name == "deliver process"),
        key=lambda s: s.attributes["postwire.attempt"],
    )
    # one trace, each hop the child of the one before it
    assert http.parent == ""  # no caller's traceparent: the request starts the trace
    publish = by_name[f"{settings.topics.requests} publish"]
    assert publish.parent == http.span_id
    assert gate.parent == publish.span_id
    # the attempts are siblings under the gate; the retry links the attempt that deferred it
    assert first.parent == gate.span_id
    assert retry.parent == gate.span_id
    assert (first.trace_id, first.span_id) in retry.links
    assert first.attributes["postwire.smtp.code"] == 451
    assert first.attributes["postwire.outcome"] == "deferred"
    assert first.attributes["postwire.retry"] is True
    assert retry.attributes["postwire.smtp.code"] == 250
    assert retry.attributes["postwire.outcome"] == "delivered"
    assert retry.attributes["postwire.attempt"] == first.attributes["postwire.attempt"] + 1
    # each event lands as a row in the trace: processed (gate), deferred, delivered (attempts)
    rows = [s for s in spans if s.name == "sink events row"]
    assert sorted(r.parent for r in rows) == sorted([gate.span_id, first.span_id, retry.span_id])
    # the gate and attempts name the message; the semantic conventions' messaging attributes
    for span in (gate, first, retry):
        assert span.attributes["postwire.message_id"] == message_id
        assert span.attributes["messaging.system"] == "kafka"
        assert span.attributes["messaging.operation"] == "process"
    assert gate.attributes["messaging.destination.name"] == settings.topics.requests
    assert first.attributes["messaging.destination.name"] == settings.topics.deliveries_tx
    assert http.attributes["http.route"] == "/v3/mail/send"
    assert http.attributes["http.response.status_code"] == 202
    # no address in any attribute of the trace
    assert not any(local in str(v) for s in spans for v in s.attributes.values())
    # batch spans link the records they carry: the gate's batch the published request, a delay
    # tier's batch the deferred attempt, the sink's transaction the delivered event
    receives = [s for s in found.spans if s.name == "gate receive"]
    assert any((publish.trace_id, publish.span_id) in r.links for r in receives)
    delays = [s for s in found.spans if s.name.startswith("delay.") and s.name.endswith("receive")]
    assert any((first.trace_id, first.span_id) in d.links for d in delays), delays
    transactions = [s for s in found.spans if s.name == "sink events"]
    assert any((retry.trace_id, retry.span_id) in t.links for t in transactions)
    # four processes, each its own service and pid
    services = {s.service for s in spans}
    assert services == {
        "postwire-api",
        "postwire-worker.gate",
        "postwire-worker.deliver",
        "postwire-sinks",
    }
    assert len({s.pid for s in spans}) == 4

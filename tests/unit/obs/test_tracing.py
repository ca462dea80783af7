"""The tracing helpers with the SDK's in-memory exporter: the W3C carrier in Kafka headers, the
spans a record and a batch get, what off costs (nothing is built), the HTTP span."""

from __future__ import annotations

from collections.abc import Iterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from streams.obs import tracing
from streams.runtime.records import Consumed, Out
from streams.stages.deliver import _Topic, collected


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.uninstall()


def _record(headers: tuple[tuple[str, bytes], ...], offset: int = 7) -> Consumed:
    return Consumed("pw.requests", 1, offset, b"k", b"v", headers)


def test_off_every_helper_is_the_shared_no_op_and_headers_stay_as_they_are() -> None:
    assert not tracing.enabled()
    headers = (("postwire-key-id", b"k1"),)
    assert tracing.with_context(headers) is headers
    outs = [Out("t", b"k", b"v", headers)]
    tracing.stamp(outs)
    assert outs[0].headers is headers
    record = _record(headers)
    first = tracing.record_span("gate", "t", 0, 1, headers)
    assert first is tracing.batch_span("gate", "t", [record])
    assert first is tracing.resumed(headers)
    with first as span:
        assert not span.is_recording()


def test_the_carrier_round_trips_a_span_context_through_kafka_headers(
    spans: InMemorySpanExporter,
) -> None:
    with tracing.producer_span("pw.requests", 1) as span:
        headers = tracing.with_context((("postwire-key-id", b"k1"),))
    names = [name for name, _ in headers]
    assert names == ["postwire-key-id", "traceparent"]
    assert all(isinstance(value, bytes) for _, value in headers)
    found = tracing.extract(headers)
    assert found is not None
    link = tracing.link_of(headers)
    assert link is not None
    assert link.context.trace_id == span.get_span_context().trace_id
    assert link.context.span_id == span.get_span_context().span_id
    # aiokafka hands a header without a value as None; no context at all is None
    assert tracing.extract([("traceparent", None)]) is None
    assert tracing.extract(()) is None
    assert tracing.extract([("traceparent", b"garbage")]) is None


def test_stamp_replaces_the_context_a_record_came_with(spans: InMemorySpanExporter) -> None:
    with tracing.producer_span("a", 1):
        old = tracing.with_context(())
    outs = [Out("x", b"k", b"1"), Out("y", b"k", b"2", (*old, ("keep", b"me")))]
    with tracing.producer_span("b", 1) as span:
        tracing.stamp(outs, since=1)
    assert outs[0].headers == ()  # before ``since``: left alone
    headers = outs[1].headers
    assert [n for n, _ in headers] == ["keep", "traceparent"]
    link = tracing.link_of(headers)
    assert link is not None
    assert link.context.span_id == span.get_span_context().span_id


def test_a_record_span_continues_the_records_trace_and_names_no_address(
    spans: InMemorySpanExporter,
) -> None:
    with tracing.producer_span("pw.requests", 1) as publish:
        headers = tracing.with_context(())
    record = _record(tuple(headers))
    where = (record.topic, record.partition, record.offset)
    with (
        tracing.batch_span("gate", record.topic, [record, _record((), 8)]),
        tracing.record_span("gate", *where, record.headers, "msg-1") as span,
    ):
        span.set_attribute("postwire.outcome", "admitted")
    done = {s.name: s for s in spans.get_finished_spans()}
    gate, batch = done["gate process"], done["gate receive"]
    trace_id = publish.get_span_context().trace_id
    assert gate.context.trace_id == trace_id
    assert gate.parent is not None
    assert gate.parent.span_id == publish.get_span_context().span_id
    assert gate.kind is SpanKind.CONSUMER
    attrs = dict(gate.attributes or {})
    assert attrs["messaging.system"] == "kafka"
    assert attrs["messaging.destination.name"] == "pw.requests"
    assert attrs["messaging.operation"] == "process"
    assert attrs["messaging.kafka.destination.partition"] == 1
    assert attrs["messaging.kafka.message.offset"] == 7
    assert attrs[tracing.MESSAGE_ID] == "msg-1"
    assert not any("@" in str(v) for v in attrs.values())
    # the batch is a trace of its own, linking the one record that had a context
    assert batch.context.trace_id != trace_id
    assert batch.parent is None
    assert [link.context.span_id for link in batch.links] == [publish.get_span_context().span_id]
    assert dict(batch.attributes or {})["messaging.batch.message_count"] == 2


def test_a_record_without_a_context_is_traced_under_its_batch(
    spans: InMemorySpanExporter,
) -> None:
    record = _record(())
    with (
        tracing.batch_span("verify", record.topic, [record]) as batch,
        tracing.record_span("verify", record.topic, 1, 7, record.headers),
    ):
        pass
    (verify,) = [s for s in spans.get_finished_spans() if s.name == "verify process"]
    assert verify.parent is not None
    assert verify.parent.span_id == batch.get_span_context().span_id


async def test_what_a_forwarding_hop_produces_stays_in_the_records_trace(
    spans: InMemorySpanExporter,
) -> None:
    """A delay tier puts a task back on its lane under the context it came with (the deliver
    shell's topics stamp what they collect)."""
    with tracing.producer_span("pw.retry.1s", 1) as attempt:
        headers = tracing.with_context(())
    lane = _Topic("pw.deliveries")
    with tracing.resumed(headers):
        _, outs = await collected(lane.send(key=b"d", value=b"task"))
    (out,) = outs
    link = tracing.link_of(out.headers)
    assert link is not None
    assert link.context.span_id == attempt.get_span_context().span_id
    _, bare = await collected(lane.send(key=b"d", value=b"task"))
    assert bare[0].headers == ()  # no context current: nothing invented


def test_a_retry_is_a_sibling_of_the_attempt_it_follows_and_links_it(
    spans: InMemorySpanExporter,
) -> None:
    with tracing.producer_span("pw.requests", 1):
        pass
    with tracing.record_span("gate", "pw.requests", 0, 1, ()) as gate:
        task = tracing.with_context(())
    where = ("pw.deliveries.tx", 0, 5)
    with tracing.attempt_span("deliver", *where, task, "m-1") as first:
        retry = tracing.with_context((("postwire-enqueued-at", b"1"),))
    names = [n for n, _ in retry]
    assert names == ["postwire-enqueued-at", "traceparent", tracing.ORIGIN]
    # the delay tier forwards it as it came (its context and its origin)
    with tracing.resumed(retry):
        forwarded = tracing.with_context(())
    assert dict(forwarded) == {k: v for k, v in retry if k != "postwire-enqueued-at"}
    with tracing.attempt_span("deliver", "pw.deliveries.tx", 0, 9, forwarded, "m-1") as second:
        again = tracing.with_context(())
    done = [s for s in spans.get_finished_spans() if s.name == "deliver process"]
    one, two = sorted(done, key=lambda s: s.start_time or 0)
    gate_id = gate.get_span_context().span_id
    assert one.context.span_id == first.get_span_context().span_id
    assert two.context.span_id == second.get_span_context().span_id
    assert one.parent is not None
    assert one.parent.span_id == gate_id
    assert not one.links
    assert two.parent is not None
    assert two.parent.span_id == gate_id  # a sibling, not a child of the first
    assert [x.context.span_id for x in two.links] == [one.context.span_id]
    assert one.context.trace_id == two.context.trace_id == gate.get_span_context().trace_id
    # the second attempt's own retry still points at the gate
    assert dict(again)[tracing.ORIGIN] == dict(retry)[tracing.ORIGIN] == dict(task)["traceparent"]


async def test_write_span_links_the_batch_it_writes(spans: InMemorySpanExporter) -> None:
    with tracing.producer_span("pw.events", 1):
        headers = tracing.with_context(())
    link = tracing.link_of(headers)
    assert link is not None
    with tracing.write_span("events", "pw.events", 3, [link]):
        pass
    done = {s.name: s for s in spans.get_finished_spans()}
    sink, row = done["sink events"], done["sink events row"]
    attrs = dict(sink.attributes or {})
    assert attrs["messaging.batch.message_count"] == 3
    assert attrs["db.collection.name"] == "events"
    assert [x.context.span_id for x in sink.links] == [link.context.span_id]
    # the record's own trace shows its row landing, linked to the transaction
    assert row.context.trace_id == link.context.trace_id
    assert row.parent is not None
    assert row.parent.span_id == link.context.span_id
    assert [x.context.span_id for x in row.links] == [sink.context.span_id]


async def test_a_failed_write_gives_the_rows_traces_nothing(
    spans: InMemorySpanExporter,
) -> None:
    with tracing.producer_span("pw.events", 1):
        link = tracing.link_of(tracing.with_context(()))
    assert link is not None
    with pytest.raises(RuntimeError), tracing.write_span("events", "pw.events", 1, [link]):
        raise RuntimeError("postgres down")
    assert "sink events row" not in {s.name for s in spans.get_finished_spans()}


async def test_the_http_span_names_the_route_never_its_values(
    spans: InMemorySpanExporter,
) -> None:
    async def handler(request: web.Request) -> web.Response:
        with tracing.producer_span("pw.requests", 1):
            pass
        return web.Response(status=202, headers={"X-Message-Id": "m-1"})

    app = web.Application(middlewares=[tracing.http_middleware])
    app.router.add_post("/v1/suppressions/{email}", handler)
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as session:
        url = server.make_url("/v1/suppressions/bob@example.com")
        async with session.post(url) as answer:
            assert answer.status == 202
    done = {s.name: s for s in spans.get_finished_spans()}
    http = done["POST /v1/suppressions/{email}"]
    assert http.kind is SpanKind.SERVER
    attrs = dict(http.attributes or {})
    assert attrs["http.request.method"] == "POST"
    assert attrs["http.route"] == "/v1/suppressions/{email}"
    assert attrs["http.response.status_code"] == 202
    assert attrs[tracing.MESSAGE_ID] == "m-1"
    assert not any("bob" in str(v) for v in attrs.values())
    publish = done["pw.requests publish"]
    assert publish.parent is not None
    assert publish.parent.span_id == http.context.span_id


def test_traces_url_appends_the_otlp_path_once() -> None:
    assert tracing.traces_url("http://c:4318") == "http://c:4318/v1/traces"
    assert tracing.traces_url("http://c:4318/") == "http://c:4318/v1/traces"
    assert tracing.traces_url("http://c:4318/v1/traces") == "http://c:4318/v1/traces"


def test_setup_with_no_endpoint_installs_nothing() -> None:
    assert tracing.setup(tracing.TracingSettings(), "api") is False
    assert not tracing.enabled()


async def test_the_http_span_joins_a_callers_traceparent(spans: InMemorySpanExporter) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=200)

    app = web.Application(middlewares=[tracing.http_middleware])
    app.router.add_get("/v1/events", handler)
    app.router.add_get("/healthz", handler)
    caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as session:
        async with session.get(server.make_url("/v1/events"), headers={"TraceParent": caller}):
            pass
        async with session.get(server.make_url("/healthz")):
            pass
    (http,) = spans.get_finished_spans()  # the health check is not traced
    assert http.name == "GET /v1/events"
    assert f"{http.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert http.parent is not None
    assert f"{http.parent.span_id:016x}" == "b7ad6b7169203331"

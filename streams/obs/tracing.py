"""OpenTelemetry traces: the provider's setup, the Kafka header carrier and the span helpers
every shell calls (the API's request and publish, each stage a record passes, a runtime batch,
a sink's transaction).

Off unless ``POSTWIRE_TRACING_ENDPOINT`` is set: then no SDK provider is installed, every
helper returns before it reads a header or builds an attribute, and the API's tracer stays the
no-op one. On, a record's context travels in its Kafka headers as W3C ``traceparent`` /
``tracestate`` (other clients that speak W3C tracing join the trace), and each record a stage
produces carries the context of the record it came from, so one mail/send is one trace across
processes; batch spans (a runtime batch, a sink's transaction) link the records they carry.

No address or key goes into an attribute: a record is named by its message id, tenant, topic,
partition and offset, an attempt by its SMTP reply code."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "MESSAGE_ID",
    "ORIGIN",
    "TRACE_HEADERS",
    "TracingSettings",
    "attempt_span",
    "batch_span",
    "enabled",
    "extract",
    "http_middleware",
    "install",
    "link_of",
    "producer_span",
    "record_span",
    "resumed",
    "setup",
    "stamp",
    "traces_url",
    "uninstall",
    "with_context",
    "write_span",
]

TRACE_HEADERS = ("traceparent", "tracestate")
# the traceparent a delivery task first entered its lane with (the gate's span): a retry's
# attempt is its child, linked to the attempt that deferred it (the record's traceparent)
ORIGIN = "postwire-trace-origin"
_REPLACED = frozenset((*TRACE_HEADERS, ORIGIN))
MESSAGE_ID = "postwire.message_id"  # searchable as a tag in Jaeger
EXPORT_DELAY_MS = 1000  # spans wait at most this long in the process before they are sent
NAME = "postwire"

Headers = Sequence[tuple[str, bytes | None]]  # as consumed (aiokafka: a value may be None)
Produced = Sequence[tuple[str, bytes]]  # as produced (streams.runtime.records.Out)


@dataclass(frozen=True)
class TracingSettings:
    """What tracing needs; ``streams.settings`` fills it (``settings.tracing``)."""

    endpoint: str | None = None  # the OTLP/HTTP collector's base URL; None: tracing is off
    sample_ratio: float = 1.0  # of the traces that start here; a sampled parent is followed
    service_prefix: str = NAME  # service.name is ``<prefix>-<role>``
    export_timeout: float = 10.0


class _Getter(Getter[Headers]):
    def get(self, carrier: Headers, key: str) -> list[str] | None:
        found = [bytes(v).decode("latin-1") for k, v in carrier if k == key and v is not None]
        return found or None

    def keys(self, carrier: Headers) -> list[str]:
        return [k for k, _ in carrier]


class _Setter(Setter[list[tuple[str, bytes]]]):
    def set(self, carrier: list[tuple[str, bytes]], key: str, value: str) -> None:
        carrier.append((key, value.encode("latin-1")))


_PROPAGATOR = TraceContextTextMapPropagator()
_GETTER = _Getter()
_SETTER = _Setter()
_NOOP = contextlib.nullcontext(trace.INVALID_SPAN)  # reusable: what every helper gives when off


class _State:
    """The process's tracing: off (the API's no-op tracer) until ``install``."""

    def __init__(self) -> None:
        self.on = False
        self.tracer: Tracer = trace.NoOpTracer()
        self.provider: Any = None  # the SDK's TracerProvider once set up (imported only then)

    def reset(self) -> None:
        self.on, self.tracer, self.provider = False, trace.NoOpTracer(), None


_state = _State()
# the origin the records produced now carry (set in an attempt's span, or resumed)
_origin: ContextVar[bytes | None] = ContextVar("postwire_trace_origin", default=None)


def enabled() -> bool:
    return _state.on


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces path under a collector's base URL (as OTEL_EXPORTER_OTLP_ENDPOINT
    is read), or the URL as given when it already names it."""
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1/traces") else f"{base}/v1/traces"


def setup(settings: TracingSettings, role: str) -> bool:
    """Install the SDK provider of this process (``role``: api, worker, sinks ...) exporting to
    the configured collector; nothing at all when no endpoint is set. True when on."""
    if not settings.endpoint:
        return False
    # imported here: a process with tracing off never loads the SDK or the exporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    pid = os.getpid()
    resource = Resource.create(
        {
            "service.name": f"{settings.service_prefix}-{role}",
            "service.namespace": NAME,
            "service.instance.id": f"{socket.gethostname()}:{pid}",
            "process.pid": pid,
        }
    )
    sampler = ParentBased(TraceIdRatioBased(settings.sample_ratio))
    provider = TracerProvider(resource=resource, sampler=sampler)
    exporter = OTLPSpanExporter(
        endpoint=traces_url(settings.endpoint), timeout=settings.export_timeout
    )
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=EXPORT_DELAY_MS))
    trace.set_tracer_provider(provider)  # libraries that trace on their own join in
    install(provider)
    return True


def install(provider: Any) -> None:
    """Trace with ``provider`` (an SDK TracerProvider): ``setup``, and unit tests with the
    SDK's in-memory exporter."""
    _state.provider = provider
    _state.tracer = provider.get_tracer(NAME)
    _state.on = True


def uninstall() -> None:
    """Back to off, spans still buffered sent first."""
    if _state.provider is not None:
        _state.provider.force_flush()
    _state.reset()


# -- the carrier


def extract(headers: Headers | None) -> Context | None:
    """The context a record's headers carry, or None when they carry none."""
    if not headers:
        return None
    found = _PROPAGATOR.extract(headers, getter=_GETTER)
    if not trace.get_current_span(found).get_span_context().is_valid:
        return None
    return found


def link_of(headers: Headers | None) -> Link | None:
    """A link to the span that produced a record (for the batch spans that carry it)."""
    found = extract(headers)
    if found is None:
        return None
    return Link(trace.get_current_span(found).get_span_context())


def _current_headers() -> list[tuple[str, bytes]]:
    carrier: list[tuple[str, bytes]] = []
    _PROPAGATOR.inject(carrier, setter=_SETTER)
    origin = _origin.get()
    if carrier and origin is not None:
        carrier.append((ORIGIN, origin))
    return carrier


def _merged(headers: Headers, carrier: list[tuple[str, bytes]]) -> tuple[tuple[str, bytes], ...]:
    kept = [(k, bytes(v)) for k, v in headers if k not in _REPLACED and v is not None]
    return (*kept, *carrier)


def _header(headers: Headers | None, name: str) -> bytes | None:
    for key, value in headers or ():
        if key == name and value is not None:
            return bytes(value)
    return None


def with_context(headers: Produced) -> Produced:
    """``headers`` with the current span's context in place of any they carried."""
    if not _state.on:
        return headers
    carrier = _current_headers()
    return _merged(headers, carrier) if carrier else headers


def stamp(outputs: list[Any], since: int = 0) -> None:
    """Give the records ``outputs[since:]`` (``streams.runtime.records.Out``) the current span's
    context: what a stage produced for the record it is working on."""
    if not _state.on or since >= len(outputs):
        return
    carrier = _current_headers()
    if not carrier:
        return
    for i in range(since, len(outputs)):
        out = outputs[i]
        outputs[i] = replace(out, headers=_merged(out.headers, carrier))


@contextlib.contextmanager
def _attached(found: Context, origin: bytes | None) -> Iterator[None]:
    token = otel_context.attach(found)
    kept = _origin.set(origin)
    try:
        yield
    finally:
        _origin.reset(kept)
        otel_context.detach(token)


def resumed(headers: Headers | None) -> contextlib.AbstractContextManager[Any]:
    """Make a record's context the current one without a span of its own: what a hop that only
    forwards the record (a delay tier putting it back on its lane) produces stays in its trace."""
    if not _state.on:
        return _NOOP
    found = extract(headers)
    return _NOOP if found is None else _attached(found, _header(headers, ORIGIN))


# -- spans


def _messaging(topic: str, operation: str) -> dict[str, Any]:
    return {
        "messaging.system": "kafka",
        "messaging.destination.name": topic,
        "messaging.operation": operation,
        "messaging.operation.type": operation,
    }


def _record_attributes(
    stage: str, topic: str, partition: int, offset: int, message_id: str | None
) -> dict[str, Any]:
    attributes = _messaging(topic, "process")
    attributes["messaging.kafka.destination.partition"] = partition
    attributes["messaging.kafka.message.offset"] = offset
    attributes["postwire.stage"] = stage
    if message_id:
        attributes[MESSAGE_ID] = message_id
    return attributes


def record_span(
    stage: str,
    topic: str,
    partition: int,
    offset: int,
    headers: Headers | None,
    message_id: str | None = None,
) -> contextlib.AbstractContextManager[Span]:
    """One record through one stage (gate, deferral, verify): a child of the span that produced
    the record, so the record's trace goes on; current while the stage produces the record's
    outputs (``stamp``, ``with_context``)."""
    if not _state.on:
        return _NOOP
    return _state.tracer.start_as_current_span(
        f"{stage} process",
        context=extract(headers),  # None: under the current span (the batch's), a new trace
        kind=SpanKind.CONSUMER,
        attributes=_record_attributes(stage, topic, partition, offset, message_id),
    )


def attempt_span(
    stage: str,
    topic: str,
    partition: int,
    offset: int,
    headers: Headers | None,
    message_id: str | None = None,
) -> contextlib.AbstractContextManager[Span]:
    """One delivery attempt. The first is a child of the record's span (the gate's); a retry,
    back from a delay topic, is a child of that same origin and links the attempt that deferred
    it, so a message's attempts are siblings in its trace, each retry linked to the one before."""
    if not _state.on:
        return _NOOP
    return _attempt(stage, topic, partition, offset, headers, message_id)


@contextlib.contextmanager
def _attempt(
    stage: str,
    topic: str,
    partition: int,
    offset: int,
    headers: Headers | None,
    message_id: str | None,
) -> Iterator[Span]:
    carried = extract(headers)
    raw_origin = _header(headers, ORIGIN)
    origin = extract([("traceparent", raw_origin)]) if raw_origin else None
    links: list[Link] = []
    parent: Context | None = origin
    if origin is not None:
        if carried is not None:
            links.append(Link(trace.get_current_span(carried).get_span_context()))
    else:
        parent, raw_origin = carried, _header(headers, "traceparent")
    attributes = _record_attributes(stage, topic, partition, offset, message_id)
    token = _origin.set(raw_origin)  # what this attempt produces (a retry) keeps the origin
    try:
        with _state.tracer.start_as_current_span(
            f"{stage} process",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=links,
            attributes=attributes,
        ) as span:
            yield span
    finally:
        _origin.reset(token)


def batch_span(
    stage: str, topic: str, records: Sequence[Any]
) -> contextlib.AbstractContextManager[Span]:
    """A runtime batch (``streams.runtime.records.Consumed``), linking the span of each record
    it carries; a trace of its own (the records' traces are many)."""
    if not _state.on:
        return _NOOP
    links = [link for link in (link_of(r.headers) for r in records) if link is not None]
    attributes = _messaging(topic, "receive")
    attributes["messaging.batch.message_count"] = len(records)
    attributes["postwire.stage"] = stage
    return _state.tracer.start_as_current_span(
        f"{stage} receive",
        context=Context(),
        kind=SpanKind.CONSUMER,
        links=links,
        attributes=attributes,
    )


def write_span(
    table: str, topic: str, count: int, links: Sequence[Link]
) -> contextlib.AbstractContextManager[Span]:
    """One sink transaction: the batch's ``count`` rows in one write, linking the records'
    spans. Once it committed, each linked record's trace also gets a ``row`` span (the
    transaction's time, linked to it): where the row landed shows in the message's trace."""
    if not _state.on:
        return _NOOP
    return _written(table, topic, count, links)


@contextlib.contextmanager
def _written(table: str, topic: str, count: int, links: Sequence[Link]) -> Iterator[Span]:
    attributes = _messaging(topic, "process")
    attributes["messaging.batch.message_count"] = count
    attributes["db.system"] = "postgresql"
    attributes["db.collection.name"] = table
    attributes["db.operation.name"] = "upsert"
    began = time.time_ns()
    with _state.tracer.start_as_current_span(
        f"sink {table}",
        context=Context(),
        kind=SpanKind.CONSUMER,
        links=list(links),
        attributes=attributes,
    ) as span:
        yield span  # what raises here (nothing written) leaves the rows' traces alone
    ended = time.time_ns()
    transaction = [Link(span.get_span_context())]
    row = {"db.system": "postgresql", "db.collection.name": table}
    for link in links:
        parent = trace.set_span_in_context(trace.NonRecordingSpan(link.context))
        _state.tracer.start_span(
            f"sink {table} row", parent, links=transaction, attributes=row, start_time=began
        ).end(end_time=ended)


def producer_span(topic: str, count: int) -> contextlib.AbstractContextManager[Span]:
    """The API publishing a request's records (a child of the HTTP span): the records carry it."""
    if not _state.on:
        return _NOOP
    attributes = _messaging(topic, "publish")
    attributes["messaging.batch.message_count"] = count
    return _state.tracer.start_as_current_span(
        f"{topic} publish", kind=SpanKind.PRODUCER, attributes=attributes
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
UNTRACED = frozenset({"/healthz", "/livez", "/metrics"})  # probes and scrapes: noise in a trace


@web.middleware
async def http_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A SERVER span per request, HTTP semantic conventions; the route's pattern, never its
    values, names it (an address in a suppression path stays out)."""
    if not _state.on or request.path in UNTRACED:
        return await handler(request)
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else None
    attributes: dict[str, Any] = {
        "http.request.method": request.method,
        "url.scheme": request.scheme,
        "server.port": request.url.port or 0,
    }
    if route:
        attributes["http.route"] = route
    parent = _PROPAGATOR.extract(request.headers)  # a caller's traceparent (any case)
    name = f"{request.method} {route}" if route else request.method
    with _state.tracer.start_as_current_span(
        name, context=parent, kind=SpanKind.SERVER, attributes=attributes
    ) as span:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            _answered(span, exc.status)
            raise
        except Exception as exc:
            span.set_attribute("http.response.status_code", 500)
            span.set_attribute("error.type", type(exc).__name__)
            raise
        _answered(span, response.status)
        message_id = response.headers.get("X-Message-Id")
        if message_id:
            span.set_attribute(MESSAGE_ID, message_id)
        return response


def _answered(span: Span, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))
        span.set_attribute("error.type", str(status))

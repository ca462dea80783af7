"""`postwire inbound` on loopback against the session's real Kafka and PostgreSQL: mail goes out
with a VERP return path, DSNs and feedback reports in the shapes Postfix, Exchange Online, Gmail
and ARF generators write them come back to it over SMTP (aiosmtplib), and the events,
suppressions and dead letters are read off the topics; what is not a return path of ours is
refused at RCPT."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import aiosmtplib
import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from streams.clock import wall_clock
from streams.contract.build import delivery_task as build_task
from streams.contract.build import email_request, make_event, recipient
from streams.contract.codec import Codec
from streams.contract.ids import MessageIds
from streams.contract.records import DeliveryEvent, DeliveryTask
from streams.deliver.dkim import Signer
from streams.deliver.keyring import KeyRing
from streams.inbound.server import SOURCE_TOPIC, InboundServer
from streams.kafka.config import client_options
from streams.kafka.read import read_all
from streams.mail.verp import decode, return_path
from streams.settings import Settings
from streams.stack.stack import Stack
from streams.stages.deliver import build_deliverer
from tests.conftest import free_port
from tests.fixtures.inbound import fixture
from tests.integration.helpers import eventually
from tests.peers.smtp_behaviours import SinkServer
from tests.peers.smtp_servers import free_port_on

pytestmark = pytest.mark.integration

DOMAIN = "bounces.postwire.test"


def _with(settings: Settings, **overrides: Any) -> Settings:
    """A fresh Settings (its cached groups made anew) of ``settings`` with ``overrides``."""
    values = {name: getattr(settings, name) for name in Settings.model_fields}
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
async def inbound(stack: Settings) -> AsyncIterator[Settings]:
    settings = _with(
        stack, bounce_domain=DOMAIN, inbound_port=free_port(), inbound_web_port=free_port()
    )
    server = InboundServer(settings)
    await server.start()
    try:
        yield settings
    finally:
        await server.stop()


@pytest.fixture
def relay() -> Iterator[SinkServer]:
    server = SinkServer("127.0.0.1", port=free_port_on("127.0.0.1")).start()
    try:
        yield server
    finally:
        server.stop()


async def _on_record(settings: Settings, codec: Codec, events: list[DeliveryEvent]) -> None:
    """``events`` produced and landed in PostgreSQL (the messages and events tables the resolver
    reads)."""
    options = client_options(settings.kafka)
    producer = AIOKafkaProducer(**options, acks="all")
    await producer.start()
    try:
        for event in events:
            value = codec.encode("DeliveryEvent", event)
            await producer.send_and_wait(
                settings.topics.events, value, key=event["tenant"].encode()
            )
    finally:
        await producer.stop()
    conn = await asyncpg.connect(settings.dsn)
    try:
        ids = [e["message_id"] for e in events]
        # two sinks land the topic (latest state and the event log) each at its own pace, and
        # the resolver reads both: the recipient from one, its categories from the other
        queries = [
            f"SELECT count(*) FROM {table} WHERE message_id = ANY($1::text[])"
            for table in ("messages", "events")
        ]

        async def landed() -> int:
            return min([int(await conn.fetchval(query, ids)) for query in queries])

        assert await eventually(landed, lambda n: n >= len(events)) >= len(events)
    finally:
        await conn.close()


def _delivered(tenant: str, message_id: str, address: str) -> DeliveryEvent:
    return make_event(
        "delivered",
        tenant,
        datetime.now(UTC),
        request_id=message_id,
        message_id=message_id,
        recipient=address,
        categories=["news"],
        custom_args={"campaign": "c1"},
        attempt=1,
    )


async def _send(settings: Settings, rcpt: str, raw: bytes) -> tuple[int, str]:
    """MAIL FROM:<> (a bounce's null sender), RCPT, DATA: the reply to DATA."""
    inbound = settings.inbound
    async with aiosmtplib.SMTP(hostname=inbound.host, port=inbound.port, timeout=10) as smtp:
        await smtp.mail("")
        await smtp.rcpt(rcpt)
        reply = await smtp.data(raw)
        return reply.code, reply.message


async def _rcpt_reply(settings: Settings, rcpt: str) -> tuple[int, str]:
    inbound = settings.inbound
    async with aiosmtplib.SMTP(hostname=inbound.host, port=inbound.port, timeout=10) as smtp:
        await smtp.mail("")
        try:
            reply = await smtp.rcpt(rcpt)
        except aiosmtplib.SMTPRecipientRefused as exc:
            return exc.code, exc.message
        return reply.code, reply.message


async def _events(settings: Settings, codec: Codec, tenant: str) -> list[DeliveryEvent]:
    found = [
        codec.decode_as(v, "DeliveryEvent")
        for v in await read_all(settings.kafka, settings.topics.events)
    ]
    return [e for e in found if e["tenant"] == tenant and e["type"] != "delivered"]


async def _suppressions(settings: Settings, codec: Codec, tenant: str) -> dict[str, Any]:
    found = [
        codec.decode_as(v, "Suppression")
        for v in await read_all(settings.kafka, settings.topics.suppressions)
        if v
    ]
    return {s["address"]: s for s in found if s["tenant"] == tenant}


def _task(settings: Settings, tenant: str, address: str) -> DeliveryTask:
    message_id = MessageIds(settings.secret).message_id(tenant, None)
    request = email_request(message_id, tenant, "send", datetime.now(UTC))
    return build_task(
        request,
        recipient(address),
        address.rpartition("@")[2],
        sender={"email": "news@acme.example", "name": None},
        content={
            "subject": "Hello",
            "text": "Hello.",
            "html": None,
            "template_id": None,
            "headers": {},
            "attachments": [],
        },
    )


async def test_mail_goes_out_with_a_verp_path_and_a_late_bounce_to_it_suppresses(
    inbound: Settings, relay: SinkServer, codec: Codec
) -> None:
    tenant = f"inb-{uuid.uuid4().hex[:6]}"
    address = "gina@example.org"
    settings = _with(
        inbound,
        delivery_mode="relay",
        relay_host=relay.host,
        relay_port=relay.port,
        smtp_tls="none",
    )
    deliverer = build_deliverer(
        settings.delivery, wall_clock, Signer(KeyRing(lambda _t, _d: None)), secret=settings.secret
    )
    task = _task(settings, tenant, address)
    try:
        conclusion = await deliverer.attempt(task)
    finally:
        await deliverer.close()
    assert conclusion.delivered
    [sent] = relay.received
    local, _, domain = sent.mail_from.rpartition("@")
    assert domain == DOMAIN
    assert "gina" not in local
    assert decode(settings.secret, local).message_id == task["message_id"]

    await _on_record(settings, codec, [conclusion.event])
    code, _ = await _send(
        settings, sent.mail_from, fixture("postfix_user_unknown", sent.mail_from, address)
    )
    assert code == 250

    events = await eventually(
        lambda: _events(settings, codec, tenant), lambda found: len(found) >= 1
    )
    [bounced] = events
    assert bounced["type"] == "bounced"
    assert bounced["bounce_class"] == "user_unknown"
    assert bounced["recipient"] == address
    assert bounced["message_id"] == task["message_id"]
    suppressions = await _suppressions(settings, codec, tenant)
    assert suppressions[address]["reason"] == "user_unknown"
    assert suppressions[address]["source"] == "inbound"
    # and the sinks land it where the API and the gate read it
    conn = await asyncpg.connect(settings.dsn)
    try:
        query = "SELECT reason FROM suppressions WHERE tenant_id = $1 AND address = $2"

        async def row() -> Any:
            return await conn.fetchval(query, tenant, address)

        assert await eventually(row, lambda r: r is not None) == "user_unknown"
    finally:
        await conn.close()


CASES = {
    # fixture: (event type, bounce class, suppressed)
    "postfix_user_unknown": ("bounced", "user_unknown", True),
    "exchange_recipient_not_found": ("bounced", "user_unknown", True),
    "gmail_no_such_account": ("bounced", "user_unknown", True),
    "gmail_mailbox_full": ("bounced", "mailbox_full", False),
    "postfix_delayed": ("deferred", None, False),
    "arf_abuse": ("complained", None, True),
    "arf_outlook_jmrp": ("complained", None, True),
    "qmail_nonstandard": ("bounced", "user_unknown", True),
}


async def test_reports_of_every_shape_become_events_and_suppressions(
    inbound: Settings, codec: Codec
) -> None:
    tenant = f"inb-{uuid.uuid4().hex[:6]}"
    ids = MessageIds(inbound.secret)
    targets = {name: (ids.message_id(tenant, None), f"{name}@example.org") for name in CASES}
    await _on_record(inbound, codec, [_delivered(tenant, m, a) for m, a in targets.values()])
    for name, (message_id, address) in targets.items():
        path = return_path(inbound.secret, DOMAIN, tenant, message_id, address)
        assert path is not None
        code, message = await _send(inbound, path, fixture(name, path, address))
        assert code == 250, (name, message)

    events = await eventually(
        lambda: _events(inbound, codec, tenant), lambda found: len(found) >= len(CASES)
    )
    by_address = {e["recipient"]: e for e in events}
    suppressions = await _suppressions(inbound, codec, tenant)
    for name, (kind, bounce_class, suppressed) in CASES.items():
        message_id, address = targets[name]
        event = by_address[address]
        assert event["type"] == kind, name
        assert event["bounce_class"] == bounce_class, name
        assert event["message_id"] == message_id, name
        assert event["categories"] == ["news"], name
        assert event["custom_args"] == {"campaign": "c1"}, name
        assert (address in suppressions) is suppressed, name
    assert suppressions["arf_abuse@example.org"]["reason"] == "complaint"


async def test_what_is_not_our_return_path_is_refused_at_rcpt(
    inbound: Settings, codec: Codec
) -> None:
    tenant = f"inb-{uuid.uuid4().hex[:6]}"
    message_id = MessageIds(inbound.secret).message_id(tenant, None)
    good = return_path(inbound.secret, DOMAIN, tenant, message_id, "a@example.org")
    assert good is not None
    local = good.partition("@")[0]
    tampered = f"{local[:-1]}{'a' if local[-1] != 'a' else 'b'}@{DOMAIN}"
    for rcpt in (tampered, f"postmaster@{DOMAIN}", f"{local}@elsewhere.example"):
        code, message = await _rcpt_reply(inbound, rcpt)
        assert code == 550, rcpt
        assert message.startswith("5.1.1"), message
    # signed by us, but no such message on record (yet): the sender keeps it and tries again
    code, message = await _rcpt_reply(inbound, good)
    assert code == 451
    assert "not on record" in message


async def test_unreadable_mail_is_dead_lettered_with_its_reason(
    inbound: Settings, codec: Codec
) -> None:
    tenant = f"inb-{uuid.uuid4().hex[:6]}"
    message_id = MessageIds(inbound.secret).message_id(tenant, None)
    address = "reader@example.org"
    await _on_record(inbound, codec, [_delivered(tenant, message_id, address)])
    path = return_path(inbound.secret, DOMAIN, tenant, message_id, address)
    assert path is not None
    raw = fixture("garbage", path, address)
    code, _ = await _send(inbound, path, raw)
    assert code == 250

    async def letters() -> list[Any]:
        found = [
            codec.decode_as(v, "Rejection")
            for v in await read_all(inbound.kafka, inbound.topics.rejections)
        ]
        return [r for r in found if r["tenant"] == tenant]

    [letter] = await eventually(letters, lambda found: len(found) >= 1)
    assert letter["source_topic"] == SOURCE_TOPIC
    assert letter["error_code"] == "inbound.unrecognised"
    assert letter["raw"] == raw
    assert await _events(inbound, codec, tenant) == []


async def test_health_says_ready(inbound: Settings) -> None:
    url = f"http://{inbound.web_host}:{inbound.inbound_web_port}/healthz"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        body = await response.json()
    assert response.status == 200, body
    assert body["ok"] is True


async def test_postwire_inbound_runs_as_the_stack_runs_it(stack: Settings, codec: Codec) -> None:
    """`python -m streams inbound` as `postwire up` starts it (the stack's environment, the
    same data dir and so the same server secret): healthy, and a DSN to it lands on the topic."""
    settings = _with(
        stack, bounce_domain=DOMAIN, inbound_port=free_port(), inbound_web_port=free_port()
    )
    [child] = [p for p in Stack(settings).applications() if p.name == "inbound"]
    child.start(detach=False)
    try:
        url = f"http://{settings.web_host}:{settings.inbound_web_port}/healthz"

        async def status() -> int:
            try:
                async with aiohttp.ClientSession() as session, session.get(url) as response:
                    return response.status
            except aiohttp.ClientError:
                return 0

        assert await eventually(status, lambda s: s == 200, timeout=60) == 200, child.log_tail()
        tenant = f"inb-{uuid.uuid4().hex[:6]}"
        message_id = MessageIds(settings.secret).message_id(tenant, None)
        address = "proc@example.org"
        await _on_record(settings, codec, [_delivered(tenant, message_id, address)])
        path = return_path(settings.secret, DOMAIN, tenant, message_id, address)
        assert path is not None
        code, _ = await _send(
            settings, path, fixture("exchange_recipient_not_found", path, address)
        )
        assert code == 250
        events = await eventually(lambda: _events(settings, codec, tenant), lambda f: len(f) >= 1)
        assert [e["bounce_class"] for e in events] == ["user_unknown"]
    finally:
        child.stop()
    assert not child.running()
    assert child.exit_code() == 0  # SIGTERM is a clean stop


async def test_a_feedback_loop_report_is_traced_by_the_return_path_it_quotes(
    inbound: Settings, codec: Codec
) -> None:
    """Yahoo's and Microsoft's loops send ARF to the address registered with them (fbl@), not
    to the return path: the report's Original-Mail-From (or the enclosed Return-Path) names it."""
    tenant = f"inb-{uuid.uuid4().hex[:6]}"
    message_id = MessageIds(inbound.secret).message_id(tenant, None)
    address = "looped@example.org"
    await _on_record(inbound, codec, [_delivered(tenant, message_id, address)])
    path = return_path(inbound.secret, DOMAIN, tenant, message_id, address)
    assert path is not None
    fbl = f"fbl@{DOMAIN}"
    report = fixture("arf_abuse", path, "redacted@example.net").replace(
        f"To: {path}".encode(), f"To: {fbl}".encode(), 1
    )
    code, _ = await _send(inbound, fbl, report)
    assert code == 250
    [event] = await eventually(lambda: _events(inbound, codec, tenant), lambda f: len(f) >= 1)
    assert event["type"] == "complained"
    assert event["recipient"] == address  # ours, from the return path, not the report's
    assert (await _suppressions(inbound, codec, tenant))[address]["reason"] == "complaint"

    # a report to fbl@ that quotes no return path of ours is kept as a dead letter
    stray = fixture("arf_abuse", "bounces@elsewhere.example", address)
    code, _ = await _send(inbound, fbl, stray)
    assert code == 250

    async def letters() -> list[Any]:
        found = [
            codec.decode_as(v, "Rejection")
            for v in await read_all(inbound.kafka, inbound.topics.rejections)
        ]
        return [r for r in found if r["raw"] == stray]

    [letter] = await eventually(letters, lambda found: len(found) >= 1)
    assert letter["error_code"] == "inbound.feedback_untraced"
    assert letter["tenant"] is None


async def test_mail_to_the_list_unsubscribe_mailto_unsubscribes(
    inbound: Settings, relay: SinkServer, codec: Codec
) -> None:
    """A bulk message's List-Unsubscribe names u<token>@<bounce domain>; mail to it (whatever it
    says) records an ``unsubscribed`` event and an ``unsubscribe`` suppression."""
    tenant = f"inb-{uuid.uuid4().hex[:6]}"
    address = "uma@example.org"
    settings = _with(
        inbound,
        delivery_mode="relay",
        relay_host=relay.host,
        relay_port=relay.port,
        smtp_tls="none",
    )
    deliverer = build_deliverer(
        settings.delivery, wall_clock, Signer(KeyRing(lambda _t, _d: None)), secret=settings.secret
    )
    task = _task(settings, tenant, address) | {"priority": "bulk"}
    try:
        conclusion = await deliverer.attempt(task)  # type: ignore[arg-type]
    finally:
        await deliverer.close()
    assert conclusion.delivered
    [sent] = relay.received
    head = sent.data.split(b"\r\n\r\n", 1)[0].replace(b"\r\n ", b" ")
    [line] = [h for h in head.split(b"\r\n") if h.startswith(b"List-Unsubscribe:")]
    mailto = line.split(b"<mailto:", 1)[1].split(b">", 1)[0].decode()
    local, _, domain = mailto.rpartition("@")
    assert domain == DOMAIN
    assert local.startswith("u")
    assert "uma" not in local
    assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" in head

    code, _ = await _rcpt_reply(settings, f"u{'a' * 40}@{DOMAIN}")
    assert code == 550  # a token nobody issued
    await _on_record(settings, codec, [conclusion.event])
    code, message = await _send(settings, mailto, b"Subject: unsubscribe\r\n\r\nplease\r\n")
    assert code == 250, message
    events = await eventually(lambda: _events(settings, codec, tenant), lambda f: len(f) >= 1)
    [event] = events
    assert event["type"] == "unsubscribed"
    assert event["recipient"] == address
    assert event["message_id"] == task["message_id"]
    suppressions = await _suppressions(settings, codec, tenant)
    assert suppressions[address]["reason"] == "unsubscribe"

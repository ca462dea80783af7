"""The gate over batches: decisions as before, state written once per tenant and partition per
batch, redelivered batches counted once, deferred requests held until due."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from streams.contract.codec import default_codec
from streams.contract.signing import SIGNATURE, sign
from streams.db.directory import DirectoryHolder
from streams.db.tenants import ApiKey, Tenant, api_key_digest
from streams.gate.admission import Limits
from streams.kafka.config import TopicNames
from streams.runtime.records import Consumed
from streams.runtime.state import Store
from streams.settings import Settings
from streams.stages.gate_stage import DEFERRALS, NOT_BEFORE, DeferralStage, GateStage
from tests.unit.gate.helpers import TRUST

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
TOPICS = TopicNames("t")
CODEC = default_codec()


def gate(per_second: int = 1000) -> GateStage:
    holder = DirectoryHolder(Settings().database)
    holder.ready.set()
    for tenant in ("a", "b"):
        holder.current.tenants[tenant] = Tenant(
            tenant, Limits(per_second, 10**6, 10**7), "defer", False
        )
        holder.current.add_key(
            ApiKey(
                f"k{tenant}",
                tenant,
                api_key_digest(f"key-{tenant}"),
                frozenset({"verify", "send"}),
                False,
                True,
                f"key-{tenant}".encode(),
            )
        )
    store = Store("gate", "t-gate-changelog")
    return GateStage(CODEC, TOPICS, holder, store, trust=TRUST, dedup_ttl=3600)


def request(i: int, tenant: str = "a", **extra: Any) -> bytes:
    return CODEC.encode(
        "EmailRequest",
        {
            "request_id": f"{tenant}-{i}",
            "tenant": tenant,
            "operation": "validate",
            "recipients": [{"email": f"u{i}@d{i % 3}.example"}],
            "created_at": NOW,
            **extra,
        },
    )


def signed(value: bytes, tenant: str) -> list[tuple[str, bytes]]:
    return sign(value, tenant=tenant, key_id=f"k{tenant}", api_key=f"key-{tenant}")


def batch(values: list[bytes], partition: int = 0, start: int = 0) -> list[Consumed]:
    """Records as a direct producer signs them (the tenant is in the value; a or b)."""
    out = []
    for i, v in enumerate(values):
        tenant = CODEC.decode_as(v, "EmailRequest")["tenant"] if v[:2] == b"\xc3\x01" else "a"
        out.append(
            Consumed(TOPICS.requests, partition, start + i, tenant.encode(), v, signed(v, tenant))
        )
    return out


async def test_a_batch_writes_each_tenant_window_and_watermark_once() -> None:
    stage = gate()
    step = await stage.process(
        batch([request(i) for i in range(50)] + [request(i, "b") for i in range(50)]), NOW
    )
    assert step.outcomes == {"admitted": 100}
    # verify requests leave one VerifyTask each and nothing else
    assert {o.topic for o in step.outputs} == {TOPICS.verify}
    changes = {o.key: orjson.loads(o.value or b"null") for o in stage.store.changes()}
    assert changes[b"r:a"]["second"][1] == 50
    assert changes[b"r:b"]["second"][1] == 50
    assert changes[b"w:t.requests:0"] == 99
    assert len(changes) == 3  # 100 requests, three changelog records


async def test_limits_hold_inside_one_batch() -> None:
    stage = gate(per_second=10)
    step = await stage.process(batch([request(i) for i in range(15)]), NOW)
    assert step.outcomes == {"admitted": 10, "deferred": 5}
    assert sum(o.topic == TOPICS.deferred for o in step.outputs) == 5


async def test_a_deferred_request_keeps_its_signature_and_verifies_when_it_comes_back() -> None:
    stage = gate(per_second=1)
    records = batch([request(i) for i in range(2)])
    step = await stage.process(records, NOW)
    [deferred] = [o for o in step.outputs if o.topic == TOPICS.deferred]
    assert dict(deferred.headers)[SIGNATURE] == dict(records[1].headers)[SIGNATURE]
    # the deferral stage puts it back on requests with its signature ...
    back = Consumed(TOPICS.deferred, 0, 0, deferred.key, deferred.value, deferred.headers)
    released = await DeferralStage(CODEC, TOPICS).process([back], NOW + timedelta(seconds=5))
    [again] = released.outputs
    assert again.topic == TOPICS.requests
    assert dict(again.headers)[SIGNATURE] == dict(records[1].headers)[SIGNATURE]
    # ... and the gate, a window later, admits it
    returned = Consumed(TOPICS.requests, 0, 2, again.key, again.value, again.headers)
    later = await stage.process([returned], NOW + timedelta(seconds=5))
    assert later.outcomes == {"admitted": 1}


async def test_an_old_schema_record_with_its_key_inside_is_refused_and_kept_without_it() -> None:
    from fastavro import schemaless_writer

    from streams.contract.codec import MAGIC

    v1 = next(v for v in CODEC.schemas.history["EmailRequest"] if v.version == 1)
    buf = io.BytesIO()
    buf.write(MAGIC + v1.fingerprint)
    key = "pw_" + "K" * 43
    old = {
        "request_id": "old-1",
        "tenant": "a",
        "api_key": key,
        "operation": "validate",
        "recipients": [{"email": "u@d.example"}],
        "created_at": NOW,
    }
    schemaless_writer(buf, v1.parsed, old, strict_allow_default=True)
    value = buf.getvalue()
    step = await gate().process(batch([value]), NOW)
    assert step.outcomes == {"rejected": 1}
    [dead] = [CODEC.decode_as(o.value or b"", "Rejection") for o in step.outputs]
    assert dead["error_code"] == "auth.key_in_record"
    assert key.encode() not in dead["raw"]
    # the dead letter keeps the request, re-encoded on the current schema
    assert CODEC.is_current(dead["raw"], "EmailRequest")
    assert CODEC.decode_as(dead["raw"], "EmailRequest")["request_id"] == "old-1"


async def test_unsigned_and_forged_records_are_dead_lettered_among_good_ones() -> None:
    stage = gate()
    good, unsigned, forged = request(1), request(2), request(3)
    records = [
        Consumed(TOPICS.requests, 0, 0, b"a", good, signed(good, "a")),
        Consumed(TOPICS.requests, 0, 1, b"a", unsigned),
        # signed by tenant b's key for tenant a's request
        Consumed(
            TOPICS.requests,
            0,
            2,
            b"a",
            forged,
            sign(forged, tenant="a", key_id="ka", api_key="key-b"),
        ),
    ]
    step = await stage.process(records, NOW)
    assert step.outcomes == {"admitted": 1, "rejected": 2}
    codes = [
        CODEC.decode_as(o.value or b"", "Rejection")["error_code"]
        for o in step.outputs
        if o.topic == TOPICS.rejections
    ]
    assert codes == ["auth.unsigned", "auth.bad_signature"]


async def test_a_redelivered_batch_is_not_counted_again() -> None:
    stage = gate(per_second=10)
    records = batch([request(i) for i in range(15)])
    first = await stage.process(records, NOW)
    stage.store.changes()
    again = await stage.process(records, NOW + timedelta(milliseconds=10))
    assert again.outcomes == first.outcomes  # the same decisions, from the watermark and memos
    assert stage.store.get(0, "r:a")["second"][1] == 10
    assert stage.store.changes() == []  # nothing new to remember


async def test_garbage_is_dead_lettered_and_the_rest_goes_on() -> None:
    stage = gate()
    step = await stage.process(batch([b"junk", request(1)]), NOW)
    assert step.outcomes == {"undecodable": 1, "admitted": 1}
    assert sum(o.topic == TOPICS.rejections for o in step.outputs) == 1


async def test_deferral_holds_a_partition_at_its_first_record_not_yet_due() -> None:
    stage = DeferralStage(CODEC, TOPICS)
    due = str(int(NOW.timestamp() * 1000) - 1).encode()
    later = str(int(NOW.timestamp() * 1000) + 5000).encode()
    records = [
        Consumed(TOPICS.deferred, 0, 10, b"a", b"v1", ((NOT_BEFORE, due), (DEFERRALS, b"1"))),
        Consumed(TOPICS.deferred, 0, 11, b"a", b"v2", ((NOT_BEFORE, later), (DEFERRALS, b"1"))),
        Consumed(TOPICS.deferred, 0, 12, b"a", b"v3", ((NOT_BEFORE, due), (DEFERRALS, b"2"))),
        Consumed(TOPICS.deferred, 1, 4, b"b", b"v4", ((NOT_BEFORE, due), (DEFERRALS, b"1"))),
    ]
    step = await stage.process(records, NOW)
    assert [o.value for o in step.outputs] == [b"v1", b"v4"]
    assert {o.topic for o in step.outputs} == {TOPICS.requests}
    held = step.held[(TOPICS.deferred, 0)]
    assert held.offset == 11
    assert held.until == NOW.timestamp() + 5


def test_batch_stages_are_not_run_record_by_record() -> None:
    # the runner reads `concurrency`: 0 means whole batches (a stage's own knobs are named apart)
    from streams.stages.verify import VerifyStage

    stage = VerifyStage(CODEC, TOPICS, None, None, concurrency=32)  # type: ignore[arg-type]
    assert stage.concurrency == 0
    assert gate().concurrency == 0
    assert DeferralStage(CODEC, TOPICS).concurrency == 0

from __future__ import annotations

from datetime import UTC, datetime

from streams.contract.codec import Codec
from streams.gate.core import RAW_PREFIX, Accept, Reject, admit
from streams.kafka.limits import HEADROOM, RecordLimit, record_size
from streams.kafka.records import SourcePosition

NOW = datetime(2026, 11, 23, tzinfo=UTC)
SRC = SourcePosition("postwire.requests", 3, 1234)


def test_a_valid_request_is_accepted(codec: Codec) -> None:
    raw = codec.encode(
        "EmailRequest",
        {"request_id": "r1", "tenant": "t", "operation": "verify", "created_at": NOW},
    )
    outcome = admit(codec, raw, b"t", SRC, NOW)
    assert isinstance(outcome, Accept)
    assert outcome.request["request_id"] == "r1"


def test_garbage_becomes_a_rejection_with_its_origin(codec: Codec) -> None:
    outcome = admit(codec, b"not avro at all", b"t", SRC, NOW)
    assert isinstance(outcome, Reject)
    record = outcome.record
    assert record["error_code"] == "codec.not_avro"
    assert record["raw"] == b"not avro at all"
    assert (record["source_topic"], record["source_partition"], record["source_offset"]) == (
        "postwire.requests",
        3,
        1234,
    )
    assert record["stage"] == "gate"
    # the rejection itself must be encodable for the dead-letter topic
    assert codec.decode(codec.encode("Rejection", record))[1]["key"] == b"t"


def test_a_tombstone_is_rejected_not_crashed_on(codec: Codec) -> None:
    outcome = admit(codec, None, b"t", SRC, NOW)
    assert isinstance(outcome, Reject)
    assert outcome.record["error_code"] == "codec"
    assert "tombstone" in outcome.record["error"]


def test_a_record_too_large_for_the_flow_is_dead_lettered_with_a_prefix(codec: Codec) -> None:
    limit = RecordLimit(HEADROOM + 2000, "postwire.deliveries")
    fits = codec.encode(
        "EmailRequest",
        {"request_id": "r1", "tenant": "t", "operation": "verify", "created_at": NOW},
    )
    assert isinstance(admit(codec, fits, b"t", SRC, NOW, limit), Accept)
    # too large is refused before decoding: garbage that big must not be quoted whole either
    huge = fits + b"x" * (limit.request_bytes + RAW_PREFIX)
    outcome = admit(codec, huge, b"t", SRC, NOW, limit)
    assert isinstance(outcome, Reject)
    record = outcome.record
    assert record["error_code"] == "limits.record_size"
    assert "postwire.deliveries" in record["error"]
    assert f"at most {limit.request_bytes:,} bytes" in record["error"]
    assert record["raw"] == huge[: limit.request_bytes]
    assert len(record["raw"]) < RAW_PREFIX
    # the dead letter fits where the record came from
    assert record_size(b"t", codec.encode("Rejection", record)) <= limit.max_message_bytes

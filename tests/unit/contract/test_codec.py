from __future__ import annotations

import io
import json
import random
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastavro import schemaless_writer
from fastavro.utils import generate_many

from schemas import SCHEMA_DIR
from streams.contract.codec import HEADER_SIZE, MAGIC, Codec
from streams.contract.registry import RECORD_NAMES, load_schema_set, snapshot_history
from streams.errors import (
    CodecError,
    InvalidRecordError,
    NotAvroError,
    SchemaMismatchError,
    TrailingBytesError,
    TruncatedError,
    UnknownSchemaError,
)

NOW = datetime(2026, 11, 23, 12, 0, 0, 123000, tzinfo=UTC)


def request(**extra: object) -> dict[str, object]:
    base: dict[str, object] = {
        "request_id": "req-1",
        "tenant": "acme",
        "operation": "send",
        "idempotency_key": "order-42",
        "priority": "high",
        "from": {"email": "shop@acme.test", "name": "Acme"},
        "recipients": [
            {"email": "ünïcode@bücher.example", "kind": "to", "substitutions": {"-name-": "Zoë"}},
            {"email": "b@example.org", "kind": "bcc"},
        ],
        "content": {
            "subject": "Hello",
            "text": "Hi -name-",
            "html": "<p>Hi -name-</p>",
            "headers": {"X-Campaign": "c1"},
            "attachments": [{"filename": "a.pdf", "content": b"%PDF\x00\xff"}],
        },
        "categories": ["receipts"],
        "custom_args": {"order": "42"},
        "send_at": NOW,
        "created_at": NOW,
    }
    base.update(extra)
    return base


def test_email_request_round_trip_keeps_every_field(codec: Codec) -> None:
    data = codec.encode("EmailRequest", request())
    assert data[:2] == MAGIC
    name, decoded = codec.decode(data, expected="EmailRequest")
    assert name == "EmailRequest"
    assert decoded["recipients"][0]["email"] == "ünïcode@bücher.example"
    assert decoded["recipients"][1]["kind"] == "bcc"
    assert decoded["content"]["attachments"][0]["content"] == b"%PDF\x00\xff"
    assert decoded["send_at"] == NOW
    assert decoded["created_at"].tzinfo is not None
    assert decoded["priority"] == "high"


@pytest.mark.parametrize("record_name", RECORD_NAMES)
def test_every_schema_round_trips_generated_records(codec: Codec, record_name: str) -> None:
    schema = codec.schemas.current[record_name].parsed
    for record in generate_many(schema, 50):
        name, decoded = codec.decode(codec.encode(record_name, record))
        assert name == record_name
        # a second encode of the decoded record must give the same bytes
        assert codec.encode(record_name, decoded) == codec.encode(record_name, record)


def test_fingerprints_are_distinct_and_in_the_header(codec: Codec) -> None:
    prints = {v.fingerprint for v in codec.schemas.current.values()}
    assert len(prints) == len(RECORD_NAMES)
    data = codec.encode("EmailRequest", request())
    assert data[2:HEADER_SIZE] == codec.schemas.current["EmailRequest"].fingerprint


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", TruncatedError),
        (b"\xc3", TruncatedError),
        (b"\xc3\x01\x00\x01", TruncatedError),
        (b'{"json": true}', NotAvroError),
        (b"\x00\x00\x00\x00\x01hello", NotAvroError),
        (MAGIC + b"\x01\x02\x03\x04\x05\x06\x07\x08body", UnknownSchemaError),
    ],
)
def test_bad_headers_raise_typed_errors(codec: Codec, data: bytes, error: type[CodecError]) -> None:
    with pytest.raises(error):
        codec.decode(data)


def test_truncated_body_is_a_truncated_error(codec: Codec) -> None:
    data = codec.encode("EmailRequest", request())
    with pytest.raises(TruncatedError):
        codec.decode(data[: len(data) // 2])


def test_trailing_bytes_are_rejected(codec: Codec) -> None:
    data = codec.encode("EmailRequest", request())
    with pytest.raises(TrailingBytesError):
        codec.decode(data + b"\x00")


def test_wrong_record_type_for_the_topic(codec: Codec) -> None:
    event = {"event_id": "e", "tenant": "t", "type": "delivered", "occurred_at": NOW}
    with pytest.raises(SchemaMismatchError, match="expected EmailRequest, got DeliveryEvent"):
        codec.decode(codec.encode("DeliveryEvent", event), expected="EmailRequest")


@pytest.mark.parametrize(
    "bad",
    [
        {"tenant": "t", "operation": "send", "created_at": NOW},  # no request_id
        {"request_id": 1, "tenant": "t", "operation": "send", "created_at": NOW},
        {"request_id": "r", "tenant": "t", "operation": "explode", "created_at": NOW},
        {"request_id": "r", "tenant": "t", "operation": "send", "created_at": NOW, "bogus": 1},
    ],
)
def test_encoding_a_record_that_does_not_fit_is_typed(codec: Codec, bad: dict[str, object]) -> None:
    with pytest.raises(InvalidRecordError):
        codec.encode("EmailRequest", bad)


def test_unknown_record_name(codec: Codec) -> None:
    with pytest.raises(InvalidRecordError, match="no schema named"):
        codec.encode("Nope", {})


def test_mutated_input_only_ever_raises_codec_errors(codec: Codec) -> None:
    rng = random.Random(7)
    good = codec.encode("EmailRequest", request())
    outcomes: dict[str, int] = {}
    for i in range(5000):
        data = bytearray(good)
        if i % 3 == 0:
            data = data[: rng.randrange(len(data))]
        elif i % 3 == 1:
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(HEADER_SIZE, len(data))] = rng.randrange(256)
        else:
            data = data[:HEADER_SIZE] + bytearray(rng.randbytes(rng.randrange(80)))
        try:
            codec.decode(bytes(data))
            outcomes["ok"] = outcomes.get("ok", 0) + 1
        except CodecError as exc:
            outcomes[type(exc).__name__] = outcomes.get(type(exc).__name__, 0) + 1
    # the mutations must actually exercise the error paths
    assert outcomes.get("TruncatedError", 0) > 100
    assert outcomes.get("InvalidRecordError", 0) > 100


def test_records_written_with_an_older_version_decode_with_defaults(tmp_path: Path) -> None:
    schema_dir = tmp_path / "schemas"
    shutil.copytree(SCHEMA_DIR, schema_dir, ignore=shutil.ignore_patterns("__pycache__"))
    old = Codec(load_schema_set(schema_dir))
    old_bytes = old.encode("EmailRequest", request())

    path = schema_dir / "EmailRequest.avsc"
    schema = json.loads(path.read_text())
    schema["fields"].append({"name": "campaign", "type": "string", "default": "none"})
    path.write_text(json.dumps(schema))
    released = len(list((schema_dir / "history" / "EmailRequest").glob("v*.avsc")))
    assert [p.name for p in snapshot_history(schema_dir)] == [f"v{released + 1}.avsc"]

    new = Codec(load_schema_set(schema_dir))
    name, decoded = new.decode(old_bytes)
    assert name == "EmailRequest"
    assert decoded["campaign"] == "none"
    assert decoded["request_id"] == "req-1"
    # new writers use the new fingerprint, which the old codec does not know
    with pytest.raises(UnknownSchemaError):
        old.decode(new.encode("EmailRequest", request(campaign="black-friday")))


def _v1_request(codec: Codec, api_key: str | None) -> bytes:
    """An EmailRequest as a producer of schema v1 (which had ``api_key``) wrote it."""
    v1 = next(v for v in codec.schemas.history["EmailRequest"] if v.version == 1)
    buf = io.BytesIO()
    buf.write(MAGIC + v1.fingerprint)
    record = {**request(), "api_key": api_key}
    schemaless_writer(buf, v1.parsed, record, strict_allow_default=True)
    return buf.getvalue()


def test_a_v1_request_reads_without_its_key_and_re_encodes_without_it(codec: Codec) -> None:
    key = "pw_" + "Z" * 43
    old = _v1_request(codec, key)
    assert key.encode() in old
    assert not codec.is_current(old, "EmailRequest")
    decoded = codec.decode_as(old, "EmailRequest")
    assert "api_key" not in decoded
    assert decoded["request_id"] == "req-1"
    # what the writer wrote is still there to be seen (the gate refuses a key in a record)
    assert codec.decode_written(old)["api_key"] == key
    again = codec.current_bytes(old)
    assert key.encode() not in again
    assert codec.is_current(again, "EmailRequest")
    assert codec.decode_as(again, "EmailRequest") == decoded


def test_current_bytes_leaves_current_and_undecodable_bytes_alone(codec: Codec) -> None:
    current = codec.encode("EmailRequest", request())
    assert codec.current_bytes(current) is current
    assert codec.current_bytes(b"junk") == b"junk"
    assert codec.current_bytes(current[:20]) == current[:20]

"""Dead letters keep the input without secrets: re-encoded when an old schema wrote it, and every
API-key-shaped token overwritten, in the raw bytes, the record key and the error."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from fastavro import schemaless_writer

from streams.contract.codec import MAGIC, default_codec
from streams.errors import StageCrashError
from streams.runtime.deadletter import dead_letter
from streams.runtime.records import Consumed

CODEC = default_codec()
NOW = datetime(2026, 12, 1, tzinfo=UTC)
KEY = "pw_" + "q" * 43


def _v1_with_key() -> bytes:
    v1 = next(v for v in CODEC.schemas.history["EmailRequest"] if v.version == 1)
    buf = io.BytesIO()
    buf.write(MAGIC + v1.fingerprint)
    record = {
        "request_id": "r1",
        "tenant": "acme",
        "api_key": KEY,
        "operation": "validate",
        "recipients": [{"email": "u@d.example"}],
        "created_at": NOW,
    }
    schemaless_writer(buf, v1.parsed, record, strict_allow_default=True)
    return buf.getvalue()


def test_a_crash_dead_letter_of_an_old_request_is_re_encoded_without_its_key() -> None:
    record = Consumed("t.requests", 0, 5, b"acme", _v1_with_key())
    out = dead_letter(CODEC, "t.rejections", "gate", record, ValueError(f"boom {KEY}"), NOW)
    dead = CODEC.decode_as(out.value or b"", "Rejection")
    assert dead["error_code"] == "stage.crashed"
    assert KEY not in dead["error"]
    assert "pw_[redacted]" in dead["error"]
    assert KEY.encode() not in dead["raw"]
    assert CODEC.decode_as(dead["raw"], "EmailRequest")["request_id"] == "r1"


def test_undecodable_bytes_keep_their_shape_with_keys_overwritten() -> None:
    raw = b"garbage " + KEY.encode() + b" more"
    record = Consumed("t.requests", 0, 6, KEY.encode(), raw)
    out = dead_letter(CODEC, "t.rejections", "gate", record, StageCrashError("x"), NOW)
    dead = CODEC.decode_as(out.value or b"", "Rejection")
    assert dead["raw"] == b"garbage pw_" + b"*" * 43 + b" more"
    assert dead["key"] == out.key == b"pw_" + b"*" * 43

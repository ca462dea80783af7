"""The one error hierarchy for postwire.

Library errors (fastavro, aiokafka, asyncpg, subprocess) are converted at the edge with
``raise Ours(...) from exc`` so callers only ever catch these. ``retriable`` tells a caller
whether the same operation may succeed later (a broker not up yet) or never will (garbage bytes).
``code`` is a short stable identifier that lands in dead-letter records and metrics labels.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "CodecError",
    "ConfigError",
    "InvalidRecordError",
    "MigrationError",
    "NotAvroError",
    "PostwireError",
    "SchemaMismatchError",
    "SinkUnavailableError",
    "StackError",
    "TrailingBytesError",
    "TruncatedError",
    "UnknownSchemaError",
]


class PostwireError(Exception):
    """Root of every error postwire raises on purpose."""

    code: str = "error"
    retriable: bool = False


class ConfigError(PostwireError):
    code = "config"


class StackError(PostwireError):
    """The embedded Kafka/PostgreSQL stack could not be fetched, started or stopped."""

    code = "stack"


class AuthError(PostwireError):
    """The request's tenant or API key is not accepted; ``code`` says which check failed."""

    code = "auth"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class MigrationError(PostwireError):
    code = "migration"


class SinkUnavailableError(PostwireError):
    """The sink's database refused or dropped the write; the batch is kept and retried."""

    code = "sink.unavailable"
    retriable = True

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CodecError(PostwireError):
    """A value could not be encoded or decoded with the Avro contract."""

    code = "codec"


class NotAvroError(CodecError):
    """The bytes do not start with the Avro single-object marker (0xC3 0x01)."""

    code = "codec.not_avro"


class TruncatedError(CodecError):
    """The bytes end before the header or the record body is complete."""

    code = "codec.truncated"


class UnknownSchemaError(CodecError):
    """The header names a schema fingerprint this build does not know."""

    code = "codec.unknown_schema"


class SchemaMismatchError(CodecError):
    """The record is valid Avro but of another type than the topic carries."""

    code = "codec.wrong_type"


class TrailingBytesError(CodecError):
    """The record decoded but bytes were left over: corrupt or concatenated input."""

    code = "codec.trailing_bytes"


class InvalidRecordError(CodecError):
    """The body does not decode with its writer schema, or a record to encode does not fit."""

    code = "codec.invalid"

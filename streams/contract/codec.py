"""Avro single-object encoding for every topic value.

Layout (Avro spec, "Single-object encoding"): ``C3 01`` + 8-byte little-endian CRC-64-AVRO
fingerprint of the writer schema's Parsing Canonical Form + the Avro binary body. The fingerprint
lets a reader pick the writer schema among every version it knows and resolve it to the current one.

Decoding never raises anything but a :class:`~streams.errors.CodecError` subclass, so a stage can
dead-letter garbage without knowing fastavro's exception zoo.
"""

from __future__ import annotations

from collections.abc import Mapping
from io import BytesIO
from typing import Any, Literal, overload

from fastavro import schemaless_reader, schemaless_writer

from streams.contract.records import (
    DeliveryEvent,
    DeliveryTask,
    EmailRequest,
    Rejection,
    Suppression,
    VerificationResult,
    VerifyTask,
    WebhookBatch,
)
from streams.contract.registry import SchemaSet, SchemaVersion, load_schema_set
from streams.errors import (
    CodecError,
    InvalidRecordError,
    NotAvroError,
    SchemaMismatchError,
    TrailingBytesError,
    TruncatedError,
    UnknownSchemaError,
)

__all__ = ["HEADER_SIZE", "MAGIC", "Codec", "Record", "default_codec"]

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8

Record = dict[str, Any]


class Codec:
    def __init__(self, schemas: SchemaSet | None = None) -> None:
        self.schemas = schemas if schemas is not None else load_schema_set()
        self._current = self.schemas.current
        self._headers = {name: MAGIC + v.fingerprint for name, v in self._current.items()}
        self._writers: dict[bytes, SchemaVersion] = {}
        for version in self.schemas.all_versions():
            self._writers.setdefault(version.fingerprint, version)

    def encode(self, record_name: str, record: Mapping[str, Any]) -> bytes:
        try:
            schema = self._current[record_name]
        except KeyError:
            raise InvalidRecordError(f"no schema named {record_name!r}") from None
        buf = BytesIO()
        buf.write(self._headers[record_name])
        try:
            schemaless_writer(buf, schema.parsed, record, strict_allow_default=True)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise InvalidRecordError(f"{record_name} does not fit its schema: {exc}") from exc
        return buf.getvalue()

    def schema_of(self, data: bytes) -> SchemaVersion:
        """The writer schema named by the header, without decoding the body."""
        if len(data) < HEADER_SIZE:
            if data[: len(MAGIC)] != MAGIC[: len(data)]:
                raise NotAvroError("value does not start with the Avro single-object marker C3 01")
            raise TruncatedError(f"value is {len(data)} bytes, shorter than the 10-byte header")
        if data[:2] != MAGIC:
            raise NotAvroError(
                f"value starts with {data[:2].hex()}, not the Avro single-object marker c301"
            )
        fp = bytes(data[2:HEADER_SIZE])
        try:
            return self._writers[fp]
        except KeyError:
            raise UnknownSchemaError(f"unknown writer schema fingerprint {fp.hex()}") from None

    def decode(self, data: bytes, expected: str | None = None) -> tuple[str, Record]:
        """Decode ``data``; with ``expected``, refuse records of any other type."""
        writer = self.schema_of(data)
        if expected is not None and writer.record != expected:
            raise SchemaMismatchError(f"expected {expected}, got {writer.record}")
        current = self._current[writer.record]
        buf = BytesIO(data)
        buf.seek(HEADER_SIZE)
        try:
            if writer is current:
                record = schemaless_reader(buf, current.parsed, None)
            else:
                record = schemaless_reader(buf, writer.parsed, current.parsed)
        except (EOFError, StopIteration) as exc:
            raise TruncatedError(f"{writer.record} body ends early") from exc
        except Exception as exc:  # fastavro raises many types on garbage; classify all of them
            raise InvalidRecordError(
                f"{writer.record} body is not valid Avro: {type(exc).__name__}: {exc}"
            ) from exc
        if buf.tell() != len(data):
            raise TrailingBytesError(
                f"{writer.record} decoded with {len(data) - buf.tell()} bytes left over"
            )
        if not isinstance(record, dict):
            raise InvalidRecordError(f"{writer.record} did not decode to a record")
        return writer.record, record

    def is_current(self, data: bytes, record_name: str) -> bool:
        """Whether ``data`` was written with the current schema of ``record_name`` (its header
        says so; the body is not looked at)."""
        return data[:HEADER_SIZE] == self._headers[record_name]

    def current_bytes(self, data: bytes) -> bytes:
        """``data`` re-encoded with the current schema when an older one wrote it, so what the
        current schema dropped (EmailRequest v1's api_key) goes; unchanged when it is current
        or does not decode (a dead letter keeps what it can)."""
        try:
            writer = self.schema_of(data)
            if data[:HEADER_SIZE] == self._headers[writer.record]:
                return data
            name, record = self.decode(data)
            return self.encode(name, record)
        except CodecError:
            return data

    def decode_written(self, data: bytes) -> Record:
        """The record as its writer wrote it, not resolved to the current schema: what an old
        version carried that the current one dropped (EmailRequest v1's api_key)."""
        writer = self.schema_of(data)
        buf = BytesIO(data)
        buf.seek(HEADER_SIZE)
        try:
            record = schemaless_reader(buf, writer.parsed, None)
        except Exception as exc:  # fastavro raises many types on garbage; classify all of them
            raise InvalidRecordError(f"{writer.record} body is not valid Avro: {exc}") from exc
        if not isinstance(record, dict):
            raise InvalidRecordError(f"{writer.record} did not decode to a record")
        return record

    @overload
    def decode_as(self, data: bytes, expected: Literal["EmailRequest"]) -> EmailRequest: ...
    @overload
    def decode_as(self, data: bytes, expected: Literal["VerifyTask"]) -> VerifyTask: ...
    @overload
    def decode_as(
        self, data: bytes, expected: Literal["VerificationResult"]
    ) -> VerificationResult: ...
    @overload
    def decode_as(self, data: bytes, expected: Literal["DeliveryTask"]) -> DeliveryTask: ...
    @overload
    def decode_as(self, data: bytes, expected: Literal["DeliveryEvent"]) -> DeliveryEvent: ...
    @overload
    def decode_as(self, data: bytes, expected: Literal["Rejection"]) -> Rejection: ...
    @overload
    def decode_as(self, data: bytes, expected: Literal["Suppression"]) -> Suppression: ...
    @overload
    def decode_as(self, data: bytes, expected: Literal["WebhookBatch"]) -> WebhookBatch: ...
    def decode_as(self, data: bytes, expected: str) -> Any:
        """``decode`` for one expected record type, typed as that record (mypy checks fields)."""
        return self.decode(data, expected)[1]


_default: Codec | None = None


def default_codec() -> Codec:
    """The process-wide codec: schemas are parsed once per process."""
    global _default  # noqa: PLW0603 - a lazily built module singleton
    if _default is None:
        _default = Codec()
    return _default

"""Gate (foundation version): decode every request with the contract; good ones pass on
untouched to ``accepted``, anything undecodable goes to ``rejections`` with its reason.

The raw bytes are forwarded, never re-encoded: a record is decoded once here and once by
whoever needs its fields downstream.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from streams.codec import Codec, Record
from streams.deadletter import SourcePosition, rejection
from streams.errors import CodecError
from streams.settings import Settings

if TYPE_CHECKING:
    import faust

__all__ = ["Accept", "Reject", "admit", "register"]

STAGE = "gate"


@dataclass(frozen=True)
class Accept:
    request: Record


@dataclass(frozen=True)
class Reject:
    record: Record


def admit(
    codec: Codec, raw: bytes | None, key: bytes | None, source: SourcePosition, now: datetime
) -> Accept | Reject:
    try:
        if raw is None:
            raise CodecError("record has no value (a tombstone is not a request)")
        _, request = codec.decode(raw, expected="EmailRequest")
    except CodecError as exc:
        return Reject(rejection(source, STAGE, exc, key, raw or b"", now))
    return Accept(request)


def register(app: faust.App, settings: Settings, codec: Codec) -> Any:
    topics = settings.topics
    source = app.topic(topics.requests, key_serializer="raw", value_serializer="raw")
    accepted = app.topic(topics.accepted, key_serializer="raw", value_serializer="raw")
    rejected = app.topic(topics.rejections, key_serializer="raw", value_serializer="raw")

    @app.agent(source, name=f"{settings.app_id}.gate")
    async def gate(stream: Any) -> None:
        async for event in stream.events():
            msg = event.message
            position = SourcePosition(msg.topic, msg.partition, msg.offset)
            outcome = admit(codec, event.value, event.key, position, datetime.now(UTC))
            if isinstance(outcome, Accept):
                await accepted.send(key=event.key, value=event.value)
            else:
                await rejected.send(key=event.key, value=codec.encode("Rejection", outcome.record))

    return gate

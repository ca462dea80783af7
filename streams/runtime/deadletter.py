"""Turn a record a stage could not handle into the Rejection it sends to the dead-letter topic."""

from __future__ import annotations

from datetime import datetime

from streams.contract.build import rejection
from streams.contract.codec import Codec
from streams.errors import PostwireError, StageCrashError
from streams.runtime.records import Consumed, Out

__all__ = ["dead_letter"]


def dead_letter(
    codec: Codec, topic: str, stage: str, record: Consumed, error: Exception, now: datetime
) -> Out:
    """The Rejection record for a consumed record, ready to produce to ``topic``. An error that
    is not one of ours (a bug) is reported as ``stage.crashed`` with its type and message. The
    raw bytes are kept without secrets: re-encoded if an old schema wrote them, key-shaped
    tokens overwritten (``rejection``)."""
    ours = (
        error
        if isinstance(error, PostwireError)
        else StageCrashError(f"{type(error).__name__}: {error}")
    )
    raw = codec.current_bytes(record.value or b"")
    dead = rejection(record.position, stage, ours, record.key, raw, now)
    return Out(topic, dead["key"], codec.encode("Rejection", dead))

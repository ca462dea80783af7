"""The one clock type: a stage, a service or a test passes time in; nothing reads it on its own."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

__all__ = ["Clock", "wall_clock"]

Clock = Callable[[], datetime]


def wall_clock() -> datetime:
    return datetime.now(UTC)

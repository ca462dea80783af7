"""Query-string parameters of the read endpoints: limits, cursors and times. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from streams.errors import IngressValidationError

__all__ = ["cursor", "limit", "offset", "since"]


def _bad(field: str, message: str) -> IngressValidationError:
    return IngressValidationError([(field, message)])


def limit(query: Mapping[str, str], default: int = 100, maximum: int = 1000) -> int:
    raw = query.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise _bad("limit", f"must be a whole number from 1 to {maximum}")
    return int(raw)


def offset(query: Mapping[str, str]) -> int:
    raw = query.get("offset", "0")
    if not raw.isdigit():
        raise _bad("offset", "must be a whole number, 0 or more")
    return int(raw)


def cursor(query: Mapping[str, str]) -> int | None:
    """The ``cursor`` a previous page returned as ``next_cursor``."""
    raw = query.get("cursor")
    if raw is None:
        return None
    if not raw.isdigit():
        raise _bad("cursor", "must be the next_cursor of a previous page")
    return int(raw)


def since(query: Mapping[str, str]) -> datetime | None:
    """``since``: ISO 8601 (UTC when it has no zone) or UNIX seconds."""
    raw = query.get("since")
    if raw is None:
        return None
    try:
        if raw.replace(".", "", 1).isdigit():
            return datetime.fromtimestamp(float(raw), UTC)
        parsed = datetime.fromisoformat(raw)
    except (ValueError, OverflowError, OSError) as exc:
        raise _bad("since", "must be an ISO 8601 time or UNIX seconds") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)

"""What the last event about one recipient of a message said of the mail itself: its categories,
custom args and suppression group, which SendGrid repeats on every later event about it (a late
bounce, an open, a click). Read from the sinks' ``events`` table; the tenant is always named."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

__all__ = ["Labels", "labels", "labels_of"]

_LAST_EVENT: Final = (
    "SELECT detail FROM events WHERE message_id = $1 AND recipient = $2 AND tenant_id = $3"
    # the deliver stage's events carry the mail's labels; an open or a click recorded without
    # them (its lookup timed out) must not hide them from later ones
    " AND type IN ('delivered', 'deferred', 'bounced', 'dropped', 'failed')"
    " ORDER BY occurred_at DESC LIMIT 1"
)


@dataclass(frozen=True)
class Labels:
    categories: tuple[str, ...] = ()
    custom_args: Mapping[str, str] = field(default_factory=dict)
    asm_group_id: int | None = None


def _strings(value: object) -> Mapping[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def labels(detail: object) -> Labels:
    """The labels in an events row's ``detail`` (JSON); none when it has none."""
    found = orjson.loads(detail) if isinstance(detail, str | bytes) else None
    if not isinstance(found, dict):
        return Labels()
    categories = found.get("categories")
    group = found.get("asm_group_id")
    return Labels(
        tuple(str(c) for c in categories) if isinstance(categories, list) else (),
        _strings(found.get("custom_args")),
        group if isinstance(group, int) and not isinstance(group, bool) else None,
    )


async def labels_of(conn: Any, tenant: str, message_id: str, recipient: str) -> Labels:
    """The labels of the last event about ``recipient`` of ``message_id`` of ``tenant``."""
    return labels(await conn.fetchval(_LAST_EVENT, message_id, recipient, tenant))

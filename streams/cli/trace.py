"""`postwire trace <message id>`: a message's path through the pipeline from what PostgreSQL
holds (the request, every event, when each row landed), with the time spent in each hop.

Each hop is a point in time the pipeline recorded: the request was made, the gate let it in
(`processed`), every attempt (`deferred` with the receiver's reply, `delivered`, `bounced`),
and when each event's row reached PostgreSQL. The gaps between them are where the time went:
a long wait before `processed` is the gate (or a deferral), between attempts the retry ladder,
between an event and its row the sinks.

With tracing on (``POSTWIRE_TRACING_ENDPOINT``) the same path is a trace whose spans carry the
message id as ``postwire.message_id``: the command says so, with a Jaeger search for it when
``POSTWIRE_TRACING_UI`` names the UI."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlencode

import orjson
import typer
from rich.table import Table

from streams.cli.common import fail, out, run, settings, with_db
from streams.obs.tracing import MESSAGE_ID

__all__ = ["Hop", "hops", "jaeger_search", "trace", "traces_hint"]


@dataclass(frozen=True)
class Hop:
    at: datetime
    what: str
    recipient: str
    detail: str


def _detail(reason: str | None, detail: dict[str, Any]) -> str:
    smtp = detail.get("smtp") or {}
    message = str(smtp.get("message") or "")
    enhanced = smtp.get("enhanced_code")
    if enhanced and message.startswith(str(enhanced)):
        enhanced = None  # the text repeats it, as many servers write their replies
    reply = " ".join(str(part) for part in (smtp.get("code"), enhanced, message) if part)
    attempt = detail.get("attempt")
    parts = [
        f"attempt {attempt}" if attempt else "",
        reason or "",
        reply,
    ]
    return "; ".join(p for p in parts if p)


def hops(requests: list[dict[str, Any]], events: list[dict[str, Any]]) -> list[Hop]:
    """The hops of a message (pure): its requests' creation, then every event and the landing
    of its row, in time order."""
    found = [Hop(r["created_at"], "request", "", r["operation"]) for r in requests]
    for e in events:
        detail = e["detail"] if isinstance(e["detail"], dict) else orjson.loads(e["detail"])
        recipient = e["recipient"] or ""
        found.append(Hop(e["occurred_at"], e["type"], recipient, _detail(e["reason"], detail)))
        if e.get("landed_at") is not None:
            found.append(Hop(e["landed_at"], f"{e['type']} row", recipient, "in PostgreSQL"))
    return sorted(found, key=lambda h: h.at)


def jaeger_search(ui: str, service: str, message_id: str) -> str:
    """Jaeger's search page for the spans of ``message_id`` (pure)."""
    query = urlencode({"service": service, "tags": orjson.dumps({MESSAGE_ID: message_id})})
    return f"{ui.rstrip('/')}/search?{query}"


def traces_hint(
    endpoint: str | None, ui: str | None, service_prefix: str, message_id: str
) -> str | None:
    """Where the message's spans are, when tracing is on (pure); None when it is off."""
    if not endpoint:
        return None
    where = f"tag {MESSAGE_ID}={message_id}"
    if ui:
        where += f": {jaeger_search(ui, f'{service_prefix}-api', message_id)}"
    return f"traces (exported to {endpoint}): search the spans by {where}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms" if seconds < 10 else f"{seconds:,.1f} s"


async def _load(conn: Any, tenant: str, message_id: str) -> list[Hop]:
    prefix = message_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + ".%"
    events = await conn.fetch(
        "SELECT type, request_id, recipient, reason, detail, occurred_at, landed_at FROM events"
        " WHERE tenant_id = $1 AND (message_id = $2 OR message_id LIKE $3 OR request_id = $2)"
        " ORDER BY occurred_at",
        tenant,
        message_id,
        prefix,
    )
    request_ids = sorted({e["request_id"] for e in events if e["request_id"]} | {message_id})
    requests = await conn.fetch(
        "SELECT operation, created_at FROM requests WHERE tenant_id = $1"
        " AND request_id = ANY($2::text[])",
        tenant,
        request_ids,
    )
    return hops([dict(r) for r in requests], [dict(e) for e in events])


def trace(
    message_id: Annotated[str, typer.Argument(help="The X-Message-Id the API answered.")],
    tenant: Annotated[str, typer.Option(help="The tenant that sent it.")],
) -> None:
    """A message's timeline: each hop and the time spent since the one before."""

    async def load(conn: Any) -> list[Hop]:
        return await _load(conn, tenant, message_id)

    found = run(with_db(load))
    if not found:
        raise fail(f"no message {message_id} of tenant {tenant} in PostgreSQL (yet)")
    start = found[0].at
    grid = Table("since request", "+", "hop", "recipient", "detail", title=message_id)
    previous = start
    for hop in found:
        grid.add_row(
            _ms((hop.at - start).total_seconds()),
            _ms((hop.at - previous).total_seconds()),
            hop.what,
            hop.recipient,
            hop.detail,
        )
        previous = hop.at
    out.print(grid)
    current = settings()
    hint = traces_hint(
        current.tracing_endpoint, current.tracing_ui, current.tracing_service_prefix, message_id
    )
    if hint:
        out.print(hint, markup=False, highlight=False)

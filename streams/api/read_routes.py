"""Message status, the event feed and the tracking webhook."""

from __future__ import annotations

from aiohttp import web

from streams.api import params, queries
from streams.api.context import Api, Caller, json_body, problem, reply
from streams.api.tracking import TRACK_TYPES, translate_webhook
from streams.contract.codec import default_codec

__all__ = ["event_feed", "message_status", "tracking_webhook"]

EVENT_TYPES = default_codec().schemas.symbols("DeliveryEvent", "type")


async def message_status(api: Api, request: web.Request, caller: Caller) -> web.StreamResponse:
    """Latest state and timeline per recipient; an X-Message-Id covers all personalizations."""
    message_id = request.match_info["message_id"]
    async with api.db.acquire() as conn:
        found = await queries.message_timeline(conn, caller.tenant, message_id)
    if found is None:
        # also the answer for another tenant's message: its existence is not ours to reveal
        return problem(404, ("message_id", "no message with this id yet"))
    return reply(found)


async def event_feed(api: Api, request: web.Request, caller: Caller) -> web.StreamResponse:
    """Events in the order they landed. Pass ``next_cursor`` back as ``cursor`` to get every
    later event exactly once; ``since`` filters by when events occurred."""
    limit = params.limit(request.query)
    after = params.cursor(request.query)
    since = params.since(request.query)
    types = [t for t in request.query.get("type", "").split(",") if t]
    unknown = sorted(set(types) - set(EVENT_TYPES))
    if unknown:
        return problem(400, ("type", f"unknown event type(s): {', '.join(unknown)}"))
    async with api.db.acquire() as conn:
        events, last = await queries.event_page(
            conn, caller.tenant, after_seq=after, since=since, types=types, limit=limit
        )
    return reply(
        {
            "events": events,
            "next_cursor": None if last is None else str(last),
            "has_more": len(events) == limit,
        }
    )


async def tracking_webhook(api: Api, request: web.Request, caller: Caller) -> web.StreamResponse:
    """Opens, clicks, complaints and unsubscribes reported by a tracker or a provider, about
    the caller's own messages only. A batch of which some events are refused records the rest
    (202, the refused ones in ``errors``, so a provider does not retry the batch forever); one
    of which none is accepted is a 400 and records nothing."""
    hook = translate_webhook(
        await json_body(request), tenant=caller.tenant, ids=api.ids, now=api.clock()
    )
    if hook.unverified:
        async with api.db.acquire() as conn:
            hook.resolve(await queries.own_messages(conn, caller.tenant, hook.message_ids()))
    refused = sorted(hook.refused, key=lambda p: int(p[0].partition(".")[0]))
    if not hook.accepted:
        return problem(400, *refused)
    await api.publish_requests(caller, hook.accepted)
    body: dict[str, object] = {
        "accepted": len(hook.accepted),
        "types": sorted(set(TRACK_TYPES.values())),
    }
    if refused:
        body["errors"] = [{"field": f, "message": m, "help": None} for f, m in refused]
    return reply(body, 202)

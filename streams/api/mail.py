"""``POST /v3/mail/send`` (SendGrid v3) onto ``postwire.requests``: 202 means Kafka (acks=all)
has the request, from there the pipeline owns it; 200 the same for a sandbox send, which the
pipeline records and never delivers."""

from __future__ import annotations

from aiohttp import web

from streams.api.asm_routes import group_refused
from streams.api.context import Api, Caller, json_body
from streams.api.sender_routes import sender_refused
from streams.api.sendgrid import translate
from streams.errors import IngressValidationError

__all__ = ["MAX_IDEMPOTENCY_KEY", "idempotency_key", "mail_send"]

MAX_IDEMPOTENCY_KEY = 255


def idempotency_key(request: web.Request) -> str | None:
    """The request's Idempotency-Key; IngressValidationError (a 400) when it is malformed."""
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
        raise IngressValidationError([("Idempotency-Key", "must be 1 to 255 characters")])
    return key


async def mail_send(api: Api, request: web.Request, caller: Caller) -> web.StreamResponse:
    key = idempotency_key(request)
    body = await json_body(request)
    # keyed by the server secret: a retry gets the same id, no other tenant can compute it
    message_id = api.ids.message_id(caller.tenant, key)
    priority = request.headers.get("X-Postwire-Priority", api.settings.api_priority)
    records = translate(
        body,
        tenant=caller.tenant,
        message_id=message_id,
        idempotency_key=key,
        priority=priority.lower(),
        now=api.clock(),
    )
    sender = records[0]["from"] if records else None
    refused = await sender_refused(api, caller.tenant, sender["email"]) if sender else None
    if refused is not None:
        return refused
    group = records[0].get("asm_group_id") if records else None
    if group is not None and (refused := await group_refused(api, caller.tenant, group)):
        return refused
    await api.publish_requests(caller, records)
    if records[0]["sandbox"]:
        # SendGrid's answer to a sandbox send: 200 with an empty body; the gate records it
        # (processed, then dropped with reason sandbox per recipient) and queues nothing
        return web.Response(status=200, headers={"X-Message-Id": message_id})
    return web.Response(status=202, headers={"X-Message-Id": message_id})

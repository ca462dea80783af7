"""SendGrid's event webhook settings, so SendGrid's own clients configure postwire unchanged:
``GET/PATCH /v3/user/webhooks/event/settings`` (enabled, url, the event-type booleans),
``GET/PATCH /v3/user/webhooks/event/settings/signed`` (signing, and its public key) and
``POST /v3/user/webhooks/event/test``. Each acts on the caller's own endpoint only."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from streams.api.check import Check
from streams.api.context import Api, Caller, json_body, problem, reply
from streams.db.webhooks import get_endpoint, update_endpoint
from streams.webhooks.endpoints import post_sample, set_signing, settings_view
from streams.webhooks.mapping import SETTING_NAMES

__all__ = [
    "check_url",
    "get_settings",
    "get_signed",
    "patch_settings",
    "patch_signed",
    "send_test",
]

MAX_URL = 2048


def check_url(check: Check, value: Any, field: str = "url") -> str | None:
    url = check.text(value, field)
    if url is None or url == "":
        return url
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:  # a malformed IPv6 host, say
        host = None
    if host is None or parts.scheme not in ("http", "https") or len(url) > MAX_URL:
        check.fail(field, "The url must be an http or https URL with a host.")
        return None
    return url


def _flag(check: Check, root: dict[str, Any], name: str) -> bool | None:
    value = root.get(name)
    if value is not None and not isinstance(value, bool):
        check.fail(name, f"The {name} parameter must be a boolean.")
        return None
    return value


async def get_settings(api: Api, request: web.Request, caller: Caller) -> web.StreamResponse:
    async with api.db.acquire() as conn:
        row = await get_endpoint(conn, caller.tenant)
    return reply(settings_view(row))


async def patch_settings(api: Api, request: web.Request, caller: Caller) -> web.StreamResponse:
    check = Check()
    root = check.obj(await json_body(request), "body", required=True) or {}
    enabled = _flag(check, root, "enabled")
    url = check_url(check, root.get("url"))
    flags = {name: _flag(check, root, name) for name in SETTING_NAMES}
    check.done()
    async with api.db.acquire() as conn, conn.transaction():
        current = await get_endpoint(conn, caller.tenant)
        events = set(current.events)
        for name, on in flags.items():
            if on is True:
                events.add(name)
            elif on is False:
                events.discard(name)
        if (enabled if enabled is not None else current.enabled) and not (url or current.url):
            return problem(400, ("url", "An enabled event webhook needs a url."))
        row = await update_endpoint(conn, caller.tenant, enabled=enabled, url=url, events=events)
    return reply(settings_view(row))


async def get_signed(api: Api, request: web.Request, caller: Caller) -> web.StreamResponse:
    async with api.db.acquire() as conn:
        row = await get_endpoint(conn, caller.tenant)
    return reply({"public_key": row.public_key if row.signed and row.public_key else ""})


async def patch_signed(api: Api, request: web.Request, caller: Caller) -> web.StreamResponse:
    check = Check()
    root = check.obj(await json_body(request), "body", required=True) or {}
    enabled = _flag(check, root, "enabled")
    if enabled is None and not check.errors:
        check.fail("enabled", "The enabled parameter is required.")
    check.done()
    async with api.db.acquire() as conn, conn.transaction():
        row = await set_signing(conn, api.settings.secret, caller.tenant, bool(enabled))
    return reply({"public_key": row.public_key if row.signed and row.public_key else ""})


async def send_test(api: Api, request: web.Request, caller: Caller) -> web.StreamResponse:
    """Post SendGrid's test event to the url given (or the one set), signed as real posts are;
    204 when the endpoint accepted it, 400 with what went wrong otherwise."""
    check = Check()
    root = check.obj(await json_body(request), "body") or {}
    url = check_url(check, root.get("url"))
    check.done()
    async with api.db.acquire() as conn:
        row = await get_endpoint(conn, caller.tenant)
        target = url or row.url
        if not target:
            return problem(400, ("url", "No url given and none is set."))
        hooks = api.settings.webhooks
        result = await post_sample(
            conn, api.settings.secret, row, target, hooks.timeout, hooks.allow_private
        )
    if not result.ok:
        return problem(400, ("url", f"the endpoint did not accept the test post: {result.reason}"))
    return web.Response(status=204)

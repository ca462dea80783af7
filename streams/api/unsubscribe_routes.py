"""One-click unsubscribe (RFC 8058): ``/u/<token>``, the https URI of List-Unsubscribe.

No API key: the token (streams/mail/unsubscribe.py) is the credential, and names the message
and, by its keyed tag, the recipient, found in the ``messages`` table.

- ``POST /u/<token>`` with the body ``List-Unsubscribe=One-Click`` (what a mailbox provider
  posts, and what the page's button posts) records an ``unsubscribed`` event for the message and
  recipient and suppresses the address; a second POST changes nothing (same event id, same
  suppression key).
- ``GET /u/<token>`` only shows a page with that button: link scanners and prefetchers follow
  GETs, so a GET never unsubscribes. The page names no address: whoever holds the link learns
  nothing from it.
- A token this server did not issue, or whose recipient is not on record: 404, plain text.

A token of mail sent in a suppression group (``asm.group_id``) leaves that group only: the page
names the group (its name, as the tenant gave it), the POST records a group suppression, and the
tenant's other mail still reaches the address. A token without a group unsubscribes from all.
"""

from __future__ import annotations

import html
import logging
from dataclasses import replace
from typing import Final

import asyncpg
from aiohttp import web
from aiokafka.errors import KafkaError

from streams.api.context import Api
from streams.api.suppression_routes import publish_suppressions
from streams.db import asm
from streams.errors import RecordTooLargeError, UnsubscribeTokenError
from streams.inbound.decide import Target, unsubscribed
from streams.inbound.resolve import find_target, for_token
from streams.mail import unsubscribe
from streams.mail.headers import ONE_CLICK

__all__ = ["CONFIRM_PAGE", "DONE_PAGE", "confirm_page", "group_pages", "one_click_post"]

log = logging.getLogger(__name__)

_FIELD, _, _VALUE = ONE_CLICK.partition("=")
_PAGE: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex, nofollow">
<title>{title}</title></head>
<body style="font-family: sans-serif; max-width: 32em; margin: 3em auto; padding: 0 1em">
<h1>{title}</h1>
{body}
</body></html>
"""
_FORM: Final = (
    f'<form method="post"><input type="hidden" name="{_FIELD}" value="{_VALUE}">\n'
    '<button type="submit">Unsubscribe</button></form>'
)
CONFIRM_PAGE: Final = _PAGE.format(
    title="Unsubscribe",
    body=f"<p>Stop receiving this sender's mail at this address?</p>\n{_FORM}",
)
DONE_PAGE: Final = _PAGE.format(
    title="Unsubscribed", body="<p>You will not receive this sender's mail here any more.</p>"
)


def group_pages(name: str) -> tuple[str, str]:
    """The confirmation and done pages of an unsubscribe from the group called ``name``."""
    shown = html.escape(name)
    confirm = _PAGE.format(
        title="Unsubscribe",
        body=(
            f"<p>Stop receiving this sender's &ldquo;{shown}&rdquo; mail at this address?"
            f" Its other mail still comes.</p>\n{_FORM}"
        ),
    )
    done = _PAGE.format(
        title="Unsubscribed",
        body=f"<p>You will not receive this sender's &ldquo;{shown}&rdquo; mail here any more.</p>",
    )
    return confirm, done


_HEADERS: Final = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex",
}


def _html(page: str, status: int = 200) -> web.Response:
    return web.Response(text=page, status=status, content_type="text/html", headers=_HEADERS)


def _plain(status: int, text: str) -> web.Response:
    return web.Response(text=text + "\n", status=status, content_type="text/plain")


def _not_found() -> web.Response:
    return _plain(404, "This unsubscribe link is not valid.")


def _token(api: Api, request: web.Request) -> unsubscribe.Unsubscribe | None:
    try:
        return unsubscribe.decode(api.settings.secret, request.match_info["token"])
    except UnsubscribeTokenError:
        return None


async def confirm_page(api: Api, request: web.Request) -> web.Response:
    """GET: the confirmation page (never an unsubscribe)."""
    token = _token(api, request)
    if token is None:
        return _not_found()
    if token.group_id is None:
        return _html(CONFIRM_PAGE)
    try:
        found = await _target(api, token)
    except (OSError, asyncpg.PostgresError) as exc:
        log.warning("an unsubscribe page could not be looked up: %s", exc)
        return _plain(503, "This page cannot be shown now; please try again.")
    if found is None:
        return _not_found()
    return _html(found[1][0] if found[1] else CONFIRM_PAGE)


async def _target(
    api: Api, token: unsubscribe.Unsubscribe
) -> tuple[Target, tuple[str, str] | None] | None:
    """The recipient the token names and, for a group's token, the group's pages; when the
    tenant has deleted the group, the recipient with no group (a global unsubscribe)."""
    secret = api.settings.secret

    def tag(tenant: str, message_id: str, recipient: str) -> bytes:
        return unsubscribe.recipient_tag(secret, tenant, message_id, recipient)

    async with api.db.acquire() as conn:
        found = await find_target(conn, token.message_id, token.tag, tag)
        if found is None:
            return None
        group = None
        if token.group_id is not None:
            group = await asm.group(conn, found.tenant, token.group_id)
    target = for_token(found, token)
    if group is None:
        # a group deleted since the mail went out guards nothing any more: as SendGrid does,
        # the click unsubscribes from everything
        return replace(target, asm_group_id=None), None
    return target, group_pages(group.name)


async def one_click_post(api: Api, request: web.Request) -> web.Response:
    """POST: unsubscribe the recipient the token names (RFC 8058 section 3.2)."""
    token = _token(api, request)
    if token is None:
        return _not_found()
    form = await request.post()
    if form.get(_FIELD) != _VALUE:
        return _plain(400, f"A one-click unsubscribe is a POST of {ONE_CLICK}.")
    try:
        found = await _target(api, token)
        if found is None:
            return _not_found()
        target, pages = found
        verdict = unsubscribed(target, "one-click", api.clock())
        await publish_suppressions(api, verdict.suppressions)
        await api.publish(
            api.settings.topics.events,
            [(e["tenant"].encode(), api.codec.encode("DeliveryEvent", e)) for e in verdict.events],
        )
    except (KafkaError, TimeoutError, RecordTooLargeError, OSError, asyncpg.PostgresError) as exc:
        log.warning("an unsubscribe could not be recorded: %s", exc)
        return _plain(503, "The unsubscribe could not be recorded now; please try again.")
    return _html(pages[1] if pages else DONE_PAGE)

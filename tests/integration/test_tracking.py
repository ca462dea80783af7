"""Open and click tracking end to end on the session stack, and SendGrid's validation API
driven with the official ``sendgrid`` client."""

from __future__ import annotations

import asyncio
import re
import uuid
from email import message_from_bytes
from email.policy import default
from typing import Any

import aiohttp
import pytest
import sendgrid
from python_http_client.exceptions import BadRequestsError

from streams.settings import Settings
from tests.conftest import SENDER_DOMAIN
from tests.integration.api_client import ApiClient
from tests.integration.helpers import eventually, new_tenant
from tests.peers.world import World

pytestmark = pytest.mark.integration

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36"
GMAIL = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
SHOP = "https://shop.example/item?id=7&ref=mail"
HTML = (
    '<html><body><p>New in: <a href="https://shop.example/item?id=7&amp;ref=mail">item</a></p>'
    '<p><a href="mailto:help@acme.example">help</a> <a href="#top">top</a></p></body></html>'
)


def _html_part(raw: bytes) -> str:
    message: Any = message_from_bytes(raw, policy=default)
    [part] = [p for p in message.walk() if p.get_content_type() == "text/html"]
    return str(part.get_content())


async def _events(client: ApiClient) -> list[dict[str, Any]]:
    page = await client.call("GET", "/v1/events?type=opened,clicked&limit=100")
    assert page.status == 200, page.body
    return list(page.body["events"])


async def test_tracked_mail_records_opens_and_clicks(
    stack: Settings, api: ApiClient, world: World
) -> None:
    _tenant, key = await new_tenant(stack, "trk")
    client = api.as_key(key)
    to = f"t{uuid.uuid4().hex[:8]}@inbox.example"
    sent = await client.call(
        "POST",
        "/v3/mail/send",
        {
            "personalizations": [{"to": [{"email": to}]}],
            "from": {"email": f"news@{SENDER_DOMAIN}"},
            "subject": "Tracked",
            "content": [
                {"type": "text/plain", "value": "Hi"},
                {"type": "text/html", "value": HTML},
            ],
            "tracking_settings": {
                "open_tracking": {"enable": True},
                "click_tracking": {"enable": True},
            },
            "categories": ["spring-sale"],
            "custom_args": {"campaign": "c7"},
        },
    )
    assert sent.status == 202, sent.body

    async def received() -> list[bytes]:
        return world.mx["inbox"].messages_to(to)

    [message] = await eventually(received, lambda m: len(m) == 1)
    html = _html_part(message)
    base = re.escape(stack.api_base)
    clicks = re.findall(rf'href="({base}/t/c/[A-Za-z0-9_-]+)"', html)
    pixels = re.findall(rf'<img src="({base}/t/o/[A-Za-z0-9_-]+)"', html)
    assert len(clicks) == 1
    assert len(pixels) == 1
    assert 'href="mailto:help@acme.example"' in html
    assert 'href="#top"' in html
    assert "shop.example" not in html  # the URL travels sealed in the token
    assert to.split("@", maxsplit=1)[0] not in html

    # the opens and clicks take the mail's labels from its events on record
    delivered = await eventually(
        lambda: client.call("GET", "/v1/events?type=delivered&limit=10"),
        lambda page: page.status == 200 and len(page.body["events"]) == 1,
    )
    assert delivered.body["events"][0]["categories"] == ["spring-sale"]
    await asyncio.sleep(2.2)  # past the window in which a click is a scanner's
    async with aiohttp.ClientSession() as session:
        opened = await session.get(pixels[0], headers={"User-Agent": BROWSER})
        assert opened.status == 200
        assert opened.headers["Content-Type"] == "image/gif"
        assert "no-store" in opened.headers["Cache-Control"]
        assert (await opened.read()).startswith(b"GIF89a")
        proxied = await session.get(pixels[0], headers={"User-Agent": GMAIL})
        assert proxied.status == 200
        clicked = await session.get(
            clicks[0], headers={"User-Agent": BROWSER}, allow_redirects=False
        )
        assert clicked.status == 302
        assert clicked.headers["Location"] == SHOP
        token = clicks[0].rsplit("/", 1)[1]
        forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        for url in (f"{stack.api_base}/t/c/{forged}", f"{stack.api_base}/t/o/{token}"):
            refused = await session.get(url, allow_redirects=False)
            assert refused.status == 404, url  # altered, or a click token used as a pixel

    def settled(found: list[dict[str, Any]]) -> bool:
        return len(found) >= 3

    events = await eventually(lambda: _events(client), settled)
    assert sorted(e["type"] for e in events) == ["clicked", "opened", "opened"]
    assert {e["email"] for e in events} == {to}
    for event in events:  # as SendGrid's opens and clicks carry them
        assert event["categories"] == ["spring-sale"], event
        assert event["custom_args"] == {"campaign": "c7"}, event
    by_agent = {(e["type"], e.get("user_agent")): e for e in events}
    human = by_agent[("opened", BROWSER)]
    assert human["reason"] is None
    assert human["ip"] == "127.0.0.1"
    machine = by_agent[("opened", GMAIL)]
    assert machine["reason"] == "machine: gmail image proxy"
    click = by_agent[("clicked", BROWSER)]
    assert click["url"] == SHOP
    assert click["reason"] is None
    assert click["message_id"] == sent.headers["X-Message-Id"]


async def test_untracked_mail_keeps_its_links(
    stack: Settings, api: ApiClient, world: World
) -> None:
    _tenant, key = await new_tenant(stack, "trn")
    to = f"u{uuid.uuid4().hex[:8]}@inbox.example"
    sent = await api.as_key(key).call(
        "POST",
        "/v3/mail/send",
        {
            "personalizations": [{"to": [{"email": to}]}],
            "from": {"email": f"news@{SENDER_DOMAIN}"},
            "subject": "Untracked",
            "content": [{"type": "text/html", "value": HTML}],
        },
    )
    assert sent.status == 202, sent.body

    async def received() -> list[bytes]:
        return world.mx["inbox"].messages_to(to)

    [message] = await eventually(received, lambda m: len(m) == 1)
    html = _html_part(message)
    assert "/t/c/" not in html
    assert "/t/o/" not in html
    assert 'href="https://shop.example/item?id=7&amp;ref=mail"' in html


async def test_validations_email_with_the_sendgrid_client(stack: Settings, api: ApiClient) -> None:
    del api  # waits until the API is healthy
    _tenant, key = await new_tenant(stack, "val")
    client = sendgrid.SendGridAPIClient(api_key=key, host=stack.api_base)

    def validate(email: str) -> Any:
        return client.client.validations.email.post(
            request_body={"email": email, "source": "signup"}
        )

    bad = await asyncio.to_thread(validate, "nobody@nullmx.example")
    assert bad.status_code == 200
    result = bad.to_dict["result"]
    assert result["verdict"] == "Invalid"
    assert result["email"] == "nobody@nullmx.example"
    assert (result["local"], result["host"]) == ("nobody", "nullmx.example")
    assert result["source"] == "signup"
    assert result["checks"]["domain"]["has_valid_address_syntax"] is True
    assert result["checks"]["domain"]["has_mx_or_a_record"] is False
    assert 0 <= result["score"] <= 1
    good = (await asyncio.to_thread(validate, "alice@normal.example")).to_dict["result"]
    assert good["verdict"] in ("Valid", "Risky")
    assert good["checks"]["domain"]["has_mx_or_a_record"] is True
    broken = (await asyncio.to_thread(validate, "not-an-address")).to_dict["result"]
    assert broken["verdict"] == "Invalid"
    assert broken["checks"]["domain"]["has_valid_address_syntax"] is False
    with pytest.raises(BadRequestsError) as refused:
        await asyncio.to_thread(client.client.validations.email.post, request_body={"x": 1})
    assert refused.value.status_code == 400

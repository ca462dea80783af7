"""Sender identities against the running pipeline: the issue's scenario (tenant B sending as
tenant A's domain) refused at both doors while A's own mail is signed with A's key and verifies
against the loopback DNS; the domain authentication API scoped to its tenant; private keys
resting only sealed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from typing import Any

import asyncpg
import dkim
import pytest
from cryptography.hazmat.primitives import serialization

from streams.api.sender_routes import NOT_VERIFIED
from streams.contract.codec import Codec
from streams.db.directory import DirectoryHolder
from streams.db.dkim_keys import SEAL_PURPOSE, seal_context
from streams.deliver.senders import add_sender
from streams.settings import Settings
from tests.integration.api_client import ApiClient
from tests.integration.helpers import eventually, new_tenant
from tests.integration.test_deliver_pipeline import _dns_txt, _send, _states, send_request
from tests.peers.world import World

pytestmark = pytest.mark.integration


def _domain(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}.example"


def _mail(sender: str, to: str, subject: str) -> dict[str, Any]:
    return {
        "personalizations": [{"to": [{"email": to}]}],
        "from": {"email": sender},
        "subject": subject,
        "content": [{"type": "text/plain", "value": "Hello from the owner"}],
    }


def _signature_tags(message: bytes) -> dict[str, str]:
    header = message.partition(b"\r\nFrom:")[0].decode().removeprefix("DKIM-Signature:")
    pairs = (tag.strip().partition("=") for tag in header.replace("\r\n", "").split(";"))
    return {k: "".join(v.split()) for k, _, v in pairs}


async def test_a_tenant_cannot_send_as_another_tenants_domain(
    stack: Settings, api: ApiClient, db: asyncpg.Connection, world: World, codec: Codec
) -> None:
    domain = _domain("owned")
    owner, owner_key = await new_tenant(stack, "owner", senders=())
    forger, forger_key = await new_tenant(stack, "forger")
    a = api.as_key(owner_key)

    # A authenticates its domain: publishes the two TXT records the API shows, validates
    added = await a.call("POST", "/v3/whitelabel/domains", {"domain": domain.upper()})
    assert added.status == 201, added.body
    doc = added.body
    assert (doc["domain"], doc["valid"], doc["username"]) == (domain, False, owner)
    records = doc["dns"]
    assert records["dkim"]["data"].startswith("v=DKIM1; k=rsa; p=")
    world.dns.zone.txt[records["verification"]["host"]] = records["verification"]["data"]
    world.dns.zone.txt[records["dkim"]["host"]] = records["dkim"]["data"]
    checked = await a.call("POST", f"/v3/whitelabel/domains/{doc['id']}/validate")
    assert checked.status == 200, checked.body
    assert checked.body == {
        "id": doc["id"],
        "valid": True,
        "validation_results": {
            "verification": {"valid": True, "reason": None},
            "dkim": {"valid": True, "reason": None},
        },
    }

    # B through the ingress: SendGrid's 403, nothing reaches Kafka
    subject = f"forged {uuid.uuid4().hex[:8]}"
    refused = await api.as_key(forger_key).call(
        "POST", "/v3/mail/send", _mail(f"x@{domain}", "alice@normal.example", subject)
    )
    assert refused.status == 403
    assert refused.body == {"errors": [{"message": NOT_VERIFIED, "field": "from", "help": None}]}

    # B straight to Kafka: the gate dead-letters it
    forged = send_request(forger, ["alice@normal.example"])
    forged["from"] = {"email": f"x@{domain}", "name": None}
    forged["content"]["subject"] = subject
    await _send(stack, codec, forger_key, forged)

    def dead_letter() -> Awaitable[asyncpg.Record | None]:
        return db.fetchrow(
            "SELECT error_code, error, tenant_id FROM rejections"
            " WHERE position(convert_to($1, 'UTF8') in raw) > 0",
            forged["request_id"],
        )

    dead = await eventually(dead_letter, lambda r: r is not None)
    assert dead is not None
    assert (dead["error_code"], dead["tenant_id"]) == ("auth.sender_not_verified", forger)
    assert f"x@{domain}" in dead["error"]

    # A's own mail: delivered, signed d=<domain> with A's key, verified against the DNS
    own_subject = f"own {uuid.uuid4().hex[:8]}"
    sent = await a.call(
        "POST", "/v3/mail/send", _mail(f"news@{domain}", "alice@normal.example", own_subject)
    )
    assert sent.status == 202, sent.body
    message_id = sent.headers["X-Message-Id"]

    def states() -> Awaitable[dict[str, str]]:
        return _states(db, message_id)

    want = {"alice@normal.example": "delivered"}
    assert await eventually(states, lambda s: s == want) == want
    inbox = world.mx["normal"].messages_to("alice@normal.example")
    [message] = [m for m in inbox if own_subject.encode() in m]
    tags = _signature_tags(message)
    assert (tags["d"], tags["s"]) == (domain, records["dkim"]["selector"])
    assert dkim.verify(message, dnsfunc=_dns_txt(world))
    # the forged one never left: no row, nothing at the MX
    assert await _states(db, forged["request_id"]) == {}
    assert not [m for m in inbox if subject.encode() in m]


async def test_the_domains_api_is_scoped_to_its_tenant(
    stack: Settings, api: ApiClient, db: asyncpg.Connection
) -> None:
    domain = _domain("api")
    owner, owner_key = await new_tenant(stack, "dom-a", senders=())
    _other, other_key = await new_tenant(stack, "dom-b", senders=())
    a, b = api.as_key(owner_key), api.as_key(other_key)
    body = {"domain": domain, "custom_dkim_selector": "s1", "dkim_algorithm": "ed25519"}
    created = await a.call("POST", "/v3/whitelabel/domains", body)
    assert created.status == 201, created.body
    doc = created.body
    assert doc["dns"]["verification"]["host"] == f"_postwire-verification.{domain}"
    assert doc["dns"]["dkim"]["host"] == f"s1._domainkey.{domain}"
    assert doc["dns"]["dkim"]["algorithm"] == "ed25519-sha256"
    assert doc["dns"]["dkim"]["valid"] is False

    again = await a.call("POST", "/v3/whitelabel/domains", {"domain": domain})
    assert again.status == 400
    assert "already a sender identity" in again.body["errors"][0]["message"]
    for bad, field in (
        ({"domain": "x@y.example"}, "domain"),
        ({"domain": "localhost"}, "domain"),
        ({"domain": _domain("alg"), "dkim_algorithm": "dsa"}, "dkim_algorithm"),
        ({"domain": _domain("sel"), "custom_dkim_selector": "no spaces"}, "custom_dkim_selector"),
        ({}, "domain"),
    ):
        answer = await a.call("POST", "/v3/whitelabel/domains", bad)
        assert answer.status == 400, (bad, answer.body)
        assert answer.body["errors"][0]["field"] == field, answer.body
    # B may claim the domain too, even A's selector of it (it must prove the domain by DNS,
    # and only the key A publishes verifies): a claim never locks the owner out
    squat = {**body, "domain": _domain("squat")}
    assert (await b.call("POST", "/v3/whitelabel/domains", squat)).status == 201
    owned = await a.call("POST", "/v3/whitelabel/domains", squat)
    assert owned.status == 201, owned.body
    assert owned.body["dns"]["dkim"]["data"] != doc["dns"]["dkim"]["data"]  # a key of its own
    assert (await a.call("DELETE", f"/v3/whitelabel/domains/{owned.body['id']}")).status == 204

    listed = await a.call("GET", "/v3/whitelabel/domains")
    assert [d["id"] for d in listed.body] == [doc["id"]]
    [b_claim] = (await b.call("GET", "/v3/whitelabel/domains")).body  # B sees only its own
    assert b_claim["domain"] == squat["domain"]
    assert b_claim["valid"] is False
    path = f"/v3/whitelabel/domains/{doc['id']}"
    for method, where in (("GET", path), ("DELETE", path), ("POST", f"{path}/validate")):
        answer = await b.call(method, where)
        assert answer.status == 404, (method, where, answer.body)
    for missing in ("abc", "0", "99999999999", str(2**70)):
        assert (await a.call("GET", f"/v3/whitelabel/domains/{missing}")).status == 404
    assert (await a.call("GET", path)).body == doc

    unpublished = await a.call("POST", f"{path}/validate")
    assert unpublished.status == 200
    results = unpublished.body["validation_results"]
    assert unpublished.body["valid"] is False
    assert results["verification"] == {
        "valid": False,
        "reason": f'no TXT record "{doc["dns"]["verification"]["data"]}"'
        f" at _postwire-verification.{domain}",
    }
    assert results["dkim"] == {
        "valid": False,
        "reason": f"no DKIM key record at s1._domainkey.{domain}",
    }

    assert (await a.call("DELETE", path)).status == 204
    assert (await a.call("GET", path)).status == 404
    left = await db.fetchval(
        "SELECT count(*) FROM dkim_keys WHERE tenant_id = $1 AND domain = $2", owner, domain
    )
    assert left == 0


async def test_private_keys_rest_only_sealed(stack: Settings, db: asyncpg.Connection) -> None:
    tenant, _ = await new_tenant(stack, "sealed", senders=())
    domain = _domain("sealed")
    sender = await add_sender(db, stack.secret, tenant, domain, dkim="rsa", operator=True)
    assert sender.key is not None
    sealed = bytes(
        await db.fetchval(
            "SELECT sealed_key FROM dkim_keys WHERE tenant_id = $1 AND domain = $2",
            tenant,
            domain,
        )
    )
    context = seal_context(tenant, domain, sender.key.selector)
    pem = stack.secret.open(SEAL_PURPOSE, sealed, context=context)
    private = serialization.load_pem_private_key(pem, password=None)
    der = private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # pieces of the private key in every form it could be stored or printed in
    pieces = ["PRIVATE KEY", pem.decode().splitlines()[5], der.hex()[200:264]]
    tables = [
        r["tablename"]
        for r in await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    ]
    assert "dkim_keys" in tables
    for table in tables:
        for piece in pieces:
            found = await db.fetchval(
                f'SELECT count(*) FROM "{table}" t WHERE strpos(t::text, $1) > 0',
                piece,
            )
            assert found == 0, (table, piece)
    logs = list((stack.data_dir / "logs").glob("*.log"))
    assert logs
    for path in logs:
        text = path.read_text(errors="replace")
        assert not [p for p in pieces if p in text], path
    # a sealed key copied into another tenant's row does not open there
    with pytest.raises(Exception, match="does not open"):
        stack.secret.open(
            SEAL_PURPOSE, sealed, context=seal_context("someone-else", domain, sender.key.selector)
        )


async def test_a_sender_verified_since_the_last_refresh_is_looked_up_once(
    stack: Settings, db: asyncpg.Connection
) -> None:
    tenant, _ = await new_tenant(stack, "fresh", senders=())
    domain = _domain("fresh")
    signing = DirectoryHolder(stack.database, dkim_secret=stack.secret)
    plain = DirectoryHolder(stack.database)
    try:
        for holder in (signing, plain):
            await holder.refresh()
            assert not holder.current.verified_sender(tenant, f"news@{domain}")
        sender = await add_sender(db, stack.secret, tenant, domain, dkim="ed25519", operator=True)
        assert sender.key is not None
        assert await signing.lookup_senders(tenant)
        assert signing.current.verified_sender(tenant, f"news@{domain}")
        key = signing.current.dkim_key(tenant, domain)
        assert key is not None
        assert key.selector == sender.key.selector
        assert key.pem.startswith(b"-----BEGIN PRIVATE KEY-----")
        # a process that does not sign never opens a key
        assert await plain.lookup_senders(tenant)
        assert plain.current.verified_sender(tenant, f"news@{domain}")
        assert plain.current.dkim_key(tenant, domain) is None
        # the same tenant again within a second: no second query, nothing changes
        await db.execute("DELETE FROM dkim_keys WHERE tenant_id = $1", tenant)
        assert not await signing.lookup_senders(tenant)
        assert signing.current.dkim_key(tenant, domain) is not None
        await signing.refresh()  # the next refresh sees the key gone
        assert signing.current.dkim_key(tenant, domain) is None
    finally:
        await signing.close()
        await plain.close()


async def test_requests_arriving_during_a_sender_lookup_share_its_answer(
    stack: Settings, db: asyncpg.Connection
) -> None:
    tenant, _ = await new_tenant(stack, "burst", senders=())
    domain = _domain("burst")
    holder = DirectoryHolder(stack.database)
    try:
        await holder.refresh()
        await add_sender(db, stack.secret, tenant, domain, dkim="ed25519", operator=True)
        # the first mail of a newly verified sender rarely comes alone: none of them is refused
        answers = await asyncio.gather(*(holder.lookup_senders(tenant) for _ in range(5)))
        assert answers == [True] * 5
        assert holder.current.verified_sender(tenant, f"news@{domain}")
    finally:
        await holder.close()


async def test_a_lookup_the_ingress_vouched_for_is_made_whatever_the_miss_memory_says(
    stack: Settings, db: asyncpg.Connection
) -> None:
    tenant, _ = await new_tenant(stack, "vouched", senders=())
    domain = _domain("vouched")
    holder = DirectoryHolder(stack.database)
    try:
        await holder.refresh()
        assert not await holder.lookup_senders(tenant)  # nothing yet; remembered for a second
        await add_sender(db, stack.secret, tenant, domain, dkim="ed25519", operator=True)
        assert not await holder.lookup_senders(tenant)  # the memory holds a forged From off
        assert not holder.current.verified_sender(tenant, f"news@{domain}")
        # a request the ingress signed: it found the sender, so the gate looks again at once
        assert await holder.lookup_senders(tenant, vouched=True)
        assert holder.current.verified_sender(tenant, f"news@{domain}")
    finally:
        await holder.close()

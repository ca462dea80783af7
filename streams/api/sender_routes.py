"""Domain authentication shaped like SendGrid's ``/v3/whitelabel/domains``: a tenant adds its
sending domains, is shown the DNS records to publish (a verification TXT record and its DKIM
key), and validates them. Everything is scoped to the caller's tenant: another tenant's
identity id is a 404, like one that never existed.

Also the ingress's sender check: a mail/send whose From is not a verified identity of the
caller's tenant is a 403 in SendGrid's words.
"""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from streams.api.check import Check
from streams.api.context import Api, Caller, json_body, problem, reply
from streams.db.senders import remove_identity
from streams.deliver.dkim import KEY_TYPES, KeyType, check_selector
from streams.deliver.senders import (
    RecordCheck,
    Sender,
    Validation,
    add_sender,
    check_records,
    get_sender,
    list_senders,
    record_validation,
)
from streams.errors import DkimKeyError, SelectorTakenError, SenderError, UnknownSenderError
from streams.mail.dns import MxResolver

__all__ = [
    "NOT_VERIFIED",
    "RESOLVER",
    "add_domain",
    "delete_domain",
    "get_domain",
    "list_domains",
    "sender_refused",
    "validate_domain",
]

RESOLVER: Final = web.AppKey("postwire_resolver", MxResolver)
NOT_VERIFIED: Final = (
    "The from address does not match a verified Sender Identity. Mail cannot be sent until this"
    " error is resolved. Verify the domain with POST /v3/whitelabel/domains and"
    " /v3/whitelabel/domains/{id}/validate, or ask the operator."
)
_MAX_ID: Final = 2**63 - 1


async def sender_refused(api: Api, tenant: str, address: str) -> web.Response | None:
    """The 403 for a From the tenant has not verified, else None. An identity verified since
    the directory's last refresh is looked up once, so it works the moment it is verified."""
    directory = api.directory
    if directory.current.verified_sender(tenant, address):
        return None
    # whatever the lookup answers, the snapshot may know the sender by now (another request's
    # lookup, or a refresh, may have brought it)
    await directory.lookup_senders(tenant)
    if directory.current.verified_sender(tenant, address):
        return None
    return problem(403, ("from", NOT_VERIFIED))


def _record(valid: bool, host: str, data: str) -> dict[str, Any]:
    return {"valid": valid, "type": "txt", "host": host, "data": data}


def domain_json(sender: Sender) -> dict[str, Any]:
    identity, key = sender.identity, sender.key
    dns: dict[str, Any] = {
        "verification": _record(
            identity.verified, identity.verification_host, identity.verification_value
        )
    }
    if key is not None:
        dns["dkim"] = {
            **_record(key.published_at is not None, key.record_name, key.public_txt),
            "selector": key.selector,
            "algorithm": key.algorithm,
        }
    return {
        "id": identity.identity_id,
        "domain": identity.domain,
        "username": identity.tenant_id,
        "valid": identity.verified,
        "verified_by": identity.verified_by,
        "verified_at": identity.verified_at.isoformat() if identity.verified_at else None,
        "created_at": identity.created_at.isoformat(),
        # the records are TXT records the tenant publishes, not CNAMEs pointing at us
        "automatic_security": False,
        "dns": dns,
    }


def _check_json(check: RecordCheck | None) -> dict[str, Any] | None:
    return None if check is None else {"valid": check.valid, "reason": check.reason}


def validation_json(sender: Sender, validation: Validation) -> dict[str, Any]:
    return {
        "id": sender.identity.identity_id,
        "valid": sender.identity.verified,
        "validation_results": {
            "verification": _check_json(validation.verification),
            "dkim": _check_json(validation.dkim),
        },
    }


def _new_domain(body: Any) -> tuple[str, str | None, KeyType]:
    """(domain, selector, key type) of a POST body; IngressValidationError (400) otherwise."""
    check = Check()
    root = check.obj(body, "body", required=True) or {}
    domain = check.text(root.get("domain"), "domain")
    if not domain:
        check.fail("domain", "The domain parameter is required.")
    elif "@" in domain:
        check.fail("domain", "A domain name, not an address.")
    selector = check.text(root.get("custom_dkim_selector"), "custom_dkim_selector")
    if selector is not None:
        try:
            check_selector(selector)
        except DkimKeyError as exc:
            check.fail("custom_dkim_selector", str(exc))
    algorithm = check.text(root.get("dkim_algorithm"), "dkim_algorithm") or "rsa"
    kind = next((k for k in KEY_TYPES if k == algorithm), None)
    if kind is None:
        check.fail("dkim_algorithm", "Must be rsa or ed25519.")
    check.done()
    return domain or "", selector, kind or "rsa"


def _identity_id(request: web.Request) -> int | None:
    text = request.match_info["id"]
    if not text.isascii() or not text.isdigit() or not 0 < int(text) <= _MAX_ID:
        return None
    return int(text)


def _not_found() -> web.Response:
    return problem(404, ("id", "no such domain"))


async def add_domain(api: Api, request: web.Request, caller: Caller) -> web.StreamResponse:
    domain, selector, kind = _new_domain(await json_body(request))
    try:
        async with api.db.acquire() as conn:
            sender = await add_sender(
                conn, api.settings.secret, caller.tenant, domain, dkim=kind, selector=selector
            )
    except SelectorTakenError as exc:
        return problem(400, ("custom_dkim_selector", str(exc)))
    except SenderError as exc:
        return problem(400, ("domain", str(exc)))
    return reply(domain_json(sender), 201)


async def list_domains(api: Api, request: web.Request, caller: Caller) -> web.StreamResponse:
    async with api.db.acquire() as conn:
        senders = await list_senders(conn, caller.tenant, domains_only=True)
    return reply([domain_json(s) for s in senders])


async def _own(conn: Any, request: web.Request, caller: Caller) -> Sender | None:
    """The caller's domain identity the path names, or None (absent, another tenant's, or an
    address identity, which this API does not manage)."""
    identity_id = _identity_id(request)
    if identity_id is None:
        return None
    try:
        sender = await get_sender(conn, caller.tenant, identity_id)
    except UnknownSenderError:
        return None
    return sender if sender.identity.address is None else None


async def get_domain(api: Api, request: web.Request, caller: Caller) -> web.StreamResponse:
    async with api.db.acquire() as conn:
        sender = await _own(conn, request, caller)
    return _not_found() if sender is None else reply(domain_json(sender))


async def delete_domain(api: Api, request: web.Request, caller: Caller) -> web.StreamResponse:
    async with api.db.acquire() as conn:
        sender = await _own(conn, request, caller)
        if sender is None:
            return _not_found()
        await remove_identity(conn, sender.identity)
    return web.Response(status=204)


async def validate_domain(api: Api, request: web.Request, caller: Caller) -> web.StreamResponse:
    async with api.db.acquire() as conn:
        sender = await _own(conn, request, caller)
    if sender is None:
        return _not_found()
    validation = await check_records(request.app[RESOLVER], sender)
    try:
        async with api.db.acquire() as conn:
            sender = await record_validation(conn, sender, validation)
    except UnknownSenderError:
        return _not_found()  # removed while its records were looked up
    return reply(validation_json(sender, validation))

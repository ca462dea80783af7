"""Sender identities as the CLI and the API manage them: add one (with its DKIM key, sealed),
validate its DNS records, import or rotate a key.

The records live in ``streams/db/senders.py`` and ``streams/db/dkim_keys.py``; this is the glue
around them with key generation and DNS. What a validation concludes from the TXT answers is
pure (``check_verification``, ``check_dkim``), so the unit tests cover every reason without DNS.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization

from streams.db.dkim_keys import DkimKeyInfo, list_dkim_keys, mark_published, store_dkim_key
from streams.db.senders import (
    VERIFICATION_PREFIX,
    Identity,
    add_identity,
    find_identity,
    get_identity,
    list_identities,
    mark_verified,
    parse_identity,
)
from streams.deliver.dkim import DkimKey, KeyType, check_selector, keygen
from streams.errors import DkimKeyError, SenderInvalidError
from streams.mail.dns import MxResolver, TxtAnswer
from streams.secret import ServerSecret

__all__ = [
    "RecordCheck",
    "Sender",
    "Validation",
    "add_sender",
    "check_dkim",
    "check_records",
    "check_verification",
    "find_sender",
    "get_sender",
    "import_key",
    "list_senders",
    "new_selector",
    "record_validation",
    "rotate_key",
]


@dataclass(frozen=True)
class Sender:
    """An identity and, for a domain, the DKIM key that signs its mail."""

    identity: Identity
    key: DkimKeyInfo | None = None

    def to_json(self) -> dict[str, Any]:
        identity, key = self.identity, self.key
        return {
            "id": identity.identity_id,
            "tenant": identity.tenant_id,
            "identity": identity.name,
            "domain": identity.domain,
            "verified": identity.verified,
            "verified_by": identity.verified_by,
            "verified_at": identity.verified_at.isoformat() if identity.verified_at else None,
            "verification_record": {
                "host": identity.verification_host,
                "type": "TXT",
                "value": identity.verification_value,
            },
            "dkim_record": None
            if key is None
            else {
                "host": key.record_name,
                "type": "TXT",
                "value": key.public_txt,
                "selector": key.selector,
                "algorithm": key.algorithm,
                "published": key.published_at is not None,
            },
        }


@dataclass(frozen=True)
class RecordCheck:
    valid: bool
    reason: str | None = None


@dataclass(frozen=True)
class Validation:
    verification: RecordCheck
    dkim: RecordCheck | None  # None: the identity has no key to publish


def new_selector() -> str:
    """A selector no other tenant of the domain is likely to hold (one DNS name, one key)."""
    return f"pw{secrets.token_hex(3)}"


def _selector(selector: str | None) -> str:
    try:
        return check_selector(selector) if selector is not None else new_selector()
    except DkimKeyError as exc:
        raise SenderInvalidError(str(exc)) from exc


async def _sender(conn: Any, identity: Identity) -> Sender:
    if identity.address is not None:
        return Sender(identity)
    keys = await list_dkim_keys(conn, identity.tenant_id, identity.domain)
    return Sender(identity, next((k for k in keys if k.active), None))


async def add_sender(
    conn: Any,
    secret: ServerSecret,
    tenant: str,
    text: str,
    *,
    dkim: KeyType | None = "rsa",
    selector: str | None = None,
    operator: bool = False,
    shared: bool = False,
) -> Sender:
    """Add a domain or an address; a domain gets a new DKIM key (unless ``dkim`` is None).
    ``operator``: the operator vouches for it, no DNS proof needed. All or nothing."""
    domain, address = parse_identity(text)
    chosen = _selector(selector)
    pem = txt = None
    if address is None and dkim is not None:
        # an RSA key takes ~0.1 s of CPU: off the event loop (the API serves meanwhile)
        pem, txt = await asyncio.to_thread(keygen, dkim)
    async with conn.transaction():
        identity = await add_identity(conn, tenant, domain, address)
        key = None
        if pem is not None and txt is not None:
            algorithm = "rsa-sha256" if dkim == "rsa" else "ed25519-sha256"
            key = await store_dkim_key(conn, secret, tenant, domain, chosen, algorithm, pem, txt)
        if operator:
            identity = await mark_verified(conn, identity, "operator", shared=shared)
    return Sender(identity, key)


async def get_sender(conn: Any, tenant: str, identity_id: int) -> Sender:
    return await _sender(conn, await get_identity(conn, tenant, identity_id))


async def find_sender(conn: Any, tenant: str, text: str) -> Sender:
    domain, address = parse_identity(text)
    return await _sender(conn, await find_identity(conn, tenant, domain, address))


async def list_senders(conn: Any, tenant: str, *, domains_only: bool = False) -> list[Sender]:
    identities = await list_identities(conn, tenant, domains_only=domains_only)
    keys = {k.domain: k for k in await list_dkim_keys(conn, tenant) if k.active}
    return [Sender(i, keys.get(i.domain) if i.address is None else None) for i in identities]


def check_verification(answer: TxtAnswer, identity: Identity) -> RecordCheck:
    """Whether the TXT answer at the verification host holds this identity's own token."""
    host, value = identity.verification_host, identity.verification_value
    if answer.status in ("timeout", "error"):
        return RecordCheck(False, f"the DNS lookup of {host} failed ({answer.error}); try again")
    found = [v.strip() for v in answer.values]
    if value in found:
        return RecordCheck(True)
    if any(v.startswith(VERIFICATION_PREFIX) for v in found):
        return RecordCheck(False, f"the TXT record at {host} holds another token, not {value!r}")
    return RecordCheck(False, f'no TXT record "{value}" at {host}')


def _tags(record: str) -> dict[str, str]:
    tags = {}
    for part in record.split(";"):
        name, equals, value = part.partition("=")
        if equals:
            tags[name.strip()] = "".join(value.split())
    return tags


def check_dkim(answer: TxtAnswer, key: DkimKeyInfo) -> RecordCheck:
    """Whether the key record at ``<selector>._domainkey.<domain>`` publishes this key."""
    host = key.record_name
    if answer.status in ("timeout", "error"):
        return RecordCheck(False, f"the DNS lookup of {host} failed ({answer.error}); try again")
    want = _tags(key.public_txt)
    published = [_tags(v) for v in answer.values]
    if any(t.get("p") == want["p"] and t.get("k", "rsa") == want["k"] for t in published):
        return RecordCheck(True)
    if any("p" in t for t in published):
        return RecordCheck(False, f"the TXT record at {host} publishes another key")
    return RecordCheck(False, f"no DKIM key record at {host}")


async def check_records(resolver: MxResolver, sender: Sender) -> Validation:
    """Look the identity's records up (no database connection held while DNS answers)."""
    identity, key = sender.identity, sender.key
    lookups = [resolver.txt(identity.verification_host)]
    if key is not None:
        lookups.append(resolver.txt(key.record_name))
    answers = await asyncio.gather(*lookups)
    verification = check_verification(answers[0], identity)
    return Validation(verification, check_dkim(answers[1], key) if key is not None else None)


async def record_validation(conn: Any, sender: Sender, validation: Validation) -> Sender:
    """A found token verifies the identity by DNS, a found key record is noted as published;
    the identity as it is now. A failed check never revokes an earlier verification: a DNS
    outage must not stop mail (removing the identity does)."""
    identity, key = sender.identity, sender.key
    if validation.verification.valid:
        await mark_verified(conn, identity, "dns")
    if key is not None and validation.dkim is not None and validation.dkim.valid:
        await mark_published(conn, key.tenant_id, key.domain, key.selector)
    return await get_sender(conn, identity.tenant_id, identity.identity_id)


async def _domain_identity(conn: Any, tenant: str, text: str) -> Identity:
    domain, address = parse_identity(text)
    if address is not None:
        raise SenderInvalidError(f"DKIM keys belong to a domain, not to the address {address}")
    return await find_identity(conn, tenant, domain, None)


async def import_key(
    conn: Any, secret: ServerSecret, tenant: str, domain: str, selector: str, pem: bytes
) -> DkimKeyInfo:
    """An existing PEM key (moving over from key files) as the active key of one of the
    tenant's domains; the PEM is checked, normalised to PKCS8 and sealed."""
    identity = await _domain_identity(conn, tenant, domain)
    try:
        key = DkimKey.from_pem(identity.domain, check_selector(selector), pem)
    except DkimKeyError as exc:
        raise SenderInvalidError(str(exc)) from exc
    pkcs8 = key.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return await store_dkim_key(
        conn, secret, tenant, identity.domain, key.selector, key.algorithm, pkcs8, key.dns_record()
    )


async def rotate_key(
    conn: Any,
    secret: ServerSecret,
    tenant: str,
    domain: str,
    kind: KeyType,
    selector: str | None = None,
) -> DkimKeyInfo:
    """A new key under a new selector signs from now on: publish its record at once (mail
    signed before receivers can see it fails their DKIM check); the old one stays, inactive."""
    identity = await _domain_identity(conn, tenant, domain)
    chosen = _selector(selector)
    pem, txt = await asyncio.to_thread(keygen, kind)
    algorithm = "rsa-sha256" if kind == "rsa" else "ed25519-sha256"
    return await store_dkim_key(conn, secret, tenant, identity.domain, chosen, algorithm, pem, txt)

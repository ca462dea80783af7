"""Signed requests: how a record on ``postwire.requests`` says who sent it without carrying a key.

Three Kafka headers go with every request:

- ``postwire-key-id``: the id of the API key (``k_...``), never the key;
- ``postwire-signer``: ``key`` (a direct producer, signing with its API key as the HMAC key) or
  ``ingress`` (the HTTP API, which authenticated the caller's bearer key and signs with the
  server secret's ``ingress`` subkey);
- ``postwire-signature``: hex HMAC-SHA256 over the signer, the key id, the record key (the
  tenant) and the record value exactly as produced.

The gate recomputes the one HMAC and refuses the record when it differs, so a record can be
neither forged nor altered by anyone without the key, and what lands on the topic (and every
topic and table after it) proves knowledge of the key for these bytes only. Pure: no I/O.

A direct producer::

    value = default_codec().encode("EmailRequest", request)
    headers = sign(value, tenant="acme", key_id="k_3f9c0a2b1d4e", api_key=key)
    await producer.send_and_wait("postwire.requests", value, key=b"acme", headers=headers)
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from streams.errors import AuthError

__all__ = [
    "HEADERS",
    "INGRESS_PURPOSE",
    "KEY_ID",
    "SIGNATURE",
    "SIGNER",
    "Signed",
    "SignerKind",
    "carried",
    "ingress_headers",
    "read_signed",
    "sign",
    "signature",
]

KEY_ID: Final = "postwire-key-id"
SIGNER: Final = "postwire-signer"
SIGNATURE: Final = "postwire-signature"
HEADERS: Final = (KEY_ID, SIGNER, SIGNATURE)
# the ServerSecret purpose of the ingress's signing key
INGRESS_PURPOSE: Final = "ingress"

SignerKind = Literal["key", "ingress"]
_SIGNERS: Final[dict[str, SignerKind]] = {"key": "key", "ingress": "ingress"}
# versioned, so a later change of what is signed can never be confused with this one
_DOMAIN: Final = b"postwire-request/1"
_HEX_LENGTH: Final = 64


def signature(
    hmac_key: bytes, signer: SignerKind, key_id: str, record_key: bytes | None, value: bytes
) -> bytes:
    """The hex signature of one record. Every part before the value is length-prefixed, so no
    choice of tenant or key id can make two different records sign alike."""
    mac = hmac.new(hmac_key, digestmod=hashlib.sha256)
    for part in (_DOMAIN, signer.encode(), key_id.encode(), record_key or b""):
        mac.update(len(part).to_bytes(4, "big"))
        mac.update(part)
    mac.update(value)
    return mac.hexdigest().encode()


def _headers(signer: SignerKind, key_id: str, sig: bytes) -> list[tuple[str, bytes]]:
    return [(KEY_ID, key_id.encode()), (SIGNER, signer.encode()), (SIGNATURE, sig)]


def sign(value: bytes, *, tenant: str, key_id: str, api_key: str) -> list[tuple[str, bytes]]:
    """The headers a direct producer sends with ``value`` (record key: the tenant)."""
    sig = signature(api_key.encode(), "key", key_id, tenant.encode(), value)
    return _headers("key", key_id, sig)


def ingress_headers(
    value: bytes, *, tenant: str, key_id: str, ingress_key: bytes
) -> list[tuple[str, bytes]]:
    """The headers of a record the HTTP ingress publishes for an authenticated caller."""
    sig = signature(ingress_key, "ingress", key_id, tenant.encode(), value)
    return _headers("ingress", key_id, sig)


@dataclass(frozen=True, slots=True)
class Signed:
    """A record's signing headers, well-formed (what they claim is not checked yet)."""

    key_id: str
    signer: SignerKind
    signature: bytes

    def valid(self, hmac_key: bytes, record_key: bytes | None, value: bytes) -> bool:
        expected = signature(hmac_key, self.signer, self.key_id, record_key, value)
        return hmac.compare_digest(expected, self.signature)


def read_signed(headers: Iterable[tuple[str, bytes | None]]) -> Signed:
    """The signing headers of a record; AuthError ``auth.unsigned`` naming what is missing or
    malformed."""
    found: dict[str, bytes] = {}
    for name, value in headers:
        if name in HEADERS and value is not None:
            found[name] = bytes(value)
    missing = [name for name in HEADERS if name not in found]
    if missing:
        raise AuthError(
            "auth.unsigned",
            f"the record has no {', '.join(missing)} header: requests carry no key, they are"
            " signed (streams.contract.signing.sign, README 'Trust model')",
        )
    signer = _SIGNERS.get(found[SIGNER].decode(errors="replace"))
    if signer is None:
        raise AuthError("auth.unsigned", f"{SIGNER} is {found[SIGNER]!r}, not key or ingress")
    sig = found[SIGNATURE]
    if len(sig) != _HEX_LENGTH:
        raise AuthError("auth.unsigned", f"{SIGNATURE} is not {_HEX_LENGTH} hex digits")
    return Signed(found[KEY_ID].decode(errors="replace"), signer, sig)


def carried(headers: Iterable[tuple[str, bytes | None]]) -> list[tuple[str, bytes]]:
    """The signing headers among ``headers``, to go with a record that is produced again
    unchanged (a deferral), so it verifies again when it comes back."""
    return [(name, bytes(value)) for name, value in headers if name in HEADERS and value]

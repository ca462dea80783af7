"""Whom a request is from, and whether its tracking event is its tenant's to record: the gate's
pure checks, one HMAC per request.

A request carries no key (``streams/contract/signing.py``): it names a key id and is signed either
with that key (a direct producer) or with the server secret's ``ingress`` subkey (the HTTP API,
which authenticated the caller's key before signing). Either way the key must exist, belong to
the request's tenant, be active and hold the operation's scope, so revocation reaches both doors.

A track request of a direct producer must name a message id issued to its tenant
(``streams/contract/ids.py``); the ingress checked its own before signing, so its records are
not checked again here (it also accepts ids of mail sent before ids were tagged, after finding
them in the tenant's messages). No event may claim a time more than ``MAX_FUTURE`` ahead: a
future time would outrank every later event about the message and freeze its state.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from streams.contract.ids import MessageIds
from streams.contract.records import EmailRequest
from streams.contract.signing import Signed, read_signed
from streams.db.tenants import ApiKey, Directory, Tenant
from streams.errors import AuthError, TrackRefusedError

__all__ = ["MAX_FUTURE", "Trust", "future_refusal", "owner_refusal"]

MAX_FUTURE: Final = timedelta(minutes=5)


def future_refusal(occurred_at: datetime, now: datetime) -> TrackRefusedError | None:
    """The refusal of an event dated more than ``MAX_FUTURE`` after ``now``, else None."""
    if occurred_at <= now + MAX_FUTURE:
        return None
    ahead = int((occurred_at - now).total_seconds())
    return TrackRefusedError(
        "track.future_timestamp",
        "timestamp",
        f"the event is dated {ahead} s in the future; at most {int(MAX_FUTURE.total_seconds())}"
        " s of clock skew is accepted",
    )


def owner_refusal(ids: MessageIds, tenant: str, message_id: str) -> TrackRefusedError | None:
    """The refusal of an event about a message id not issued to ``tenant``, else None."""
    if ids.issued_to(tenant, message_id):
        return None
    return TrackRefusedError(
        "track.foreign_message",
        "message_id",
        f"message id {message_id!r} was not issued to tenant {tenant!r}",
    )


def _hmac_key(key: ApiKey, signed: Signed, ingress_key: bytes) -> bytes:
    if signed.signer == "ingress":
        return ingress_key
    if key.secret is not None:
        return key.secret
    if key.sealed:
        reason = (
            "its sealed copy does not open under this server secret (was POSTWIRE_SECRET_KEY"
            " changed?)"
        )
    else:
        reason = "it was created before keys were sealed"
    raise AuthError(
        "auth.key_not_sealed",
        f"key {key.key_id} cannot sign records for direct producers: {reason}; create a new key"
        " (postwire keys create) and sign with it",
    )


@dataclass(frozen=True)
class Trust:
    """What the gate checks requests with: the ingress's signing key and the message ids."""

    ingress_key: bytes
    ids: MessageIds

    def authenticate(
        self,
        directory: Directory,
        request: EmailRequest,
        headers: Iterable[tuple[str, bytes | None]],
        record_key: bytes | None,
        raw: bytes,
    ) -> tuple[Tenant, Signed]:
        """The request's tenant and signature; AuthError with the check that failed."""
        signed = read_signed(headers)
        key = directory.key_ids.get(signed.key_id)
        if key is None:
            raise AuthError("auth.unknown_key", f"no API key {signed.key_id!r}")
        if not signed.valid(_hmac_key(key, signed, self.ingress_key), record_key, raw):
            raise AuthError(
                "auth.bad_signature",
                f"the {signed.signer} signature for key {key.key_id} does not match the record"
                " (forged, altered after signing, or signed with another key)",
            )
        tenant = directory.authorize(key, request["tenant"], request["operation"])
        if record_key != request["tenant"].encode():
            # the gate's windows are kept per partition of the tenant's key: records keyed
            # otherwise would be counted apart, a rate limit multiplied by the partitions
            raise AuthError(
                "auth.wrong_record_key",
                f"the record's key is {record_key!r}, not its tenant {request['tenant']!r}",
            )
        return tenant, signed

    def vouched(
        self, headers: Iterable[tuple[str, bytes | None]], record_key: bytes | None, raw: bytes
    ) -> bool:
        """Whether the ingress signed this record: it authenticated the key and checked the
        sender before it answered 202, so a miss in this directory is staleness, never a
        forgery."""
        try:
            signed = read_signed(headers)
        except AuthError:
            return False
        return signed.signer == "ingress" and signed.valid(self.ingress_key, record_key, raw)

    def check_track(self, request: EmailRequest, signed: Signed, now: datetime) -> None:
        """TrackRefusedError for an event that is not the tenant's to record."""
        track = request.get("track")
        if request["operation"] != "track" or track is None:
            return
        refusal = future_refusal(track["occurred_at"], now)
        if refusal is None and signed.signer == "key":
            refusal = owner_refusal(self.ids, request["tenant"], track["message_id"])
        if refusal is not None:
            raise refusal

"""The ids the API issues: message ids (``X-Message-Id``) and verification job ids.

A message id is 32 lower-case hex digits, 24 of body and 8 of owner tag:

- the body is random, or, for a request with an Idempotency-Key, an HMAC of (tenant, key) under
  the server secret's ``message-id`` subkey: a retry gets the same id, and nobody without the
  secret can compute the id of another tenant's message from its Idempotency-Key (a uuid5 of a
  fixed namespace once let any tenant do exactly that);
- the tag is an HMAC of (tenant, body) under the ``message-owner`` subkey, so whoever holds the
  secret (the API and the gate) can tell from the id alone whether it was issued to a tenant.

An id of one tenant passes the check for another only by a 1-in-2^32 coincidence, and the body
(96 bits) cannot be guessed. Ids built on a message id (``<id>.<n>`` per personalization,
SendGrid's ``sg_message_id`` with its ``.filter...`` suffix) are checked by the part before the
first dot. Job ids are keyed the same way (the ``verify-job`` subkey) without a tag: a job is
only ever looked up within its tenant. Pure but for the random ids.
"""

from __future__ import annotations

import hmac
import re
import secrets
from typing import Final

from streams.secret import ServerSecret

__all__ = ["MessageIds", "base_id"]

_BODY_BYTES: Final = 12
_TAG_BYTES: Final = 4
_ID = re.compile(r"[0-9a-f]{32}")


def base_id(message_id: str) -> str:
    """The issued id an id is built on: the part before the first dot."""
    return message_id.partition(".")[0]


def _framed(text: str) -> str:
    # length-prefixed, so a tenant or key holding the separator cannot stand for another pair
    return f"{len(text)}:{text}"


class MessageIds:
    def __init__(self, secret: ServerSecret) -> None:
        self._secret = secret

    def _body(self, purpose: str, tenant: str, idempotency_key: str | None) -> str:
        if idempotency_key is None:
            return secrets.token_hex(_BODY_BYTES)
        mac = self._secret.mac(purpose, _framed(tenant), _framed(idempotency_key))
        return mac[:_BODY_BYTES].hex()

    def _tag(self, tenant: str, body: str) -> str:
        return self._secret.mac("message-owner", _framed(tenant), body)[:_TAG_BYTES].hex()

    def message_id(self, tenant: str, idempotency_key: str | None) -> str:
        """A new message id: random, or fixed by the tenant's Idempotency-Key."""
        body = self._body("message-id", tenant, idempotency_key)
        return body + self._tag(tenant, body)

    def job_id(self, tenant: str, idempotency_key: str | None) -> str:
        """A verification job id: random, or fixed by the tenant's Idempotency-Key."""
        if idempotency_key is None:
            return secrets.token_hex(16)
        return self._secret.mac("verify-job", _framed(tenant), _framed(idempotency_key))[:16].hex()

    def issued_to(self, tenant: str, message_id: str) -> bool:
        """Whether ``message_id`` (or an id built on it) was issued to ``tenant``."""
        issued = base_id(message_id)
        if _ID.fullmatch(issued) is None:
            return False
        body, tag = issued[: 2 * _BODY_BYTES], issued[2 * _BODY_BYTES :]
        return hmac.compare_digest(self._tag(tenant, body), tag)

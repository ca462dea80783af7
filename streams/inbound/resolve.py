"""Resolving a return path's reference to its message and recipient, in PostgreSQL.

The token names the message and a tag of one recipient (streams/mail/verp.py); the ``messages``
table (the sinks' latest state per message and recipient) holds the candidates, and the one
whose tag this server computes for its tenant is the recipient. The categories and custom args
of the last event about it go on the bounce event too, as the deliver stage puts them on its own.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import asyncpg

from streams.db.events import labels_of
from streams.errors import UnreachableError
from streams.inbound.decide import Target
from streams.mail import unsubscribe
from streams.mail.verp import Reference, recipient_tag
from streams.secret import ServerSecret

__all__ = ["Resolver", "find_target", "for_token"]

# (tenant, message id, recipient) -> the tag a token of that kind would carry
Tagger = Callable[[str, str, str], bytes]

_CANDIDATES = "SELECT tenant_id, recipient, request_id FROM messages WHERE message_id = $1"


class Resolver:
    def __init__(self, dsn: str, secret: ServerSecret, *, pool_size: int = 4) -> None:
        self.dsn = dsn
        self.secret = secret
        self.pool_size = pool_size
        self.pool: asyncpg.Pool | None = None

    async def start(self) -> None:
        try:
            self.pool = await asyncpg.create_pool(
                self.dsn, min_size=1, max_size=self.pool_size, command_timeout=10
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise UnreachableError("postgres.unreachable", f"PostgreSQL: {exc}") from exc

    async def stop(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    async def target(self, reference: Reference) -> Target | None:
        """The message and recipient ``reference`` names, or None when no recipient of the
        message on record has its tag. UnreachableError when PostgreSQL does not answer."""
        return await self._find(reference.message_id, reference.tag, self._return_path_tag)

    async def unsubscriber(self, token: unsubscribe.Unsubscribe) -> Target | None:
        """The recipient an unsubscribe token names, as :meth:`target`, with the token's group."""
        found = await self._find(token.message_id, token.tag, self._unsubscribe_tag)
        return None if found is None else for_token(found, token)

    def _return_path_tag(self, tenant: str, message_id: str, recipient: str) -> bytes:
        return recipient_tag(self.secret, tenant, message_id, recipient)

    def _unsubscribe_tag(self, tenant: str, message_id: str, recipient: str) -> bytes:
        return unsubscribe.recipient_tag(self.secret, tenant, message_id, recipient)

    async def _find(self, message_id: str, tag: bytes, tagger: Tagger) -> Target | None:
        if self.pool is None:
            raise UnreachableError("postgres.unreachable", "the resolver is not started")
        try:
            async with self.pool.acquire() as conn:
                return await find_target(conn, message_id, tag, tagger)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise UnreachableError("postgres.unreachable", f"PostgreSQL: {exc}") from exc


async def find_target(conn: Any, message_id: str, tag: bytes, tagger: Tagger) -> Target | None:
    """Of ``message_id``'s recipients on record, the one whose tag (by ``tagger``) is ``tag``,
    with the categories, custom args and group of its last event; None when none has it."""
    for row in await conn.fetch(_CANDIDATES, message_id):
        tenant, recipient = row["tenant_id"], row["recipient"]
        if not hmac.compare_digest(tagger(tenant, message_id, recipient), tag):
            continue
        found = await labels_of(conn, tenant, message_id, recipient)
        return Target(
            tenant=tenant,
            message_id=message_id,
            recipient=recipient.lower(),
            request_id=row["request_id"] or None,
            categories=found.categories,
            custom_args=found.custom_args,
            asm_group_id=found.asm_group_id,
        )
    return None


def for_token(target: Target, token: unsubscribe.Unsubscribe) -> Target:
    """``target`` as an unsubscribe token names it: the group is the token's (signed into the
    link the recipient followed), whatever the last event said."""
    return replace(target, asm_group_id=token.group_id)

"""The one-click unsubscribe pair of a bulk message (RFC 2369, RFC 8058):

    List-Unsubscribe: <https://<public base>/u/<token>>,
     <mailto:<token>@<bounce domain>>   (tokens start with u)
    List-Unsubscribe-Post: List-Unsubscribe=One-Click

Added to mail of the bulk lane's priorities (``normal``, ``bulk``): what Gmail and Yahoo require of
bulk senders, and what a password reset has no use for. The mailto only with a bounce domain (it
is `postwire inbound` that takes it). A request that states its own List-Unsubscribe keeps its
own, and gets none of ours: the sender runs its own list. The token of mail of a suppression
group names the group, so the click leaves that group only. DKIM signs both
(``streams.mail.headers.SIGNED_HEADERS``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Final

from streams.contract.records import DeliveryTask
from streams.mail.headers import ONE_CLICK
from streams.mail.unsubscribe import encode, fits_local_part
from streams.secret import ServerSecret

__all__ = [
    "BULK_PRIORITIES",
    "Unsubscribe",
    "header_lines",
    "no_unsubscribe",
    "one_click",
    "unsubscribe_url",
]

# a task's unsubscribe header lines (CRLF-ended), b"" for none
Unsubscribe = Callable[[DeliveryTask], bytes]
BULK_PRIORITIES: Final = frozenset({"normal", "bulk"})


def no_unsubscribe(_task: DeliveryTask) -> bytes:
    return b""


def unsubscribe_url(public_base: str, token: str) -> str:
    return f"{public_base.rstrip('/')}/u/{token}"


def header_lines(url: str, mailto: str | None) -> bytes:
    """The pair, folded before the mailto (a URI itself is never folded)."""
    targets = f"<{url}>" if mailto is None else f"<{url}>,\r\n <mailto:{mailto}>"
    return f"List-Unsubscribe: {targets}\r\nList-Unsubscribe-Post: {ONE_CLICK}\r\n".encode("ascii")


def _states_its_own(task: DeliveryTask) -> bool:
    headers = task["content"].get("headers") or {}
    return any(name.lower() == "list-unsubscribe" for name in headers)


def one_click(
    secret: ServerSecret,
    public_base: str,
    bounce_domain: str = "",
    priorities: Collection[str] = BULK_PRIORITIES,
) -> Unsubscribe:
    """The pair for tasks of ``priorities``, with tokens signed by ``secret``."""

    def lines(task: DeliveryTask) -> bytes:
        if task["priority"] not in priorities or _states_its_own(task):
            return b""
        token = encode(
            secret,
            task["tenant"],
            task["message_id"],
            task["recipient"]["email"],
            task.get("asm_group_id"),
        )
        if token is None:
            return b""
        mailto = None
        if bounce_domain and fits_local_part(token):
            mailto = f"{token}@{bounce_domain}"
        return header_lines(unsubscribe_url(public_base, token), mailto)

    return lines

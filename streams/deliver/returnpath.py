"""The envelope sender (MAIL FROM) of a delivery: the From address, or, with a bounce domain,
the VERP return path that names the task's message and recipient (streams/mail/verp.py), so
a bounce after the 250 and a complaint come back to `postwire inbound` instead of the sender's
own mailbox."""

from __future__ import annotations

from collections.abc import Callable

from streams.contract.records import DeliveryTask
from streams.mail.verp import return_path
from streams.secret import ServerSecret

__all__ = ["ReturnPath", "from_address", "verp_return_path"]

ReturnPath = Callable[[DeliveryTask], str]


def from_address(task: DeliveryTask) -> str:
    """MAIL FROM as before a bounce domain: the From address itself."""
    return task["from"]["email"]


def verp_return_path(secret: ServerSecret, bounce_domain: str) -> ReturnPath:
    """MAIL FROM ``<token>@<bounce_domain>``; the From address for the rare message id that
    fits no token (streams/mail/verp.py says which)."""

    def sender(task: DeliveryTask) -> str:
        found = return_path(
            secret, bounce_domain, task["tenant"], task["message_id"], task["recipient"]["email"]
        )
        return found or from_address(task)

    return sender

"""A send request becomes one DeliveryTask per recipient (pure).

The gate applies the send policy here, before anything is queued: the request must have a sender
and content (else it is a dead letter as a whole), every recipient must be an address we can send
to (else a ``dropped`` event with reason ``invalid_address``), and a recipient on the tenant's
suppression list is ``dropped`` with reason ``suppressed``, and one who left the request's
suppression group (``asm_group_id``) with reason ``group_suppressed``. What remains is keyed by the
recipient's ASCII domain and put on the lane its priority chooses; a sandbox request's recipients
are ``dropped`` with reason ``sandbox`` instead (validated and recorded, never delivered).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from streams.contract.build import delivery_task, lane_of, make_event
from streams.contract.records import (
    Address,
    Content,
    DeliveryEvent,
    DeliveryTask,
    EmailRequest,
    Recipient,
)
from streams.errors import InvalidContentError
from streams.mail.limits import address_problem
from streams.mail.syntax import check_syntax

__all__ = ["Expansion", "Suppressed", "expand"]

# (tenant, address, suppression group or None) -> why mail is not sent there, or None
Suppressed = Callable[[str, str, int | None], str | None]


@dataclass
class Expansion:
    tasks: list[tuple[str, str, DeliveryTask]] = field(default_factory=list)  # (domain, lane, task)
    events: list[DeliveryEvent] = field(default_factory=list)


def _check_request(request: EmailRequest) -> tuple[Address, Content]:
    """The request's sender and content, once the request is known to be sendable."""
    sender = request["from"]
    if sender is None or not sender["email"]:
        raise InvalidContentError("from", "a send request needs a from address")
    if (problem := address_problem(sender["email"])) is not None:
        raise InvalidContentError("from", problem)
    content = request["content"]
    if content is None or not (content["text"] or content["html"] or content["template_id"]):
        raise InvalidContentError("content", "a send request needs text, html or a template_id")
    if not request["recipients"]:
        raise InvalidContentError("recipients", "a send request needs at least one recipient")
    return sender, content


def expand(request: EmailRequest, now: datetime, suppressed: Suppressed) -> Expansion:
    """Raises InvalidContentError for a request that cannot be sent to anyone."""
    sender, content = _check_request(request)
    tenant = request["tenant"]
    lane = lane_of(request["priority"])
    out = Expansion()
    seen: set[str] = set()
    for recipient in request["recipients"]:
        syntax = check_syntax(recipient["email"])
        if not syntax.valid or syntax.normalized is None or syntax.ascii_domain is None:
            reason = f"invalid_address: {syntax.error}"
            out.events.append(_dropped(request, recipient, recipient["email"], reason, now))
            continue
        local = syntax.local_part or ""
        if not local.isascii():
            reason = "invalid_address: a non-ASCII local part (SMTPUTF8) cannot be sent"
            out.events.append(_dropped(request, recipient, recipient["email"], reason, now))
            continue
        # the ASCII (IDNA) form on the envelope
        address = f"{local}@{syntax.ascii_domain}"
        if address.lower() in seen:
            continue
        seen.add(address.lower())
        if why := suppressed(tenant, address, request.get("asm_group_id")):
            out.events.append(_dropped(request, recipient, address, why, now))
            continue
        if request.get("sandbox"):
            out.events.append(_dropped(request, recipient, address, "sandbox", now))
            continue
        envelope: Recipient = {**recipient, "email": address}
        task = delivery_task(request, envelope, syntax.ascii_domain, sender=sender, content=content)
        out.tasks.append((syntax.ascii_domain, lane, task))
    return out


def _dropped(
    request: EmailRequest, recipient: Recipient, address: str, reason: str, now: datetime
) -> DeliveryEvent:
    message_id = request["request_id"]
    return make_event(
        "dropped",
        request["tenant"],
        now,
        request_id=message_id,
        message_id=message_id,
        recipient=address,
        reason=reason,
        categories=request["categories"],
        custom_args={**request["custom_args"], **recipient["custom_args"]},
        asm_group_id=request.get("asm_group_id"),
    )

"""One delivery attempt: render, sign, respect the breaker and the throttles, send, conclude.

The pure decisions live in core.py, bounce.py, retry.py, breaker.py and throttle.py; this is the
I/O glue around them, free of faust so it can be driven directly in tests and benchmarks.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from streams.clock import Clock
from streams.contract.records import DeliveryTask
from streams.deliver.breaker import Breaker, BreakerPolicy
from streams.deliver.core import Conclusion, conclude, postpone
from streams.deliver.dkim import Signer
from streams.deliver.mime import Prepared, StoredTemplate, prepare
from streams.deliver.retry import RetryPolicy
from streams.deliver.throttle import DestinationThrottle
from streams.deliver.transport import Transport
from streams.obs.metrics import smtp_result

__all__ = ["Deliverer", "DeliveryRules"]

TemplateLookup = Callable[[str, str], StoredTemplate | None]
PREPARED_CACHE = 256  # requests whose invariant part is kept; a bulk campaign needs one


def _same_domain(domain: str) -> str:
    return domain


@dataclass(frozen=True)
class DeliveryRules:
    """How delivery behaves: the retry ladder, when a destination's breaker opens, how long a
    tenant's throttled send waits in place (the site's rate is the transport's), and where a
    domain's mail goes (itself, or the relay)."""

    retry: RetryPolicy
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    throttle_max_wait: float = 5.0
    destination: Callable[[str], str] = _same_domain


class Deliverer:
    def __init__(
        self,
        transport: Transport,
        signer: Signer,
        throttle: DestinationThrottle,
        rules: DeliveryRules,
        *,
        templates: TemplateLookup | None = None,
        clock: Clock,
    ) -> None:
        self.transport = transport
        self.signer = signer
        self.throttle = throttle
        self.policy = rules.retry
        self.breaker_policy = rules.breaker
        self.destination = rules.destination
        self.throttle_max_wait = rules.throttle_max_wait
        self.templates = templates or (lambda _tenant, _template_id: None)
        self.clock = clock
        self.breakers: dict[str, Breaker] = {}
        self._prepared: OrderedDict[str, Prepared] = OrderedDict()

    def prepared(self, task: DeliveryTask) -> Prepared:
        """The request's invariant part, built once and shared by all its recipients. Raises
        RenderError (never retriable: the same request renders the same way every time)."""
        key = task["message_id"]
        found = self._prepared.get(key)
        if found is not None:
            self._prepared.move_to_end(key)
            return found
        template_id = task["content"]["template_id"]
        template = self.templates(task["tenant"], template_id) if template_id else None
        found = prepare(task, template)
        self._prepared[key] = found
        if len(self._prepared) > PREPARED_CACHE:
            self._prepared.popitem(last=False)
        return found

    def breaker(self, destination: str) -> Breaker:
        breaker = self.breakers.get(destination)
        if breaker is None:
            breaker = self.breakers[destination] = Breaker(self.breaker_policy)
        return breaker

    async def site(self, domain: str) -> str:
        """The destination site mail to ``domain`` goes to (through the MX cache): what a
        scheduler in front of ``attempt`` queues a task by, and shaping keys its states by."""
        return await self.transport.site(domain)

    async def attempt(self, task: DeliveryTask) -> Conclusion:
        """Try ``task`` once. Raises RenderError / DkimError for a message that cannot be built."""
        prepared = self.prepared(task)
        destination = self.destination(task["domain"])
        breaker = self.breaker(destination)
        now = self.clock()
        if not breaker.allow(now.timestamp()):
            wait = max(breaker.retry_after(now.timestamp()), 1.0)
            return postpone(
                task,
                now + timedelta(seconds=wait),
                f"circuit_open: {destination} is paused after repeated connection failures",
                now,
            )
        tenant = task["tenant"]
        while True:
            wait = self.throttle.take_tenant(tenant, now.timestamp())
            if wait <= 0:
                break
            if wait > self.throttle_max_wait:
                return postpone(
                    task, now + timedelta(seconds=wait), f"throttled: tenant {tenant} rate", now
                )
            await asyncio.sleep(wait)
            now = self.clock()
        header_id = f"<{task['task_id']}@{prepared.sender_domain}>"
        message = prepared.render(task["recipient"], header_id)
        signed = await self.signer.sign_async(message, task["tenant"], prepared.sender_domain, now)
        delivery = await self.transport.send(
            task["domain"], task["from"]["email"], task["recipient"]["email"], signed
        )
        outcome = delivery.outcome
        done = self.clock()
        if delivery.retry_after is not None:
            # a limit of the site's held it back: not sent, so the tenant's token was not spent
            self.throttle.give_back_tenant(tenant)
            return postpone(
                task, done + timedelta(seconds=delivery.retry_after), outcome.text, done
            )
        smtp_result(str(outcome.disposition), outcome.category)
        if outcome.destination_failure:
            breaker.record_failure(done.timestamp())
        else:
            breaker.record_success(done.timestamp())
        return conclude(task, outcome, done, self.policy, delivery.host)

    def prune(self) -> None:
        now = self.clock().timestamp()
        self.throttle.prune(now)
        idle = [d for d, b in self.breakers.items() if b.idle(now)]
        for destination in idle:
            del self.breakers[destination]

    async def close(self) -> None:
        await self.transport.close()
        await self.throttle.slots.close()
        self.signer.close()

"""One delivery attempt: render, sign, respect the breaker and the throttles, send, conclude.

The pure decisions live in core.py, bounce.py, retry.py, breaker.py and throttle.py; this is the
I/O glue around them, free of faust so it can be driven directly in tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from streams.clock import Clock
from streams.contract.records import DeliveryTask
from streams.deliver.breaker import Breaker, BreakerPolicy
from streams.deliver.core import Conclusion, conclude, postpone
from streams.deliver.dkim import Signer
from streams.deliver.mime import Prepared, StoredTemplate, prepare
from streams.deliver.retry import RetryPolicy
from streams.deliver.returnpath import ReturnPath, from_address
from streams.deliver.shaping import Fired, Reply, Shaping
from streams.deliver.throttle import DestinationThrottle
from streams.deliver.tracking import Links, Tracker
from streams.deliver.transport import Transport
from streams.deliver.unsubscribe import Unsubscribe, no_unsubscribe
from streams.obs.metrics import shaping_fired, shaping_sites, smtp_result

__all__ = ["Deliverer", "DeliveryRules", "SiteCapacity"]

log = logging.getLogger("postwire.deliver")

TemplateLookup = Callable[[str, str], StoredTemplate | None]
SIGN_AHEAD = 2  # turns granted per session a site may have: one on the wire, one being signed
PREPARED_CACHE = 256  # requests whose invariant part is kept; a bulk campaign needs one


def _same_domain(domain: str) -> str:
    return domain


@dataclass(frozen=True)
class DeliveryRules:
    """How delivery behaves: the retry ladder, when a destination's breaker opens, how long a
    tenant's throttled send waits in place (the site's rate is the transport's), where a domain's
    mail goes (itself, or the relay), the envelope sender (the From, or a VERP return path on
    the bounce domain), the one-click unsubscribe headers of bulk mail, and who issues open
    and click tracking links (none: tracked requests go out untracked)."""

    retry: RetryPolicy
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    throttle_max_wait: float = 5.0
    destination: Callable[[str], str] = _same_domain
    return_path: ReturnPath = from_address
    unsubscribe: Unsubscribe = no_unsubscribe
    tracker: Tracker | None = None


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
        shaping: Shaping | None = None,
    ) -> None:
        self.transport = transport
        self.signer = signer
        self.throttle = throttle
        self.policy = rules.retry
        self.breaker_policy = rules.breaker
        self.destination = rules.destination
        self.throttle_max_wait = rules.throttle_max_wait
        self.return_path = rules.return_path
        self.unsubscribe = rules.unsubscribe
        self.tracker = rules.tracker
        self.templates = templates or (lambda _tenant, _template_id: None)
        self.clock = clock
        self.breakers: dict[str, Breaker] = {}
        self.shaping = shaping or Shaping()
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

    def _links(self, prepared: Prepared, task: DeliveryTask, now: datetime) -> Links | None:
        if self.tracker is None or not prepared.tracked:
            return None
        recipient, issued = task["recipient"]["email"], int(now.timestamp())
        return self.tracker.links(task["tenant"], task["message_id"], recipient, issued)

    def breaker(self, destination: str) -> Breaker:
        breaker = self.breakers.get(destination)
        if breaker is None:
            breaker = self.breakers[destination] = Breaker(self.breaker_policy)
        return breaker

    async def site(self, domain: str) -> str:
        """The destination site mail to ``domain`` goes to (through the MX cache): what a
        scheduler in front of ``attempt`` queues a task by, and shaping keys its states by."""
        return await self.transport.site(domain)

    def held_reason(self, site: str, now: float) -> str:
        """Why the scheduler handed back a task of ``site`` (its queue stopped too long)."""
        state = self.shaping.suspension(site, now)
        if state is not None:
            return f"suspended: {state.suspend_rule}"
        return f"throttled: {site} rate"

    def capacity(self) -> SiteCapacity:
        """What the sites allow, for the scheduler (``schedule.Capacity``)."""
        return SiteCapacity(self)

    async def attempt(self, task: DeliveryTask) -> Conclusion:
        """Try ``task`` once, waiting out its tenant's rate of up to ``throttle_max_wait`` in
        place (the site's rate is the transport's). Raises RenderError / DkimError for a
        message that cannot be built."""
        self.prepared(task)  # a message that cannot be built fails before any wait
        site = await self.site(task["domain"])
        tenant = task["tenant"]
        now = self.clock()
        while True:
            if self._suspended(task, site, now) is not None:
                break  # send_now puts it back
            wait = self.throttle.take_tenant(tenant, now.timestamp())
            if wait <= 0:
                break
            if wait > self.throttle_max_wait:
                return postpone(
                    task, now + timedelta(seconds=wait), f"throttled: tenant {tenant} rate", now
                )
            await asyncio.sleep(wait)
            now = self.clock()
        return await self.send_now(task)

    async def send_now(self, task: DeliveryTask) -> Conclusion:
        """Send ``task`` now: its turn was granted (its tenant's token taken; the site's rate and
        a connection are waited for in the transport). Raises RenderError / DkimError for a
        message that cannot be built."""
        prepared = self.prepared(task)
        destination = self.destination(task["domain"])
        site = await self.site(task["domain"])
        breaker = self.breaker(destination)
        now = self.clock()
        tenant = task["tenant"]
        held = self._suspended(task, site, now)
        if held is not None:
            self.throttle.give_back_tenant(tenant)
            return held
        if not breaker.allow(now.timestamp()):
            self.throttle.give_back_tenant(tenant)
            wait = max(breaker.retry_after(now.timestamp()), 1.0)
            return postpone(
                task,
                now + timedelta(seconds=wait),
                f"circuit_open: {destination} is paused after repeated connection failures",
                now,
            )
        self.throttle.scale(site, self.shaping.rate_factor(site, now.timestamp()), now.timestamp())
        header_id = f"<{task['task_id']}@{prepared.sender_domain}>"
        message = prepared.render(
            task["recipient"],
            header_id,
            self.unsubscribe(task),
            self._links(prepared, task, now),
        )
        signed = await self.signer.sign_async(message, task["tenant"], prepared.sender_domain, now)
        delivery = await self.transport.send(
            task["domain"], self.return_path(task), task["recipient"]["email"], signed
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
        reply = Reply(outcome.code, outcome.enhanced, outcome.text, delivery.host)
        self._fired(self.shaping.observe(site, reply, done.timestamp()), done)
        return self._not_before_resume(
            conclude(task, outcome, done, self.policy, delivery.host), site, done
        )

    def _suspended(self, task: DeliveryTask, site: str, now: datetime) -> Conclusion | None:
        """The task put back until its site's suspension ends, without spending an attempt."""
        state = self.shaping.suspension(site, now.timestamp())
        if state is None:
            return None
        until = datetime.fromtimestamp(state.suspended_until, UTC)
        return postpone(task, until, f"suspended: {state.suspend_rule}", now)

    def _not_before_resume(self, conclusion: Conclusion, site: str, now: datetime) -> Conclusion:
        """A retry due while its site is suspended would only be postponed again on arrival."""
        state = self.shaping.suspension(site, now.timestamp())
        retry = conclusion.retry
        if state is None or retry is None:
            return conclusion
        resume = datetime.fromtimestamp(state.suspended_until, UTC)
        if retry["not_before"] is not None and retry["not_before"] >= resume:
            return conclusion
        wait_ms = max(int((resume - now).total_seconds() * 1000), 0)
        return replace(
            conclusion,
            retry={**retry, "not_before": resume},
            event={**conclusion.event, "retry_after_ms": wait_ms},
        )

    def _fired(self, fired: list[Fired], now: datetime) -> None:
        for action in fired:
            shaping_fired(action.rule, action.action)
            until = datetime.fromtimestamp(action.until, UTC).isoformat(timespec="seconds")
            how = "suspended" if action.action == "suspend" else f"slowed to x{action.factor:g}"
            log.warning(
                "shaping: %s %s until %s by rule %s after %r",
                action.site,
                how,
                until,
                action.rule,
                action.reply,
            )
        if fired:
            self.shaping_changed(now)

    def shaping_changed(self, now: datetime) -> None:
        """Refresh the gauge of shaped sites (after a rule fired, at expiry)."""
        shaping_sites(*self.shaping.counts(now.timestamp()))

    def prune(self) -> None:
        clock = self.clock()
        now = clock.timestamp()
        for site in self.shaping.prune(now):
            self.throttle.scale(site, 1.0, now)
            log.info("shaping: %s restored", site)
        self.shaping_changed(clock)
        self.throttle.prune(now)
        idle = [d for d, b in self.breakers.items() if b.idle(now)]
        for destination in idle:
            del self.breakers[destination]

    async def close(self) -> None:
        await self.transport.close()
        await self.throttle.slots.close()
        self.signer.close()


class SiteCapacity:
    """The scheduler's view of the sites (``schedule.Capacity``): connection limits from the
    throttle (held across processes by its slots), a suspended site waits for its end, the
    site's rate (this process's share of it) and the tenant's."""

    def __init__(self, deliverer: Deliverer) -> None:
        self.deliverer = deliverer
        self.throttle = deliverer.throttle

    def connections(self, site: str) -> int:
        # twice the site's connection limit: a turn renders and signs before it needs its
        # session, so each session has the next message signed while one goes over the wire;
        # the pool keeps the sessions themselves to the limit (a turn waits there, in order)
        return SIGN_AHEAD * self.throttle.limit(site).connections

    def site_wait(self, site: str, now: float) -> float:
        deliverer = self.deliverer
        suspended = deliverer.shaping.suspension(site, now)
        if suspended is not None:  # a receiver said to stop (shaping, in every process)
            return max(suspended.suspended_until - now, 0.001)
        # a rate cut by shaping applies before the next token is counted
        self.throttle.scale(site, deliverer.shaping.rate_factor(site, now), now)
        return self.throttle.site_wait(site, now)

    def tenant_wait(self, tenant: str, now: float) -> float:
        return self.throttle.tenant_wait(tenant, now)

    def take(self, tenant: str, site: str, now: float) -> None:
        # the tenant's token now; the site's is taken by the transport with the session held
        self.throttle.take_tenant(tenant, now)

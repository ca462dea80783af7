"""The domain's policies, built from the settings: the delivery group's retry ladder,
per-destination limits, circuit breaker and envelope sender, and the gate's trust (keys from the
server secret).
Here, in the runtime, so that the settings module imports no domain code."""

from __future__ import annotations

import orjson

from streams.contract.ids import MessageIds
from streams.contract.signing import INGRESS_PURPOSE
from streams.deliver.breaker import BreakerPolicy
from streams.deliver.retry import RetryPolicy, tier_name, tier_topics
from streams.deliver.returnpath import ReturnPath, from_address, verp_return_path
from streams.deliver.shaping import Rule
from streams.deliver.shaping_file import load_rules
from streams.deliver.throttle import DestinationLimits, Limit
from streams.errors import ConfigError
from streams.gate.trust import Trust
from streams.kafka.topics import webhook_tier_topic
from streams.secret import ServerSecret
from streams.settings import DeliverySettings, Settings, WebhookSettings

__all__ = [
    "breaker_policy",
    "delay_topics",
    "destination_limits",
    "gate_trust",
    "retry_policy",
    "return_path",
    "shaping_rules",
    "webhook_breaker_policy",
    "webhook_delay_topics",
    "webhook_retry_policy",
]


def gate_trust(secret: ServerSecret) -> Trust:
    """What the gate verifies signatures and message owners with."""
    return Trust(secret.subkey(INGRESS_PURPOSE), MessageIds(secret))


def return_path(delivery: DeliverySettings, secret: ServerSecret | None) -> ReturnPath:
    """MAIL FROM: a VERP return path signed with ``secret`` when a bounce domain is set, else
    the From address."""
    if not delivery.bounce_domain:
        return from_address
    if secret is None:
        raise ConfigError("POSTWIRE_BOUNCE_DOMAIN is set but no server secret signs its tokens")
    return verp_return_path(secret, delivery.bounce_domain)


def retry_policy(delivery: DeliverySettings) -> RetryPolicy:
    return RetryPolicy(
        delivery.retry_first,
        delivery.retry_factor,
        delivery.retry_cap,
        delivery.retry_max_age,
        delivery.retry_tiers,
    )


def destination_limits(delivery: DeliverySettings) -> DestinationLimits:
    default = Limit(delivery.dest_connections, delivery.dest_rate, delivery.dest_burst)
    rate, burst = delivery.tenant_send_rate, delivery.tenant_send_burst
    if not delivery.dest_overrides.strip():
        return DestinationLimits(default, tenant_rate=rate, tenant_burst=burst)
    raw = orjson.loads(delivery.dest_overrides)
    overrides = {name: Limit(**limit) for name, limit in raw.items()}
    return DestinationLimits(default, overrides=overrides, tenant_rate=rate, tenant_burst=burst)


def breaker_policy(delivery: DeliverySettings) -> BreakerPolicy:
    return BreakerPolicy(threshold=delivery.breaker_threshold, cool_down=delivery.breaker_cool_down)


def shaping_rules(delivery: DeliverySettings) -> tuple[Rule, ...]:
    """The shipped shaping rules merged with the operator's file; a bad file is a ConfigError
    naming the rule and the field."""
    return load_rules(delivery.shaping_file)


def delay_topics(settings: Settings) -> list[str]:
    """The retry ladder's delay topics, which ``streams.kafka.topics`` creates with the rest."""
    return tier_topics(retry_policy(settings.delivery), settings.topics.prefix)


def webhook_retry_policy(webhooks: WebhookSettings) -> RetryPolicy:
    """The webhook posts' ladder: the delivery ladder's rules with the webhook's own times."""
    return RetryPolicy(
        webhooks.retry_first,
        webhooks.retry_factor,
        webhooks.retry_cap,
        webhooks.retry_max_age,
        webhooks.retry_tiers,
    )


def webhook_breaker_policy(webhooks: WebhookSettings) -> BreakerPolicy:
    return BreakerPolicy(
        threshold=webhooks.breaker_threshold,
        cool_down=webhooks.breaker_cool_down,
        max_cool_down=max(webhooks.breaker_cool_down, 600.0),
        probe_timeout=max(webhooks.timeout * 3, 30.0),
    )


def webhook_delay_topics(settings: Settings) -> list[str]:
    """The webhook retry tiers' delay topics (``postwire.webhooks.retry.<tier>``)."""
    prefix = settings.topics.prefix
    return [webhook_tier_topic(prefix, tier_name(t)) for t in settings.webhooks.retry_tiers]

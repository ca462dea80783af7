"""The topics postwire owns, and their idempotent creation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from streams.errors import StackError
from streams.kafka.config import KafkaSettings, TopicNames, client_options
from streams.kafka.connect import start_client

__all__ = [
    "CHANGELOG_CONFIG",
    "TopicNames",
    "TopicSpec",
    "changelog_topic",
    "ensure_topics",
    "topic_specs",
    "webhook_tier_topic",
]

# state changelogs are rewritten all the time, and a restart reads a changelog from a table's
# mark (or, for a new table, from its start): compaction must really run so it holds about one
# record per live key. The log cleaner never touches the active segment, so segments roll
# every 10 minutes or 64 MiB (the broker's 1 GiB default would keep a busy gate's last hours
# uncompacted); a partition is cleaned once a tenth of it is dirty, and in any case within 30
# minutes of a write (max.compaction.lag.ms). Deletions (expired dedup keys, ledger entries)
# stay 4 hours after compaction: a table kept on disk whose mark is older than that may have
# missed one and is rebuilt (streams/runtime/checkpoint.py); longer would keep a day's
# tombstones next to a day of dedup keys.
CHANGELOG_CONFIG = {
    "cleanup.policy": "compact",
    "segment.ms": str(10 * 60 * 1000),
    "segment.bytes": str(64 * 1024 * 1024),
    "min.cleanable.dirty.ratio": "0.1",
    "min.compaction.lag.ms": "0",
    "max.compaction.lag.ms": str(30 * 60 * 1000),
    "delete.retention.ms": str(4 * 3600 * 1000),
}


def changelog_topic(app_id: str, store: str) -> str:
    return f"{app_id}-{store}-changelog"


_WEEK_MS = 7 * 24 * 3600 * 1000
# the batch runtime's state stores (streams/worker/app.py builds them); each has a changelog topic
STORES = {
    "gate": "gate state: rate windows, dedup keys, replay watermarks, throttle memos",
    "verdicts": "verify: probe verdicts by address",
    "sent-tx": "deliver: task ids a receiver accepted, transactional lane",
}


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)
    purpose: str = ""
    replication: int = 1

    @property
    def compacted(self) -> bool:
        return self.config.get("cleanup.policy") == "compact"


def topic_specs(
    kafka: KafkaSettings,
    delay_topics: Sequence[str] = (),
    webhook_delays: Sequence[str] = (),
) -> list[TopicSpec]:
    """Every topic postwire owns; ``delay_topics``: the retry ladder's, which delivery names;
    ``webhook_delays``: the webhook retry tiers' (``webhook_tier_topic``)."""
    t, n = kafka.topics, kafka.partitions
    log = {"cleanup.policy": "delete", "retention.ms": str(_WEEK_MS)}
    # latest value per key is the truth (like a table changelog): compaction keeps it forever
    table = {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"}
    changelog = CHANGELOG_CONFIG
    specs = [
        TopicSpec(t.requests, n, log, "EmailRequest from producers, key = tenant"),
        TopicSpec(t.accepted, n, log, "EmailRequest that passed the gate, key = tenant"),
        TopicSpec(t.rejections, n, {**log, "retention.ms": str(4 * _WEEK_MS)}, "dead letters"),
        TopicSpec(t.verify, n, log, "addresses to verify, key = recipient domain"),
        TopicSpec(t.verifications, n, log, "VerificationResult"),
        TopicSpec(t.deliveries, n, log, "DeliveryTask, bulk lane (normal/bulk), key = domain"),
        TopicSpec(t.deliveries_tx, n, log, "DeliveryTask, transactional lane, key = domain"),
        *(
            TopicSpec(name, n, log, "DeliveryTask waiting for its next attempt, key = domain")
            for name in delay_topics
        ),
        TopicSpec(t.queue, n, table, "deferred and held tasks (mailq), key = task id"),
        TopicSpec(t.events, n, log, "DeliveryEvent"),
        TopicSpec(t.webhooks, n, log, "WebhookBatch: a post to a tenant's webhook, key = tenant"),
        *(
            TopicSpec(name, n, log, "WebhookBatch waiting for its next post, key = tenant")
            for name in webhook_delays
        ),
        TopicSpec(
            t.deferred, n, log, "rate-limited requests waiting for their window, key = tenant"
        ),
        # kept forever: a hold stays in force until released, however long that takes
        TopicSpec(
            t.control,
            1,
            {"cleanup.policy": "delete", "retention.ms": "-1"},
            "queue control commands the workers obey",
        ),
        # one partition: every delivery process reads all of it, like the control topic
        TopicSpec(t.shaping, 1, table, "shaping state per destination site, key = site"),
        TopicSpec(t.suppressions, n, table, "suppression list, key = tenant + address digest"),
        TopicSpec(t.tenants, 1, table, "tenant settings, key = tenant"),
        # made before any worker joins: a store's changelog must exist when its stage starts
        *(
            TopicSpec(changelog_topic(kafka.app_id, name), n, changelog, purpose)
            for name, purpose in STORES.items()
        ),
    ]
    # every topic: as many replicas as configured, and acks=all writes wait for this many
    insync = {"min.insync.replicas": str(kafka.min_insync_replicas)}
    return [
        replace(spec, config={**spec.config, **insync}, replication=kafka.replication_factor)
        for spec in specs
    ]


def webhook_tier_topic(prefix: str, name: str) -> str:
    """``("postwire", "30s")`` -> ``"postwire.webhooks.retry.30s"``."""
    return f"{prefix}.webhooks.retry.{name}"


async def ensure_topics(
    kafka: KafkaSettings, delay_topics: Sequence[str] = (), webhook_delays: Sequence[str] = ()
) -> list[str]:
    """Create missing topics; return the names created. Existing topics are left as they are."""
    options = client_options(kafka)
    admin = AIOKafkaAdminClient(**options, request_timeout_ms=10000)
    try:
        await start_client(admin, options)
        existing = set(await admin.list_topics())
        missing = [
            s for s in topic_specs(kafka, delay_topics, webhook_delays) if s.name not in existing
        ]
        if missing:
            new = [
                NewTopic(s.name, s.partitions, s.replication, topic_configs=s.config)
                for s in missing
            ]
            response = await admin.create_topics(new)
            # per-topic failures come back as error codes, not exceptions
            failed = [
                f"{err[0]}: error {err[1]}"
                for err in response.topic_errors
                if err[1] not in (0, TopicAlreadyExistsError.errno)
            ]
            if failed:
                raise StackError(f"could not create topics: {', '.join(failed)}")
        return [s.name for s in missing]
    except KafkaError as exc:
        raise StackError(f"could not create topics on {kafka.bootstrap}: {exc}") from exc
    finally:
        await admin.close()

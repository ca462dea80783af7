"""What a Kafka client of postwire needs to know: the cluster, the topic names, the group, and
the consumer and producer timings. ``streams.settings`` fills it from ``POSTWIRE_*``."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KafkaSettings", "TopicNames"]


class TopicNames:
    """Topic names derived from one prefix so a second pipeline can share a cluster."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.requests = f"{prefix}.requests"
        self.accepted = f"{prefix}.accepted"
        self.rejections = f"{prefix}.rejections"
        self.verify = f"{prefix}.verify"
        self.verifications = f"{prefix}.verifications"
        self.deliveries = f"{prefix}.deliveries"
        self.events = f"{prefix}.events"
        self.control = f"{prefix}.control"
        self.suppressions = f"{prefix}.suppressions"
        self.tenants = f"{prefix}.tenants"
        self.deferred = f"{prefix}.deferred"
        # the transactional lane (critical/high): its own topic and consumers, so a bulk
        # backlog on ``deliveries`` never stands in front of a password reset
        self.deliveries_tx = f"{prefix}.deliveries.tx"
        # the mail queue as operators see it (mailq): latest state per deferred or held task
        self.queue = f"{prefix}.queue"

    def lane(self, lane: str) -> str:
        return self.deliveries_tx if lane == "tx" else self.deliveries


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str
    topics: TopicNames
    app_id: str = "postwire"
    partitions: int = 4
    replication_factor: int = 1
    session_timeout: float = 10.0
    heartbeat_interval: float = 1.0
    rebalance_timeout: float = 10.0
    commit_interval: float = 0.5
    producer_linger_ms: int = 2

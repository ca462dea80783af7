"""How the cluster's topics differ from what postwire would create (``topic_specs``): their
partitions, replicas and the configs postwire sets (cleanup.policy, min.insync.replicas,
retention, max.message.bytes when a spec sets it). ``ensure_topics`` never changes a topic that
exists, so a topic made under other settings (one broker then, three now) keeps them until an
operator alters it; ``postwire topics`` shows the drift and the command that mends each.

``topic_drift`` is the pure comparison; ``read_topics`` asks the cluster."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from streams.errors import StackError
from streams.kafka.config import KafkaSettings, client_options
from streams.kafka.connect import start_client
from streams.kafka.topics import TopicSpec

__all__ = ["Drift", "TopicState", "read_topics", "topic_drift", "topic_states"]


@dataclass(frozen=True)
class TopicState:
    """A topic as the cluster has it: replicas and in-sync replicas per partition (in
    partition order), and its effective configs (overrides and the broker's defaults)."""

    replicas: tuple[int, ...]
    in_sync: tuple[int, ...]
    config: Mapping[str, str]

    @property
    def partitions(self) -> int:
        return len(self.replicas)

    @property
    def under_replicated(self) -> int:
        """Partitions with a replica out of sync (a broker down or catching up): health, not
        drift."""
        return sum(isr < n for isr, n in zip(self.in_sync, self.replicas, strict=True))


@dataclass(frozen=True)
class Drift:
    setting: str  # "partitions", "replication" or a topic config's name
    configured: str
    actual: str
    fix: str  # the command that makes the topic what is configured (or why none can)

    def __str__(self) -> str:
        return f"{self.setting} {self.actual} (configured {self.configured})"


def topic_drift(spec: TopicSpec, state: TopicState) -> list[Drift]:
    """Every difference between ``spec`` and the topic the cluster has."""
    name = spec.name
    found: list[Drift] = []
    if state.partitions != spec.partitions:
        if state.partitions < spec.partitions:
            fix = (
                f"kafka-topics.sh --alter --topic {name} --partitions {spec.partitions} "
                "(keys then map to other partitions: do it while the topic is drained)"
            )
        else:
            fix = (
                "Kafka cannot take partitions away: set POSTWIRE_PARTITIONS="
                f"{state.partitions}, or delete the topic and run `postwire topics`"
            )
        found.append(Drift("partitions", str(spec.partitions), str(state.partitions), fix))
    counts = sorted(set(state.replicas))
    if counts != [spec.replication]:
        actual = "/".join(str(n) for n in counts) or "0"
        fix = (
            f"kafka-reassign-partitions.sh --execute with a plan giving each partition of "
            f"{name} {spec.replication} replicas (or set POSTWIRE_REPLICATION_FACTOR={actual})"
        )
        found.append(Drift("replication", str(spec.replication), actual, fix))
    for key, wanted in sorted(spec.config.items()):
        have = state.config.get(key)
        if have != wanted:
            fix = (
                f"kafka-configs.sh --alter --entity-type topics --entity-name {name} "
                f"--add-config {key}={wanted}"
            )
            found.append(Drift(key, wanted, "unset" if have is None else have, fix))
    return found


def topic_states(topics: Sequence[Any], configs: Sequence[Any]) -> dict[str, TopicState]:
    """TopicStates from a metadata response's ``topics`` (``describe_topics``) and
    DescribeConfigs responses; topics the cluster does not have are left out."""
    found: dict[str, dict[str, str]] = {}
    for response in configs:
        for resource in response.resources:
            error_code, _message, _kind, name, entries = resource[:5]
            if error_code == 0:
                found[name] = {e[0]: e[1] for e in entries if e[1] is not None}
    states = {}
    for topic in topics:
        if topic["error_code"] != 0:
            continue
        parts = sorted(topic["partitions"], key=lambda p: p["partition"])
        states[topic["topic"]] = TopicState(
            replicas=tuple(len(p["replicas"]) for p in parts),
            in_sync=tuple(len(p["isr"]) for p in parts),
            config=found.get(topic["topic"], {}),
        )
    return states


async def read_topics(kafka: KafkaSettings, names: Sequence[str]) -> dict[str, TopicState]:
    """The cluster's view of ``names`` (those it has)."""
    options = client_options(kafka)
    admin = AIOKafkaAdminClient(**options, request_timeout_ms=10000)
    try:
        await start_client(admin, options)
        topics = await admin.describe_topics(list(names))
        present = [t["topic"] for t in topics if t["error_code"] == 0]
        resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in present]
        configs = await admin.describe_configs(resources) if resources else []
        return topic_states(topics, configs)
    except KafkaError as exc:
        raise StackError(f"could not describe the topics on {kafka.bootstrap}: {exc}") from exc
    finally:
        await admin.close()

"""The drift between a topic postwire would create and the one the cluster has (pure)."""

from __future__ import annotations

from types import SimpleNamespace

from streams.kafka.config import KafkaSettings, TopicNames
from streams.kafka.drift import Drift, TopicState, topic_drift, topic_states
from streams.kafka.topics import TopicSpec, topic_specs

SPEC = TopicSpec(
    "pw.events",
    4,
    {"cleanup.policy": "delete", "min.insync.replicas": "2", "retention.ms": "604800000"},
    replication=3,
)
AS_MADE = {"cleanup.policy": "delete", "min.insync.replicas": "2", "retention.ms": "604800000"}


def _state(replicas: tuple[int, ...] = (3, 3, 3, 3), **config: str) -> TopicState:
    return TopicState(replicas, replicas, {**AS_MADE, "segment.ms": "604800000", **config})


def test_a_topic_as_configured_has_no_drift() -> None:
    # configs postwire does not set (segment.ms here) are the cluster's business
    assert topic_drift(SPEC, _state()) == []


def test_every_difference_is_named_with_its_fix() -> None:
    state = _state((1, 1), **{"min.insync.replicas": "1", "cleanup.policy": "compact"})
    found = {d.setting: d for d in topic_drift(SPEC, state)}
    assert set(found) == {"partitions", "replication", "min.insync.replicas", "cleanup.policy"}
    assert str(found["partitions"]) == "partitions 2 (configured 4)"
    assert "--partitions 4" in found["partitions"].fix
    assert str(found["replication"]) == "replication 1 (configured 3)"
    assert "kafka-reassign-partitions.sh" in found["replication"].fix
    assert found["min.insync.replicas"] == Drift(
        "min.insync.replicas",
        "2",
        "1",
        "kafka-configs.sh --alter --entity-type topics --entity-name pw.events "
        "--add-config min.insync.replicas=2",
    )
    assert found["cleanup.policy"].actual == "compact"


def test_more_partitions_than_configured_cannot_be_mended_by_kafka() -> None:
    (drift,) = topic_drift(SPEC, _state((3,) * 6))
    assert (drift.setting, drift.configured, drift.actual) == ("partitions", "4", "6")
    assert "cannot take partitions away" in drift.fix
    assert "POSTWIRE_PARTITIONS=6" in drift.fix


def test_partitions_with_different_replica_counts_show_each() -> None:
    (drift,) = topic_drift(SPEC, _state((3, 2, 3, 3)))
    assert (drift.setting, drift.actual) == ("replication", "2/3")


def test_a_config_the_cluster_does_not_report_is_unset() -> None:
    state = TopicState(
        (3,) * 4, (3,) * 4, {"cleanup.policy": "delete", "retention.ms": "604800000"}
    )
    (drift,) = topic_drift(SPEC, state)
    assert (drift.setting, drift.actual) == ("min.insync.replicas", "unset")


def test_max_message_bytes_is_compared_where_a_spec_sets_it() -> None:
    spec = TopicSpec("pw.x", 1, {"max.message.bytes": "2097152"}, replication=1)
    state = TopicState((1,), (1,), {"max.message.bytes": "1048588"})
    assert [str(d) for d in topic_drift(spec, state)] == [
        "max.message.bytes 1048588 (configured 2097152)"
    ]


def test_under_replicated_partitions_are_counted_not_drift() -> None:
    state = TopicState((3, 3, 3, 3), (3, 2, 3, 1), AS_MADE)
    assert state.under_replicated == 2
    assert topic_drift(SPEC, state) == []


def test_states_are_read_from_metadata_and_config_responses() -> None:
    topics = [
        {
            "error_code": 0,
            "topic": "pw.events",
            "partitions": [
                {"partition": 1, "replicas": [2, 3], "isr": [2]},
                {"partition": 0, "replicas": [1, 2, 3], "isr": [1, 2, 3]},
            ],
        },
        {"error_code": 3, "topic": "pw.missing", "partitions": []},
    ]
    entries = [("min.insync.replicas", "2", False, 1, False), ("unset.one", None, False, 5, False)]
    configs = [SimpleNamespace(resources=[(0, None, 2, "pw.events", entries)])]
    states = topic_states(topics, configs)
    assert set(states) == {"pw.events"}
    state = states["pw.events"]
    assert (state.partitions, state.replicas, state.in_sync) == (2, (3, 2), (3, 1))
    assert dict(state.config) == {"min.insync.replicas": "2"}


def test_every_spec_carries_the_replication_and_min_insync() -> None:
    kafka = KafkaSettings("x:1", TopicNames("pw"), replication_factor=3, min_insync_replicas=2)
    specs = topic_specs(kafka, ["pw.retry.300"])
    assert {s.replication for s in specs} == {3}
    assert {s.config["min.insync.replicas"] for s in specs} == {"2"}
    # the changelogs keep their own configs beside it
    changelog = next(s for s in specs if s.name == "postwire-gate-changelog")
    assert changelog.config["cleanup.policy"] == "compact"

from __future__ import annotations

from pathlib import Path

import pytest

from streams.settings import Settings


def test_env_prefix_and_derived_values(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("POSTWIRE_KAFKA_PORT", "19092")
    monkeypatch.setenv("POSTWIRE_TOPIC_PREFIX", "pw2")
    monkeypatch.setenv("POSTWIRE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("POSTWIRE_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("POSTWIRE_DATABASE_URL", raising=False)
    s = Settings()
    assert s.bootstrap == "127.0.0.1:19092"
    assert s.embedded_kafka
    assert s.embedded_postgres
    assert s.topics.requests == "pw2.requests"
    assert s.data_dir == tmp_path
    assert s.dsn == (
        f"postgresql://postgres@127.0.0.1:5432/postwire?passfile={tmp_path}/postgres.pgpass"
    )


def test_external_services_switch_off_the_embedded_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTWIRE_KAFKA_BOOTSTRAP", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("POSTWIRE_DATABASE_URL", "postgresql://pw:hunter2@db/pw")
    s = Settings()
    assert not s.embedded_kafka
    assert not s.embedded_postgres
    assert s.bootstrap == "kafka-1:9092,kafka-2:9092"
    assert s.dsn == "postgresql://pw:hunter2@db/pw"
    # the password never shows in a repr or a log line
    assert "hunter2" not in repr(s)


def test_invalid_values_are_refused() -> None:
    with pytest.raises(ValueError, match="partitions"):
        Settings(partitions=0)


def test_to_env_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTWIRE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("POSTWIRE_TOPIC_PREFIX", "x")
    monkeypatch.setenv("POSTWIRE_PARTITIONS", "3")
    monkeypatch.setenv("POSTWIRE_DATABASE_URL", "postgresql://a:b@h/d")
    monkeypatch.delenv("POSTWIRE_KAFKA_BOOTSTRAP", raising=False)
    s = Settings()
    env = s.to_env()
    assert env["POSTWIRE_TOPIC_PREFIX"] == "x"
    assert env["POSTWIRE_DATABASE_URL"] == "postgresql://a:b@h/d"
    assert "POSTWIRE_KAFKA_BOOTSTRAP" not in env  # None stays unset
    # what a child process started with these variables sees
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert Settings() == s


def test_replication_follows_the_embedded_cluster() -> None:
    one = Settings(kafka_bootstrap=None)
    assert (one.topic_replication_factor, one.topic_min_insync_replicas) == (1, 1)
    two = Settings(kafka_bootstrap=None, kafka_brokers=2)
    assert (two.topic_replication_factor, two.topic_min_insync_replicas) == (2, 1)
    five = Settings(kafka_bootstrap=None, kafka_brokers=5)
    assert (five.topic_replication_factor, five.topic_min_insync_replicas) == (3, 2)
    assert (five.kafka.replication_factor, five.kafka.min_insync_replicas) == (3, 2)
    explicit = Settings(
        kafka_bootstrap=None, kafka_brokers=3, replication_factor=2, min_insync_replicas=2
    )
    assert (explicit.kafka.replication_factor, explicit.kafka.min_insync_replicas) == (2, 2)


def test_an_external_cluster_replicates_as_the_settings_say() -> None:
    s = Settings(kafka_bootstrap="k1:9092,k2:9092,k3:9092")
    assert (s.topic_replication_factor, s.topic_min_insync_replicas) == (1, 1)
    s = Settings(kafka_bootstrap="k1:9092", replication_factor=3)
    assert (s.topic_replication_factor, s.topic_min_insync_replicas) == (3, 2)
    # the embedded cluster's size says nothing about an external one
    assert Settings(kafka_bootstrap="k1:9092", kafka_brokers=1, replication_factor=3)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replication_factor": 3}, "needs at least as many brokers"),
        ({"kafka_brokers": 3, "min_insync_replicas": 4}, "more than the replication factor"),
        (
            {"kafka_brokers": 2, "kafka_port": 9092, "kafka_controller_port": 9094},
            "ports overlap",
        ),
    ],
)
def test_replication_that_cannot_work_is_refused(values: dict[str, object], message: str) -> None:
    from streams.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        Settings(kafka_bootstrap=None, **values)  # type: ignore[arg-type]


def test_the_cluster_size_is_remembered_by_the_data_dir(tmp_path: Path) -> None:
    assert Settings(data_dir=tmp_path, kafka_bootstrap=None).embedded_brokers == 1
    (tmp_path / "kafka").mkdir()
    (tmp_path / "kafka" / "cluster.json").write_text('{"cluster_id": "x", "brokers": 3}')
    found = Settings(data_dir=tmp_path, kafka_bootstrap=None)
    assert (found.embedded_brokers, found.topic_replication_factor) == (3, 3)
    assert found.bootstrap.count(",") == 2
    # the knob, when set, wins (the stack refuses the mismatch when it starts)
    assert Settings(data_dir=tmp_path, kafka_bootstrap=None, kafka_brokers=1).embedded_brokers == 1
    (tmp_path / "kafka" / "cluster.json").write_text("not json")
    assert Settings(data_dir=tmp_path, kafka_bootstrap=None).embedded_brokers == 1

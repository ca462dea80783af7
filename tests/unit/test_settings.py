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

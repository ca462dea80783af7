from __future__ import annotations

import base64
from pathlib import Path

from streams.settings import Settings
from streams.stack.kafka import _kafka_cluster_id, locate_pom, render_server_properties


def _props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def test_server_properties_follow_settings(tmp_path: Path) -> None:
    s = Settings(kafka_port=19092, kafka_controller_port=19093, partitions=6)
    props = _props(render_server_properties(s, tmp_path / "data"))
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["process.roles"] == "broker,controller"
    assert props["log.dirs"] == str(tmp_path / "data")
    assert props["num.partitions"] == "6"
    # topics are created by postwire with explicit settings, never by a typo'd producer
    assert props["auto.create.topics.enable"] == "false"
    assert props["offsets.topic.replication.factor"] == "1"


def test_cluster_id_is_a_kafka_uuid() -> None:
    cid = _kafka_cluster_id()
    assert len(cid) == 22
    assert len(base64.urlsafe_b64decode(cid + "==")) == 16
    assert cid != _kafka_cluster_id()


def test_pom_pins_the_broker_artifacts() -> None:
    text = locate_pom().read_text()
    assert "<artifactId>kafka_2.13</artifactId>" in text
    assert "<kafka.version>3.9.1</kafka.version>" in text

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from pydantic import SecretStr

from streams.errors import ConfigError, StackError
from streams.settings import Settings
from streams.stack.kafka import (
    EmbeddedKafka,
    SecuredListener,
    _kafka_cluster_id,
    cluster_nodes,
    internal_replication,
    layout_problem,
    locate_pom,
    render_server_properties,
)
from streams.stack.tls import TlsFiles


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


def _secured(tmp_path: Path, **users: str) -> SecuredListener:
    tls = TlsFiles(tmp_path / "ca.pem", tmp_path / "server.keystore.pem")
    return SecuredListener(tls, {name: SecretStr(pw) for name, pw in users.items()})


def test_secured_listener_speaks_sasl_ssl_with_every_mechanism(tmp_path: Path) -> None:
    s = Settings(kafka_port=19092, kafka_controller_port=19093)
    secured = _secured(tmp_path, alice="alice-pw", bob="bob-pw")
    props = _props(render_server_properties(s, tmp_path / "data", secured))
    assert props["listeners"] == "SASL_SSL://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "SASL_SSL://127.0.0.1:19092"
    assert props["inter.broker.listener.name"] == "SASL_SSL"
    # no plaintext listener for clients is left; the controller's stays on loopback
    assert props["listener.security.protocol.map"] == "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT"
    assert props["sasl.enabled.mechanisms"] == "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512"
    assert props["ssl.keystore.type"] == props["ssl.truststore.type"] == "PEM"
    assert props["ssl.keystore.location"] == str(tmp_path / "server.keystore.pem")
    assert props["ssl.truststore.location"] == str(tmp_path / "ca.pem")
    plain = props["listener.name.sasl_ssl.plain.sasl.jaas.config"]
    assert 'user_alice="alice-pw"' in plain
    assert 'user_bob="bob-pw"' in plain
    broker = secured.broker_password.get_secret_value()
    assert f'username="broker" password="{broker}" user_broker="{broker}"' in plain
    assert "ScramLoginModule" in props["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]
    # the broker's own password is new per start and never shown
    assert broker != _secured(tmp_path, alice="x").broker_password.get_secret_value()
    assert broker not in repr(secured)
    assert "alice-pw" not in repr(secured)


def test_scram_users_are_added_with_both_mechanisms(tmp_path: Path) -> None:
    assert _secured(tmp_path, alice="a-pw", bob="b-pw").scram_arguments() == [
        "--add-scram",
        "SCRAM-SHA-256=[name=alice,password=a-pw]",
        "--add-scram",
        "SCRAM-SHA-512=[name=alice,password=a-pw]",
        "--add-scram",
        "SCRAM-SHA-256=[name=bob,password=b-pw]",
        "--add-scram",
        "SCRAM-SHA-512=[name=bob,password=b-pw]",
    ]


@pytest.mark.parametrize(
    ("users", "message"),
    [
        ({}, "at least one user"),
        ({"alice": "pw,with]brackets"}, "names and passwords are 1-128 of"),
        ({'al"ice': "pw"}, "names and passwords are 1-128 of"),
        ({"broker": "pw"}, "the broker's own login"),
    ],
)
def test_users_the_tools_would_misread_are_refused(
    tmp_path: Path, users: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _secured(tmp_path, **users)


def test_the_plaintext_embedded_broker_refuses_secured_client_settings(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("unused")
    s = Settings(
        data_dir=tmp_path,
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=ca,
    )
    with pytest.raises(StackError, match="speaks PLAINTEXT, not POSTWIRE_KAFKA_SECURITY_PROTOCOL"):
        EmbeddedKafka(s).prepare()


def test_a_cluster_has_a_quorum_of_three_and_replicated_internal_topics(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, kafka_port=19092, kafka_controller_port=19093, kafka_brokers=5)
    nodes = cluster_nodes(s)
    assert [n.name for n in nodes] == ["kafka", "kafka1", "kafka2", "kafka3", "kafka4"]
    assert [n.root for n in nodes] == [tmp_path / "kafka" / str(i) for i in range(5)]
    assert s.bootstrap == ",".join(f"127.0.0.1:{19092 + 2 * i}" for i in range(5))
    props = [_props(render_server_properties(s, n.log_dir, node=n.index)) for n in nodes]
    voters = "1@127.0.0.1:19093,2@127.0.0.1:19095,3@127.0.0.1:19097"
    assert {p["controller.quorum.voters"] for p in props} == {voters}
    assert [p["node.id"] for p in props] == ["1", "2", "3", "4", "5"]
    assert [p["process.roles"] for p in props] == ["broker,controller"] * 3 + ["broker"] * 2
    assert props[1]["listeners"] == "PLAINTEXT://127.0.0.1:19094,CONTROLLER://127.0.0.1:19095"
    # a broker-only node has no controller listener
    assert props[4]["listeners"] == "PLAINTEXT://127.0.0.1:19100"
    for p in props:
        assert p["offsets.topic.replication.factor"] == "3"
        assert p["transaction.state.log.replication.factor"] == "3"
        assert p["transaction.state.log.min.isr"] == "2"
        assert p["min.insync.replicas"] == "2"


@pytest.mark.parametrize(
    ("brokers", "expected"), [(1, (1, 1)), (2, (2, 1)), (3, (3, 2)), (7, (3, 2))]
)
def test_internal_topics_follow_the_cluster_size(brokers: int, expected: tuple[int, int]) -> None:
    assert internal_replication(brokers) == expected


def test_one_broker_keeps_the_single_node_layout(tmp_path: Path) -> None:
    (node,) = cluster_nodes(Settings(data_dir=tmp_path))
    assert (node.name, node.node_id, node.voter) == ("kafka", 1, True)
    assert node.log_dir == tmp_path / "kafka" / "data"


def test_a_data_dir_keeps_the_cluster_size_it_was_formatted_with(tmp_path: Path) -> None:
    root = tmp_path / "kafka"
    assert layout_problem(root, 3) is None  # nothing there yet
    (root / "data").mkdir(parents=True)
    (root / "data" / "meta.properties").write_text("node.id=1\n")
    assert layout_problem(root, 1) is None
    problem = layout_problem(root, 3)
    assert problem is not None
    assert "holds a 1-broker Kafka cluster, not 3" in problem
    assert "POSTWIRE_KAFKA_BROKERS=1" in problem
    other = tmp_path / "other"
    other.mkdir()
    (other / "cluster.json").write_text('{"cluster_id": "x", "brokers": 3}')
    assert layout_problem(other, 3) is None
    assert "holds a 3-broker" in (layout_problem(other, 1) or "")


def test_the_secured_listener_is_offered_on_one_broker_only(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, kafka_brokers=3, kafka_security_protocol="PLAINTEXT")
    with pytest.raises(StackError, match="runs on one broker only"):
        EmbeddedKafka(s, _secured(tmp_path, alice="a-pw")).prepare()


def test_a_data_dir_of_another_size_is_refused_before_anything_starts(tmp_path: Path) -> None:
    (tmp_path / "kafka" / "data").mkdir(parents=True)
    (tmp_path / "kafka" / "data" / "meta.properties").write_text("node.id=1\n")
    s = Settings(data_dir=tmp_path, kafka_port=19092, kafka_controller_port=19093, kafka_brokers=3)
    with pytest.raises(StackError, match="holds a 1-broker Kafka cluster"):
        EmbeddedKafka(s).prepare()

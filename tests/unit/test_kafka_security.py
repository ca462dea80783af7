"""Kafka security settings: what every client is handed (SASL, TLS), what is refused before any
connection, and how a refusal by the cluster is told apart from a cluster that is not there."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from faust.auth import SASLCredentials, SSLCredentials
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from pydantic import SecretStr

from streams.errors import ConfigError
from streams.kafka.config import KafkaSecurity, KafkaSettings, TopicNames, client_options
from streams.kafka.connect import explain_refusal, refusal_of
from streams.runtime.eventloop import install_fast_loop
from streams.runtime.host import HostConfig
from streams.settings import Settings
from streams.stack.tls import issue_server_cert, make_ca
from streams.worker.broker import broker_credentials

PASSWORD = "s3cret-Passw0rd"


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    path.write_bytes(make_ca().cert_pem())
    return path


def scram(ca_file: Path, **over: object) -> KafkaSecurity:
    values: dict[str, object] = {
        "protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "pw-app",
        "sasl_password": SecretStr(PASSWORD),
        "ssl_cafile": ca_file,
    }
    values.update(over)
    return KafkaSecurity(**values)  # type: ignore[arg-type]


def kafka(security: KafkaSecurity) -> KafkaSettings:
    return KafkaSettings("k1:9093,k2:9093", TopicNames("pw"), security=security)


def test_plaintext_clients_get_only_the_cluster() -> None:
    assert client_options(kafka(KafkaSecurity())) == {
        "bootstrap_servers": "k1:9093,k2:9093",
        "security_protocol": "PLAINTEXT",
    }


def test_sasl_ssl_clients_get_credentials_and_a_verifying_context(ca_file: Path) -> None:
    options = client_options(kafka(scram(ca_file)))
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "pw-app"
    assert options["sasl_plain_password"] == PASSWORD
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    # the CA file was loaded (and only it: no system store was asked for)
    assert [c["subject"] for c in context.get_ca_certs()] == [
        ((("commonName", "postwire embedded Kafka CA"),),)
    ]


def test_hostname_check_can_be_switched_off_but_the_chain_is_still_checked(
    ca_file: Path,
) -> None:
    context = client_options(kafka(scram(ca_file, ssl_check_hostname=False)))["ssl_context"]
    assert not context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED


def test_sasl_plaintext_has_no_tls_context() -> None:
    options = client_options(
        kafka(
            KafkaSecurity(
                protocol="SASL_PLAINTEXT",
                sasl_mechanism="PLAIN",
                sasl_username="u",
                sasl_password=SecretStr("p"),
            )
        )
    )
    assert "ssl_context" not in options
    assert options["sasl_mechanism"] == "PLAIN"


def test_a_client_certificate_loads_and_a_wrong_key_password_is_named(tmp_path: Path) -> None:
    ca = make_ca()
    client = issue_server_cert(ca, ["pw-client"])
    cert, key, ca_path = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    cert.write_bytes(client.cert_pem())
    key.write_bytes(client.key_pem())
    ca_path.write_bytes(ca.cert_pem())
    security = KafkaSecurity(protocol="SSL", ssl_cafile=ca_path, ssl_certfile=cert, ssl_keyfile=key)
    assert isinstance(client_options(kafka(security))["ssl_context"], ssl.SSLContext)
    with pytest.raises(ConfigError, match="client certificate and key do not load"):
        client_options(kafka(KafkaSecurity(protocol="SSL", ssl_certfile=cert)))  # no key


def test_a_ca_file_that_is_no_certificate_is_named(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"POSTWIRE_KAFKA_SSL_CAFILE=.*ca\.pem: not a PEM"):
        client_options(kafka(KafkaSecurity(protocol="SSL", ssl_cafile=bogus)))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"protocol": "SASL_SSL"},
            "SASL_SSL with SCRAM-SHA-512 needs POSTWIRE_KAFKA_SASL_USERNAME and "
            "POSTWIRE_KAFKA_SASL_PASSWORD",
        ),
        (
            {"protocol": "SASL_PLAINTEXT", "sasl_username": "u", "sasl_password": SecretStr("")},
            "needs POSTWIRE_KAFKA_SASL_USERNAME and POSTWIRE_KAFKA_SASL_PASSWORD",
        ),
        (
            {"protocol": "SSL", "sasl_username": "u"},
            "POSTWIRE_KAFKA_SASL_USERNAME/_PASSWORD are set but SSL sends no credentials",
        ),
        (
            {"protocol": "SSL", "ssl_cafile": Path("/nonexistent/ca.pem")},
            "POSTWIRE_KAFKA_SSL_CAFILE=/nonexistent/ca.pem: no such file",
        ),
        (
            {"protocol": "SSL", "ssl_certfile": Path("/nonexistent/c.pem")},
            "POSTWIRE_KAFKA_SSL_CERTFILE=/nonexistent/c.pem: no such file",
        ),
        (
            {"ssl_cafile": Path("/etc/hostname")},
            "POSTWIRE_KAFKA_SSL_CAFILE set but PLAINTEXT does not use TLS",
        ),
        (
            {"protocol": "SSL", "ssl_keyfile": Path("/etc/hostname")},
            "POSTWIRE_KAFKA_SSL_KEYFILE needs POSTWIRE_KAFKA_SSL_CERTFILE",
        ),
        (
            {"protocol": "SSL", "ssl_key_password": SecretStr("x")},
            "POSTWIRE_KAFKA_SSL_KEY_PASSWORD needs POSTWIRE_KAFKA_SSL_CERTFILE",
        ),
    ],
)
def test_incomplete_or_contradictory_settings_are_refused(
    values: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match="Kafka security settings") as refused:
        KafkaSecurity(**values)  # type: ignore[arg-type]
    assert message in str(refused.value)


def test_settings_read_the_knobs_and_refuse_at_once(
    monkeypatch: pytest.MonkeyPatch, ca_file: Path
) -> None:
    monkeypatch.setenv("POSTWIRE_KAFKA_BOOTSTRAP", "k1:9093")
    monkeypatch.setenv("POSTWIRE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("POSTWIRE_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("POSTWIRE_KAFKA_SASL_USERNAME", "pw-app")
    monkeypatch.setenv("POSTWIRE_KAFKA_SASL_PASSWORD", PASSWORD)
    monkeypatch.setenv("POSTWIRE_KAFKA_SSL_CAFILE", str(ca_file))
    monkeypatch.setenv("POSTWIRE_KAFKA_SSL_CHECK_HOSTNAME", "false")
    s = Settings()
    security = s.kafka.security
    assert (security.protocol, security.sasl_mechanism, security.sasl_username) == (
        "SASL_SSL",
        "SCRAM-SHA-256",
        "pw-app",
    )
    assert security.ssl_cafile == ca_file
    assert not security.ssl_check_hostname
    # a child process started with to_env() sees the same security
    env = s.to_env()
    assert env["POSTWIRE_KAFKA_SASL_PASSWORD"] == PASSWORD
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert Settings().kafka.security == security
    # the password shows in no repr a log line or traceback could carry
    host = HostConfig(client_options(s.kafka), "pw")
    for shown in (repr(s), repr(s.kafka), repr(security), repr(host)):
        assert PASSWORD not in shown
    monkeypatch.delenv("POSTWIRE_KAFKA_SASL_PASSWORD")
    with pytest.raises(ConfigError, match="POSTWIRE_KAFKA_SASL_PASSWORD"):
        Settings()


def test_an_unknown_protocol_or_mechanism_is_a_validation_error() -> None:
    with pytest.raises(ValueError, match="kafka_security_protocol"):
        Settings(kafka_security_protocol="TLS")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kafka_sasl_mechanism"):
        Settings(kafka_sasl_mechanism="GSSAPI")  # type: ignore[arg-type]


def test_faust_gets_the_same_security_as_aiokafka(ca_file: Path) -> None:
    assert broker_credentials(KafkaSecurity()) is None
    for security in (
        scram(ca_file),
        scram(ca_file, protocol="SASL_PLAINTEXT", ssl_cafile=None, sasl_mechanism="PLAIN"),
        KafkaSecurity(protocol="SSL", ssl_cafile=ca_file),
    ):
        credentials = broker_credentials(security)
        assert isinstance(credentials, SASLCredentials if security.sasl else SSLCredentials)
        # what faust hands its own aiokafka clients is what ours get (the TLS context is a
        # new object each time it is made: compared by whether there is one)
        theirs = dict(credentials_to_aiokafka_auth(credentials))
        ours = client_options(kafka(security))
        del ours["bootstrap_servers"]
        their_context, our_context = theirs.pop("ssl_context", None), ours.pop("ssl_context", None)
        assert isinstance(their_context, ssl.SSLContext) == security.tls
        assert isinstance(our_context, ssl.SSLContext) == security.tls
        assert theirs == ours


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (SaslAuthenticationFailed("invalid credentials"), "kafka.sasl_auth_failed"),
        (UnsupportedSaslMechanismError("enabled: PLAIN"), "kafka.sasl_mechanism"),
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), "kafka.tls_untrusted"),
        (ssl.SSLError(1, "wrong version number"), "kafka.tls_handshake"),
        (ConnectionResetError(), "kafka.protocol_mismatch"),
        (KafkaConnectionError("Connection at k1:9093 closed"), "kafka.protocol_mismatch"),
    ],
)
def test_a_refusal_is_named_with_its_code(exc: BaseException, code: str) -> None:
    options = {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "pw-app",
        "sasl_plain_password": PASSWORD,
    }
    found = refusal_of(exc, "k1:9093", options)
    assert found is not None
    assert found.code == code
    assert not found.retriable
    assert "k1:9093" in str(found)
    assert PASSWORD not in str(found)


@pytest.mark.parametrize(
    "exc",
    [ConnectionRefusedError(), TimeoutError(), KafkaConnectionError("Unable to bootstrap")],
)
def test_a_cluster_that_does_not_answer_is_no_refusal(exc: BaseException) -> None:
    assert refusal_of(exc, "k1:9093", {"security_protocol": "PLAINTEXT"}) is None


def test_a_command_with_unusable_kafka_settings_says_why_in_one_sentence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    from streams.cli.main import app

    monkeypatch.setenv("POSTWIRE_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    monkeypatch.setenv("POSTWIRE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    done = CliRunner().invoke(app, ["topics"])
    assert done.exit_code == 2
    assert "needs POSTWIRE_KAFKA_SASL_USERNAME" in " ".join(done.output.split())
    assert "Traceback" not in done.output


async def _dropping_server(
    *, once: bool, seen: list[int] | None = None
) -> tuple[asyncio.Server, dict[str, str]]:
    """A loopback listener that drops every connection (``once``: then stops listening), as a
    TLS listener does to a plaintext client, or a broker on its way down."""
    server: asyncio.Server | None = None

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if seen is not None:
            seen.append(1)
        writer.close()
        if once and server is not None:
            server.close()

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, {"bootstrap_servers": f"127.0.0.1:{port}", "security_protocol": "PLAINTEXT"}


async def test_a_dropped_connection_is_a_protocol_mismatch_when_it_happens_again() -> None:
    server, options = await _dropping_server(once=False)
    try:
        found = await explain_refusal(options)
    finally:
        server.close()
    assert found is not None
    assert found.code == "kafka.protocol_mismatch"
    assert "POSTWIRE_KAFKA_SECURITY_PROTOCOL=PLAINTEXT" in str(found)


async def test_a_broker_that_went_away_is_no_refusal() -> None:
    seen: list[int] = []
    server, options = await _dropping_server(once=True, seen=seen)
    try:
        assert await explain_refusal(options) is None  # dropped, then nobody listening
    finally:
        server.close()
    assert len(seen) == 1  # the first look was dropped, as by a mismatch


def test_processes_keep_the_standard_loop_when_kafka_speaks_tls() -> None:
    # uvloop's SSL transport waits 30 s to close a consumer stopped with a fetch in flight
    # (every state recovery), long enough for the group to evict the stage
    before = asyncio.get_event_loop_policy()
    assert install_fast_loop(kafka_tls=True) is False
    assert asyncio.get_event_loop_policy() is before

"""What a Kafka client of postwire needs to know: the cluster and how to authenticate to it, the
topic names, the group, and the consumer and producer timings. ``streams.settings`` fills it
from ``POSTWIRE_*``.

Every aiokafka client (producers, consumers, admin clients) is built from ``client_options``,
the one place that turns the cluster's address and ``KafkaSecurity`` into aiokafka's keyword
arguments; the faust worker gets the same security from ``streams.worker.broker``."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from aiokafka.helpers import create_ssl_context
from pydantic import SecretStr

from streams.errors import ConfigError

__all__ = [
    "ClientOptions",
    "KafkaSecurity",
    "KafkaSettings",
    "SaslMechanism",
    "SecurityProtocol",
    "TopicNames",
    "client_options",
    "ssl_context",
]

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
# keyword arguments of AIOKafkaProducer / AIOKafkaConsumer / AIOKafkaAdminClient; they hold the
# SASL password, so they are handed to clients and never logged
ClientOptions = dict[str, Any]


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
        # what shaping does to each destination site (suspended, slowed), latest per site
        self.shaping = f"{prefix}.shaping"
        # event webhook posts (WebhookBatch, key = tenant); their delay tiers are
        # ``<prefix>.webhooks.retry.<tier>``
        self.webhooks = f"{prefix}.webhooks"

    def lane(self, lane: str) -> str:
        return self.deliveries_tx if lane == "tx" else self.deliveries


@dataclass(frozen=True)
class KafkaSecurity:
    """How a client authenticates to the cluster (SASL) and checks it is talking to the right one
    (TLS). The default speaks PLAINTEXT, as the embedded broker does. Contradictory or incomplete
    settings are refused when this is made, naming the ``POSTWIRE_KAFKA_*`` variable at fault:
    credentials a protocol would silently not send are as wrong as missing ones."""

    protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism = "SCRAM-SHA-512"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None  # None: the system's CAs
    ssl_certfile: Path | None = None  # a client certificate (mutual TLS)
    ssl_keyfile: Path | None = None  # its key, when not in the certificate file
    ssl_key_password: SecretStr | None = None
    ssl_check_hostname: bool = True

    def __post_init__(self) -> None:
        found = self.problems()
        if found:
            raise ConfigError("Kafka security settings: " + "; ".join(found))

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def problems(self) -> list[str]:
        """Everything wrong with these settings, as sentences (empty when they are usable)."""
        found: list[str] = []
        if self.protocol not in get_args(SecurityProtocol):
            found.append(
                f"POSTWIRE_KAFKA_SECURITY_PROTOCOL={self.protocol} is not one of "
                f"{', '.join(get_args(SecurityProtocol))}"
            )
        if self.sasl_mechanism not in get_args(SaslMechanism):
            found.append(
                f"POSTWIRE_KAFKA_SASL_MECHANISM={self.sasl_mechanism} is not one of "
                f"{', '.join(get_args(SaslMechanism))}"
            )
        has_password = bool(self.sasl_password and self.sasl_password.get_secret_value())
        if self.sasl and not (self.sasl_username and has_password):
            found.append(
                f"{self.protocol} with {self.sasl_mechanism} needs POSTWIRE_KAFKA_SASL_USERNAME "
                "and POSTWIRE_KAFKA_SASL_PASSWORD"
            )
        if not self.sasl and (self.sasl_username or self.sasl_password):
            found.append(
                f"POSTWIRE_KAFKA_SASL_USERNAME/_PASSWORD are set but {self.protocol} sends no "
                "credentials (use SASL_SSL or SASL_PLAINTEXT)"
            )
        files = {
            "POSTWIRE_KAFKA_SSL_CAFILE": self.ssl_cafile,
            "POSTWIRE_KAFKA_SSL_CERTFILE": self.ssl_certfile,
            "POSTWIRE_KAFKA_SSL_KEYFILE": self.ssl_keyfile,
        }
        given = [name for name, path in files.items() if path is not None]
        if given and not self.tls:
            found.append(
                f"{', '.join(given)} set but {self.protocol} does not use TLS (use SSL or SASL_SSL)"
            )
        for name, path in files.items():
            if path is not None and not path.is_file():
                found.append(f"{name}={path}: no such file")
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            found.append("POSTWIRE_KAFKA_SSL_KEYFILE needs POSTWIRE_KAFKA_SSL_CERTFILE")
        if self.ssl_key_password is not None and self.ssl_certfile is None:
            found.append("POSTWIRE_KAFKA_SSL_KEY_PASSWORD needs POSTWIRE_KAFKA_SSL_CERTFILE")
        return found


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str
    topics: TopicNames
    app_id: str = "postwire"
    partitions: int = 4
    replication_factor: int = 1
    min_insync_replicas: int = 1
    session_timeout: float = 10.0
    heartbeat_interval: float = 1.0
    rebalance_timeout: float = 10.0
    commit_interval: float = 0.5
    producer_linger_ms: int = 2
    start_wait: float = 120.0  # seconds a starting process waits for the cluster to answer
    security: KafkaSecurity = field(default_factory=KafkaSecurity)


def ssl_context(security: KafkaSecurity) -> ssl.SSLContext | None:
    """The TLS context of a client with ``security`` (None when it speaks no TLS): the
    cluster's certificate is checked against the CA file (or the system's CAs), and its host
    name unless ``ssl_check_hostname`` is off. A file that does not load is a ConfigError
    naming it."""
    if not security.tls:
        return None
    cafile = security.ssl_cafile
    try:
        context: ssl.SSLContext = create_ssl_context(cafile=str(cafile) if cafile else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"POSTWIRE_KAFKA_SSL_CAFILE={cafile}: not a PEM CA certificate ({exc})"
        ) from exc
    if security.ssl_certfile is not None:
        password = security.ssl_key_password
        try:
            context.load_cert_chain(
                security.ssl_certfile,
                security.ssl_keyfile,
                password.get_secret_value() if password else None,
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"POSTWIRE_KAFKA_SSL_CERTFILE={security.ssl_certfile} / _KEYFILE="
                f"{security.ssl_keyfile}: the client certificate and key do not load ({exc}); "
                "is POSTWIRE_KAFKA_SSL_KEY_PASSWORD right?"
            ) from exc
    # off only for clusters whose certificates name another host; the chain is still checked
    context.check_hostname = security.ssl_check_hostname
    return context


def client_options(kafka: KafkaSettings) -> ClientOptions:
    """The aiokafka keyword arguments that reach and authenticate to the cluster; every
    producer, consumer and admin client of postwire is built with them."""
    security = kafka.security
    options: ClientOptions = {
        "bootstrap_servers": kafka.bootstrap,
        "security_protocol": security.protocol,
    }
    context = ssl_context(security)
    if context is not None:
        options["ssl_context"] = context
    if security.sasl:
        assert security.sasl_password is not None  # checked when the settings were made
        options["sasl_mechanism"] = security.sasl_mechanism
        options["sasl_plain_username"] = security.sasl_username
        options["sasl_plain_password"] = security.sasl_password.get_secret_value()
    return options

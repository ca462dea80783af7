"""The settings object: each knob reads ``POSTWIRE_<NAME>`` from the environment or ``.env``.

The knobs are flat (their names are the environment's), and grouped by the part they configure:
``settings.kafka``, ``.database``, ``.gate``, ``.verify``, ``.delivery``, ``.api``, ``.sinks``,
``.logs``, ``.tracing`` and ``.stack`` are small frozen value objects, and a part is handed only
its group.
The groups of the bottom layer are defined there (``KafkaSettings``, ``DatabaseSettings``,
``LogSettings``, ``TracingSettings``); the domain's policies (retry ladder, destination
limits, breaker) are built from ``.delivery`` by the runtime (``streams.stages.policies``), so
this module imports no domain code."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.db.config import DatabaseSettings, TenantDefaults
from streams.errors import ConfigError
from streams.kafka.config import (
    KafkaSecurity,
    KafkaSettings,
    SaslMechanism,
    SecurityProtocol,
    TopicNames,
)
from streams.obs.logs import LogSettings
from streams.obs.tracing import TracingSettings
from streams.secret import SECRET_FILE, ServerSecret, load_server_secret

__all__ = [
    "KAFKA_CLUSTER_RECORD",
    "ApiSettings",
    "DeliverySettings",
    "GateSettings",
    "InboundSettings",
    "RestartSettings",
    "Settings",
    "SinkSettings",
    "StackSettings",
    "VerifySettings",
    "WebhookSettings",
]


# where the embedded cluster records its id and size (written by streams.stack.kafka)
KAFKA_CLUSTER_RECORD = Path("kafka") / "cluster.json"
MAX_BROKERS = 16


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "postwire"


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "postwire"


Priority = Literal["critical", "high", "normal", "bulk"]


@dataclass(frozen=True)
class GateSettings:
    dedup_ttl: float
    throttle_policy: Literal["defer", "reject"]


@dataclass(frozen=True)
class VerifySettings:
    nameservers: tuple[str, ...]
    dns_timeout: float
    dns_tries: int
    mx_cache_min_ttl: int
    mx_cache_max_ttl: int
    cache_entries: int
    smtp_probe_port: int
    smtp_probe_timeout: float
    smtp_probe_helo: str
    smtp_probe_from: str
    concurrency: int
    lists_dir: Path | None


@dataclass(frozen=True)
class DeliverySettings:
    mode: Literal["mx", "relay"]
    relay_host: str
    relay_port: int
    relay_username: str | None
    relay_password: SecretStr | None
    smtp_port: int
    smtp_tls: Literal["none", "opportunistic", "required"]
    smtp_tls_verify: bool  # resolved: unset means "only when TLS is required"
    smtp_ca_file: Path | None
    smtp_helo: str
    smtp_connect_timeout: float
    smtp_command_timeout: float
    smtp_data_timeout: float
    smtp_max_messages_per_connection: int
    smtp_idle_timeout: float
    dest_connections: int
    dest_rate: float
    dest_burst: int
    dest_overrides: str  # JSON, parsed by the runtime into the domain's DestinationLimits
    shared_limits: bool  # the sites' connection slots held in PostgreSQL, across processes
    tenant_send_rate: float
    tenant_send_burst: int
    throttle_max_wait: float
    retry_first: float
    retry_factor: float
    retry_cap: float
    retry_max_age: float
    retry_tiers: tuple[int, ...]
    breaker_threshold: int
    breaker_cool_down: float
    shaping_file: Path | None  # the operator's shaping rules, merged over the shipped ones
    concurrency: int
    # the MX lookups delivery makes go through the same resolver settings as verification
    nameservers: tuple[str, ...]
    dns_timeout: float
    dns_tries: int
    # MAIL FROM is a VERP return path <token>@bounce_domain when set; empty: the From address
    bounce_domain: str = ""
    # where List-Unsubscribe's https URI points (<public_url>/u/<token>); empty: no headers
    public_url: str = ""
    # bulk-lane mail (priority normal/bulk) carries the one-click unsubscribe pair
    list_unsubscribe: bool = True


@dataclass(frozen=True)
class InboundSettings:
    """`postwire inbound`: the SMTP server of the bounce domain (streams/inbound/)."""

    bounce_domain: str
    host: str
    port: int
    max_bytes: int
    web_host: str
    web_port: int
    hostname: str


@dataclass(frozen=True)
class WebhookSettings:
    """The event webhook stage: batches, posts, the per-endpoint limits, the retry window."""

    batch_events: int
    batch_bytes: int
    timeout: float
    concurrency: int
    endpoint_concurrency: int
    retry_first: float
    retry_factor: float
    retry_cap: float
    retry_max_age: float
    retry_tiers: tuple[int, ...]
    breaker_threshold: int
    breaker_cool_down: float
    refresh: float
    allow_private: bool


@dataclass(frozen=True)
class ApiSettings:
    host: str
    port: int
    max_body: int
    rate: float
    burst: int
    priority: Priority
    produce_timeout: float
    db_pool: int
    verify_wait: float
    base: str  # the URL the CLI's send/verify/status talk to
    key: SecretStr | None
    public_url: str  # where recipients reach /t/o, /t/c (and unsubscribe links)
    trusted_proxies: tuple[str, ...]  # networks whose X-Forwarded-For names the client


@dataclass(frozen=True)
class SinkSettings:
    batch_size: int
    linger: float
    retry_max: float
    web_port: int
    lag_interval: float
    web_host: str


@dataclass(frozen=True)
class StackSettings:
    data_dir: Path
    cache_dir: Path
    kafka_version: str
    kafka_host: str
    kafka_port: int
    kafka_controller_port: int
    kafka_brokers: int
    kafka_heap: str
    kafka_start_timeout: float
    kafka_jars_dir: Path
    embedded_kafka: bool
    embedded_postgres: bool
    postgres_host: str
    postgres_port: int
    postgres_db: str
    worker_processes: int
    worker_web_port: int
    web_host: str


@dataclass(frozen=True)
class RestartSettings:
    """How `postwire up` restarts a child that died (streams/stack/restart.py)."""

    burst: int
    interval: float
    backoff: float
    backoff_max: float
    stable_after: float


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="POSTWIRE_", env_file=".env", extra="ignore", frozen=True
    )

    # where the embedded stack keeps Kafka logs, PostgreSQL data, pid files and generated config
    data_dir: Path = Field(default_factory=_default_data_dir)
    # downloaded artifacts (the Kafka jars); outside the repo and shared between data dirs
    cache_dir: Path = Field(default_factory=_default_cache_dir)

    # Kafka: set bootstrap to use an external cluster; otherwise the embedded broker runs
    kafka_bootstrap: str | None = None
    kafka_version: str = "3.9.1"
    kafka_host: str = "127.0.0.1"
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    # brokers the embedded cluster runs (`postwire up --brokers N`): broker n (0-based) listens on
    # kafka_port + 2n and kafka_controller_port + 2n; the first min(N, 3) form the controller
    # quorum. Each is a JVM with kafka_heap of heap. Unset: as many as the data dir's cluster
    # was formatted with (see embedded_brokers), 1 for a new one.
    kafka_brokers: int | None = Field(default=None, ge=1, le=MAX_BROKERS)
    kafka_heap: str = "512m"
    kafka_start_timeout: float = 60.0
    # how every client (workers, API, sinks, replay, CLI, bench) authenticates to the cluster:
    # SASL credentials and TLS files, see streams.kafka.config.KafkaSecurity. The embedded
    # broker speaks PLAINTEXT on loopback; a secured cluster is an external one.
    kafka_security_protocol: SecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: SaslMechanism = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None  # unset: the system's CAs
    kafka_ssl_certfile: Path | None = None  # a client certificate, for clusters that ask for one
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_key_password: SecretStr | None = None
    kafka_ssl_check_hostname: bool = True

    # PostgreSQL: set database_url to use an external server; otherwise the embedded one runs
    database_url: SecretStr | None = None
    postgres_host: str = "127.0.0.1"
    postgres_port: int = 5432
    postgres_db: str = "postwire"

    # topics
    topic_prefix: str = "postwire"
    partitions: int = Field(default=4, ge=1)
    # unset: they follow the cluster (the embedded one's size capped at 3, an external one 1) and
    # min.insync.replicas one less than that, at least 1; see topic_replication_factor
    replication_factor: int | None = Field(default=None, ge=1)
    min_insync_replicas: int | None = Field(default=None, ge=1)

    # faust worker
    app_id: str = "postwire"
    # faust worker processes `postwire up` starts; partitions spread over them (one per core)
    worker_processes: int = Field(default=1, ge=1)
    worker_web_port: int = 6066
    # where the workers' and the sinks' web servers (/metrics, /healthz) listen; 0.0.0.0 in
    # containers so Prometheus can scrape them
    web_host: str = "127.0.0.1"
    # /healthz: every process asks Kafka (and the API and sinks PostgreSQL) this often, each
    # try bounded by the timeout; the page itself only reads the last answer
    health_interval: float = Field(default=5.0, gt=0)
    health_timeout: float = Field(default=2.0, gt=0)

    # HTTP ingress (`postwire api`, started by `postwire up`)
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    api_max_body: int = Field(default=30 * 1024 * 1024, ge=1024)  # SendGrid's 30 MB
    api_rate: float = Field(default=200.0, gt=0)  # requests per second per tenant
    api_burst: int = Field(default=400, ge=1)
    # SendGrid callers do not say; most API sends are transactional. Campaigns set
    # X-Postwire-Priority: bulk.
    api_priority: Literal["critical", "high", "normal", "bulk"] = "high"
    api_produce_timeout: float = Field(default=10.0, gt=0)
    api_db_pool: int = Field(default=10, ge=1)
    # POST /v1/verify waits this long for the verdict when the body does not say, then answers
    # 202 with the id to poll
    api_verify_wait: float = Field(default=10.0, ge=0, le=30)
    # the URL `postwire send|verify|status` talk to; empty: http://api_host:api_port
    api_url: str = ""
    # the key those commands use when --key is not given
    api_key: SecretStr | None = None
    # the API's address as recipients reach it (POSTWIRE_PUBLIC_URL): List-Unsubscribe's https URI
    # is <public_url>/u/<token>, tracking pixels and redirects <public_url>/t/...; empty: the
    # API's own base (api_url, or http://api_host:api_port)
    public_url: str = ""
    # add List-Unsubscribe and List-Unsubscribe-Post to bulk-lane mail (priority normal/bulk)
    list_unsubscribe: bool = True
    # proxies (addresses or CIDR networks, comma-separated) in front of the API whose
    # X-Forwarded-For is believed for a tracked open's or click's client address
    api_trusted_proxies: str = ""
    # a single-node cluster rebalances in well under a second; the 60 s faust defaults only
    # make restarts and tests slow
    session_timeout: float = 10.0
    heartbeat_interval: float = 1.0
    rebalance_timeout: float = 10.0
    # how often the stages checkpoint (state changes written, offsets committed): a crash
    # repeats at most this much work
    commit_interval: float = Field(default=0.5, gt=0)
    # at most this much work a batch stage has done and not committed (records; seconds since
    # the oldest of them): past either it fetches nothing more until Kafka has acknowledged and
    # the offsets are committed, so a crash repeats at most about this much
    max_uncommitted_records: int = Field(default=10_000, ge=1)
    max_uncommitted_seconds: float = Field(default=5.0, gt=0)
    # a state recovery that reads nothing for this long raises (the worker exits, its
    # supervisor restarts it) instead of waiting for good
    recovery_stall_timeout: float = Field(default=60.0, gt=0)
    # how long a process starting while Kafka does not answer waits for it before it gives
    # up (a broker being restarted should not make every worker exit and burn its restarts)
    kafka_start_wait: float = Field(default=120.0, ge=0)
    log_level: str = "info"
    # one JSON object per line (json) or aligned text for a terminal (console); both redacted
    log_format: Literal["json", "console"] = "json"
    # HMAC key for the address hashes in logs; unset: a random key made once under data_dir,
    # so every process of one install hashes an address the same way. Set it to correlate
    # across machines (and keep it secret: with it, a guessed address can be confirmed).
    log_hash_key: SecretStr | None = None
    # OpenTelemetry traces (streams/obs/tracing.py): the OTLP/HTTP collector's base URL (the
    # spans go to <url>/v1/traces); unset: tracing is off and costs nothing. Each process is
    # the service <tracing_service_prefix>-<role> (api, worker, sinks, inbound).
    tracing_endpoint: str | None = None
    # the share of traces that start here which are kept (a parent's decision is followed)
    tracing_sample_ratio: float = Field(default=1.0, ge=0, le=1)
    tracing_service_prefix: str = "postwire"
    # the trace UI's base URL (Jaeger), for the search `postwire trace` prints; display only
    tracing_ui: str | None = None
    # the install's server secret (hex or base64, 32 bytes or more): message ids, API keys and
    # DKIM keys sealed at rest derive their keys from it. Unset: a random one made once under
    # data_dir (mode 0600). Every machine of one install must share it.
    secret_key: SecretStr | None = None
    producer_linger_ms: int = Field(default=2, ge=0)

    # gate: tenants, API keys and suppressions are reloaded from PostgreSQL this often, so a
    # revoked key stops working within this many seconds
    directory_refresh: float = Field(default=5.0, gt=0)
    dedup_ttl: float = Field(default=24 * 3600.0, gt=0)
    # where workers keep their state stores' entries: `rocksdb` on local disk under
    # <data dir>/state (off the Python heap; rebuilt from the changelogs), or `memory`
    state_store: Literal["rocksdb", "memory"] = "rocksdb"

    # rate limits per tenant (tenants.limit_per_* override them); over the limit a request is
    # deferred until the window ends (policy "defer") or answered with `throttled` ("reject")
    rate_per_second: int = Field(default=2000, ge=1)
    rate_per_minute: int = Field(default=60000, ge=1)
    rate_per_hour: int = Field(default=1000000, ge=1)
    throttle_policy: Literal["defer", "reject"] = "defer"

    # verification
    dns_nameservers: str = ""  # comma-separated host[:port]; empty: the system resolver
    dns_timeout: float = Field(default=2.0, gt=0)
    dns_tries: int = Field(default=2, ge=1)
    mx_cache_max_ttl: int = Field(default=3600, ge=0)
    mx_cache_min_ttl: int = Field(default=300, ge=0)
    # verdicts that cost no SMTP session, kept per address in process memory (~1.5 KB each);
    # recomputing one is tens of microseconds, so the cache only saves repeats of hot addresses
    verify_cache_entries: int = Field(default=20_000, ge=0)
    smtp_probe_default: bool = False
    smtp_probe_port: int = 25
    smtp_probe_timeout: float = Field(default=10.0, gt=0)
    smtp_probe_helo: str = "postwire.localhost"
    smtp_probe_from: str = "verify@postwire.localhost"
    verify_concurrency: int = Field(default=32, ge=1)
    lists_dir: Path | None = None  # extra disposable/role/free lists, see streams/verify/lists.py

    # delivery: "mx" looks up each recipient domain's MX; "relay" hands everything to a smarthost
    delivery_mode: Literal["mx", "relay"] = "mx"
    relay_host: str = ""
    relay_port: int = 25
    relay_username: str | None = None
    relay_password: SecretStr | None = None
    smtp_port: int = 25  # the port of remote MX hosts (tests and benchmarks use another)
    smtp_tls: Literal["none", "opportunistic", "required"] = "opportunistic"
    # unset: check certificates only when TLS is required; opportunistic TLS does not, like
    # Postfix's "may" level (many MX certificates are self-signed or name another host)
    smtp_tls_verify: bool | None = None
    smtp_ca_file: Path | None = None
    smtp_helo: str = "postwire.localhost"
    # Postfix's smtp_connect_timeout / smtp_*_timeout / smtp_data_done_timeout, shortened
    smtp_connect_timeout: float = Field(default=30.0, gt=0)
    smtp_command_timeout: float = Field(default=60.0, gt=0)
    smtp_data_timeout: float = Field(default=120.0, gt=0)
    smtp_max_messages_per_connection: int = Field(default=100, ge=1)
    smtp_idle_timeout: float = Field(default=30.0, gt=0)
    # per destination site (the set of MX hosts a domain's mail goes to; the relay in relay
    # mode): open connections, messages/s and burst; overrides as JSON, matched by MX host name
    # suffix, e.g. {"google.com": {"connections": 20, "rate": 100, "burst": 20,
    # "messages_per_connection": 50}}
    dest_connections: int = Field(default=10, ge=1)
    dest_rate: float = Field(default=50.0, gt=0)
    dest_burst: int = Field(default=10, ge=1)
    dest_overrides: str = ""
    # the sites' limits hold across every worker process: connection slots are PostgreSQL
    # advisory locks, and a process sends at its slots' share of the rate; off: per process
    delivery_shared_limits: bool = True
    tenant_send_rate: float = Field(default=500.0, gt=0)
    tenant_send_burst: int = Field(default=50, ge=1)
    # a throttle wait up to this long is waited out in place; longer ones go to a delay topic
    throttle_max_wait: float = Field(default=5.0, ge=0)
    # retry ladder (Postfix: 300 s doubling, at most 4 h apart, 5 days) and its delay topics
    retry_first: float = Field(default=300.0, gt=0)
    retry_factor: float = Field(default=2.0, ge=1)
    retry_cap: float = Field(default=14400.0, gt=0)
    retry_max_age: float = Field(default=432000.0, gt=0)
    retry_tiers: str = "300,600,1200,2400,4800,9600,14400"
    # consecutive connection failures that pause a destination, and the first pause
    breaker_threshold: int = Field(default=5, ge=1)
    breaker_cool_down: float = Field(default=60.0, gt=0)
    # the operator's shaping rules (TOML), merged over the shipped ones for the large providers
    # (streams/deliver/data/shaping.toml); unset: the shipped ones alone
    shaping_file: Path | None = None
    deliver_concurrency: int = Field(default=64, ge=1)
    # tasks a delivery lane reads past a backlog and keeps in memory, waiting for their turn
    # at their site (fair across tenants); after a crash they are read again
    deliver_read_ahead: int = Field(default=20_000, ge=1)

    # return path and asynchronous bounces: with a bounce domain, MAIL FROM is
    # <token>@<bounce domain> (a signed reference to the message and recipient, see
    # streams/mail/verp.py) and `postwire up` runs `postwire inbound`, the SMTP server the
    # domain's MX points at, which turns DSNs and feedback reports into events and suppressions.
    # Empty: MAIL FROM is the From address, and no inbound server runs.
    bounce_domain: str = ""
    inbound_host: str = "127.0.0.1"  # 0.0.0.0 (or a public address) to receive from the world
    inbound_port: int = Field(default=2525, ge=1, le=65535)
    # a DSN that carries the whole original message can be large; larger mail is refused (552)
    inbound_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    # /metrics and /healthz of the inbound server (0: none)
    inbound_web_port: int = Field(default=6064, ge=0)
    # event webhooks: a post is a JSON array of at most this many events and bytes (SendGrid
    # posts up to 768 KB), answered within webhook_timeout or retried
    webhook_batch_events: int = Field(default=1000, ge=1)
    webhook_batch_bytes: int = Field(default=768 * 1024, ge=256)
    webhook_timeout: float = Field(default=10.0, gt=0)
    # posts in flight in the webhook stage, and to one endpoint (as many more wait for a slot;
    # past that they wait in a delay tier)
    webhook_concurrency: int = Field(default=64, ge=1)
    webhook_endpoint_concurrency: int = Field(default=4, ge=1)
    # a failed post is tried again after 30 s, doubling up to an hour apart, for 24 hours (as
    # SendGrid does), then dead-lettered; the delay topics are postwire.webhooks.retry.<tier>
    webhook_retry_first: float = Field(default=30.0, gt=0)
    webhook_retry_factor: float = Field(default=2.0, ge=1)
    webhook_retry_cap: float = Field(default=3600.0, gt=0)
    webhook_retry_max_age: float = Field(default=86400.0, gt=0)
    webhook_retry_tiers: str = "30,60,120,300,600,1200,3600"
    # consecutive failed posts that pause an endpoint, and the first pause
    webhook_breaker_threshold: int = Field(default=5, ge=1)
    webhook_breaker_cool_down: float = Field(default=30.0, gt=0)
    # how often the stage reloads the endpoints (a changed URL or event choice takes this long)
    webhook_refresh: float = Field(default=5.0, gt=0)
    # tenants choose the URLs: only public addresses are posted to unless this says otherwise
    # (a webhook receiver on the same host or network, tests)
    webhook_allow_private: bool = False

    # sinks
    sink_batch_size: int = Field(default=2000, ge=1)
    # a row waits at most this long for others to share its transaction: 20 ms keeps the 250 ms
    # request-to-row budget at 2,000 requests/s (50 ms cost ~100 ms of p99 there)
    sink_linger: float = Field(default=0.02, gt=0)
    sink_retry_max: float = Field(default=30.0, gt=0)
    # the sinks process serves /metrics and /healthz here (0: no web server)
    sinks_web_port: int = Field(default=6065, ge=0)
    # how often the sinks process asks Kafka for every consumer group's lag (0: never)
    lag_interval: float = Field(default=15.0, ge=0)

    # supervision (`postwire up`): a child that dies is restarted after a backoff that doubles
    # from restart_backoff to restart_backoff_max (back to the start once it ran
    # restart_stable_after seconds); more than restart_burst restarts of one child within
    # restart_interval seconds and the stack is stopped (systemd's StartLimitBurst/IntervalSec)
    restart_burst: int = Field(default=5, ge=0)
    restart_interval: float = Field(default=300.0, gt=0)
    restart_backoff: float = Field(default=0.5, ge=0)
    restart_backoff_max: float = Field(default=30.0, ge=0)
    restart_stable_after: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _kafka_security_is_usable(self) -> Settings:
        # refused (a ConfigError naming the variable) when the settings are read, not when the
        # first client connects
        _ = self.kafka_security
        return self

    @model_validator(mode="after")
    def _bounce_domain_is_a_domain(self) -> Settings:
        domain = self.bounce_domain.strip()
        if domain and (any(c in domain for c in "@ <>[];,") or "." not in domain):
            raise ConfigError(
                f"POSTWIRE_BOUNCE_DOMAIN={domain!r} is not a domain name (e.g. bounces.example.com)"
            )
        return self

    @model_validator(mode="after")
    def _replication_is_possible(self) -> Settings:
        # refused here: topic creation would fail (too many replicas), or every acks=all write
        # to the topics would (more in-sync replicas asked for than there are replicas)
        replicas, insync = self.topic_replication_factor, self.topic_min_insync_replicas
        if self.embedded_kafka and replicas > self.embedded_brokers:
            raise ConfigError(
                f"POSTWIRE_REPLICATION_FACTOR={replicas} needs at least as many brokers; the "
                f"embedded cluster has {self.embedded_brokers} (POSTWIRE_KAFKA_BROKERS)"
            )
        if insync > replicas:
            raise ConfigError(
                f"POSTWIRE_MIN_INSYNC_REPLICAS={insync} is more than the replication factor "
                f"({replicas}): no acks=all write could succeed"
            )
        ports = [port for pair in self.kafka_broker_ports for port in pair]
        if self.embedded_kafka and len(set(ports)) != len(ports):
            raise ConfigError(
                f"the {self.embedded_brokers} embedded brokers' ports overlap (POSTWIRE_KAFKA_"
                "PORT + 2n and POSTWIRE_KAFKA_CONTROLLER_PORT + 2n); pick ports further apart"
            )
        return self

    def to_env(self) -> dict[str, str]:
        """These settings as ``POSTWIRE_*`` variables, so a child process sees exactly them."""
        env = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[f"POSTWIRE_{name.upper()}"] = str(value)
        return env

    @cached_property
    def topics(self) -> TopicNames:
        return TopicNames(self.topic_prefix)

    @cached_property
    def kafka(self) -> KafkaSettings:
        return KafkaSettings(
            bootstrap=self.bootstrap,
            topics=self.topics,
            app_id=self.app_id,
            partitions=self.partitions,
            replication_factor=self.topic_replication_factor,
            min_insync_replicas=self.topic_min_insync_replicas,
            session_timeout=self.session_timeout,
            heartbeat_interval=self.heartbeat_interval,
            rebalance_timeout=self.rebalance_timeout,
            commit_interval=self.commit_interval,
            producer_linger_ms=self.producer_linger_ms,
            start_wait=self.kafka_start_wait,
            security=self.kafka_security,
        )

    @cached_property
    def kafka_security(self) -> KafkaSecurity:
        return KafkaSecurity(
            protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism,
            sasl_username=self.kafka_sasl_username,
            sasl_password=self.kafka_sasl_password,
            ssl_cafile=self.kafka_ssl_cafile,
            ssl_certfile=self.kafka_ssl_certfile,
            ssl_keyfile=self.kafka_ssl_keyfile,
            ssl_key_password=self.kafka_ssl_key_password,
            ssl_check_hostname=self.kafka_ssl_check_hostname,
        )

    @cached_property
    def database(self) -> DatabaseSettings:
        defaults = TenantDefaults(
            self.rate_per_second, self.rate_per_minute, self.rate_per_hour, self.smtp_probe_default
        )
        return DatabaseSettings(self.dsn, self.directory_refresh, defaults)

    @cached_property
    def gate(self) -> GateSettings:
        return GateSettings(self.dedup_ttl, self.throttle_policy)

    @cached_property
    def verify(self) -> VerifySettings:
        return VerifySettings(
            nameservers=tuple(self.nameservers),
            dns_timeout=self.dns_timeout,
            dns_tries=self.dns_tries,
            mx_cache_min_ttl=self.mx_cache_min_ttl,
            mx_cache_max_ttl=self.mx_cache_max_ttl,
            cache_entries=self.verify_cache_entries,
            smtp_probe_port=self.smtp_probe_port,
            smtp_probe_timeout=self.smtp_probe_timeout,
            smtp_probe_helo=self.smtp_probe_helo,
            smtp_probe_from=self.smtp_probe_from,
            concurrency=self.verify_concurrency,
            lists_dir=self.lists_dir,
        )

    @cached_property
    def delivery(self) -> DeliverySettings:
        verify_tls = self.smtp_tls_verify
        return DeliverySettings(
            mode=self.delivery_mode,
            relay_host=self.relay_host,
            relay_port=self.relay_port,
            relay_username=self.relay_username,
            relay_password=self.relay_password,
            smtp_port=self.smtp_port,
            smtp_tls=self.smtp_tls,
            smtp_tls_verify=verify_tls if verify_tls is not None else self.smtp_tls == "required",
            smtp_ca_file=self.smtp_ca_file,
            smtp_helo=self.smtp_helo,
            smtp_connect_timeout=self.smtp_connect_timeout,
            smtp_command_timeout=self.smtp_command_timeout,
            smtp_data_timeout=self.smtp_data_timeout,
            smtp_max_messages_per_connection=self.smtp_max_messages_per_connection,
            smtp_idle_timeout=self.smtp_idle_timeout,
            dest_connections=self.dest_connections,
            dest_rate=self.dest_rate,
            dest_burst=self.dest_burst,
            dest_overrides=self.dest_overrides,
            shared_limits=self.delivery_shared_limits,
            tenant_send_rate=self.tenant_send_rate,
            tenant_send_burst=self.tenant_send_burst,
            throttle_max_wait=self.throttle_max_wait,
            retry_first=self.retry_first,
            retry_factor=self.retry_factor,
            retry_cap=self.retry_cap,
            retry_max_age=self.retry_max_age,
            retry_tiers=tuple(int(t) for t in self.retry_tiers.split(",") if t.strip()),
            breaker_threshold=self.breaker_threshold,
            breaker_cool_down=self.breaker_cool_down,
            shaping_file=self.shaping_file,
            concurrency=self.deliver_concurrency,
            nameservers=tuple(self.nameservers),
            dns_timeout=self.dns_timeout,
            dns_tries=self.dns_tries,
            bounce_domain=self.bounce_domain.strip().lower(),
            public_url=self.public_base,
            list_unsubscribe=self.list_unsubscribe,
        )

    @cached_property
    def inbound(self) -> InboundSettings:
        return InboundSettings(
            bounce_domain=self.bounce_domain.strip().lower(),
            host=self.inbound_host,
            port=self.inbound_port,
            max_bytes=self.inbound_max_bytes,
            web_host=self.web_host,
            web_port=self.inbound_web_port,
            hostname=self.smtp_helo,
        )

    @cached_property
    def webhooks(self) -> WebhookSettings:
        return WebhookSettings(
            batch_events=self.webhook_batch_events,
            batch_bytes=self.webhook_batch_bytes,
            timeout=self.webhook_timeout,
            concurrency=self.webhook_concurrency,
            endpoint_concurrency=self.webhook_endpoint_concurrency,
            retry_first=self.webhook_retry_first,
            retry_factor=self.webhook_retry_factor,
            retry_cap=self.webhook_retry_cap,
            retry_max_age=self.webhook_retry_max_age,
            retry_tiers=tuple(int(t) for t in self.webhook_retry_tiers.split(",") if t.strip()),
            breaker_threshold=self.webhook_breaker_threshold,
            breaker_cool_down=self.webhook_breaker_cool_down,
            refresh=self.webhook_refresh,
            allow_private=self.webhook_allow_private,
        )

    @cached_property
    def api(self) -> ApiSettings:
        return ApiSettings(
            host=self.api_host,
            port=self.api_port,
            max_body=self.api_max_body,
            rate=self.api_rate,
            burst=self.api_burst,
            priority=self.api_priority,
            produce_timeout=self.api_produce_timeout,
            db_pool=self.api_db_pool,
            verify_wait=self.api_verify_wait,
            base=self.api_base,
            key=self.api_key,
            public_url=self.public_base,
            trusted_proxies=tuple(
                p.strip() for p in self.api_trusted_proxies.split(",") if p.strip()
            ),
        )

    @cached_property
    def sinks(self) -> SinkSettings:
        return SinkSettings(
            batch_size=self.sink_batch_size,
            linger=self.sink_linger,
            retry_max=self.sink_retry_max,
            web_port=self.sinks_web_port,
            lag_interval=self.lag_interval,
            web_host=self.web_host,
        )

    @cached_property
    def logs(self) -> LogSettings:
        return LogSettings(self.log_level, self.log_format, self.log_hash_key, self.data_dir)

    @cached_property
    def tracing(self) -> TracingSettings:
        return TracingSettings(
            self.tracing_endpoint, self.tracing_sample_ratio, self.tracing_service_prefix
        )

    @cached_property
    def stack(self) -> StackSettings:
        return StackSettings(
            data_dir=self.data_dir,
            cache_dir=self.cache_dir,
            kafka_version=self.kafka_version,
            kafka_host=self.kafka_host,
            kafka_port=self.kafka_port,
            kafka_controller_port=self.kafka_controller_port,
            kafka_brokers=self.embedded_brokers,
            kafka_heap=self.kafka_heap,
            kafka_start_timeout=self.kafka_start_timeout,
            kafka_jars_dir=self.kafka_jars_dir,
            embedded_kafka=self.embedded_kafka,
            embedded_postgres=self.embedded_postgres,
            postgres_host=self.postgres_host,
            postgres_port=self.postgres_port,
            postgres_db=self.postgres_db,
            worker_processes=self.worker_processes,
            worker_web_port=self.worker_web_port,
            web_host=self.web_host,
        )

    @cached_property
    def restart(self) -> RestartSettings:
        return RestartSettings(
            burst=self.restart_burst,
            interval=self.restart_interval,
            backoff=self.restart_backoff,
            backoff_max=self.restart_backoff_max,
            stable_after=self.restart_stable_after,
        )

    @property
    def secret(self) -> ServerSecret:
        """The install's server secret (loaded once per process)."""
        value = self.secret_key.get_secret_value() if self.secret_key else None
        return load_server_secret(value, self.data_dir / SECRET_FILE)

    @property
    def embedded_kafka(self) -> bool:
        return self.kafka_bootstrap is None

    @property
    def embedded_postgres(self) -> bool:
        return self.database_url is None

    @property
    def bootstrap(self) -> str:
        if self.kafka_bootstrap:
            return self.kafka_bootstrap
        return ",".join(f"{self.kafka_host}:{port}" for port, _ in self.kafka_broker_ports)

    @property
    def kafka_broker_ports(self) -> list[tuple[int, int]]:
        """(client port, controller port) of each embedded broker, broker 0 first."""
        return [
            (self.kafka_port + 2 * n, self.kafka_controller_port + 2 * n)
            for n in range(self.embedded_brokers)
        ]

    @cached_property
    def embedded_brokers(self) -> int:
        """The embedded cluster's size: as set, else as the data dir's cluster was formatted
        (so `postwire topics` and the others agree with `up --brokers N` without the flag),
        else 1."""
        if self.kafka_brokers is not None:
            return self.kafka_brokers
        try:
            recorded = json.loads((self.data_dir / KAFKA_CLUSTER_RECORD).read_text())["brokers"]
        except (OSError, ValueError, KeyError, TypeError):
            return 1
        return recorded if isinstance(recorded, int) and 1 <= recorded <= MAX_BROKERS else 1

    @property
    def topic_replication_factor(self) -> int:
        """The replicas of every topic postwire creates: as set, or the embedded cluster's
        size capped at 3 (an external cluster's size is not known here: 1)."""
        if self.replication_factor is not None:
            return self.replication_factor
        return min(self.embedded_brokers, 3) if self.embedded_kafka else 1

    @property
    def topic_min_insync_replicas(self) -> int:
        """``min.insync.replicas`` of those topics: as set, or one less than the replicas (at
        least 1), so one broker can be down while acks=all writes still succeed."""
        if self.min_insync_replicas is not None:
            return self.min_insync_replicas
        return max(1, self.topic_replication_factor - 1)

    @property
    def api_base(self) -> str:
        return (self.api_url or f"http://{self.api_host}:{self.api_port}").rstrip("/")

    @property
    def public_base(self) -> str:
        """The base of the URLs put in mail (List-Unsubscribe, tracking links)."""
        return (self.public_url.strip() or self.api_base).rstrip("/")

    @property
    def dsn(self) -> str:
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return self.embedded_dsn(self.postgres_db)

    @property
    def postgres_passfile(self) -> Path:
        """The embedded server's password, in libpq's passfile format (mode 0600)."""
        return self.data_dir / "postgres.pgpass"

    def embedded_dsn(self, database: str) -> str:
        """A URL of the embedded server that names the file holding its password, so the
        password itself is never in a URL, an environment or a log (libpq and asyncpg both read
        ``passfile``)."""
        where = quote(str(self.postgres_passfile), safe="/")
        host, port = self.postgres_host, self.postgres_port
        return f"postgresql://postgres@{host}:{port}/{database}?passfile={where}"

    @property
    def nameservers(self) -> list[str]:
        return [s.strip() for s in self.dns_nameservers.split(",") if s.strip()]

    @property
    def kafka_jars_dir(self) -> Path:
        return self.cache_dir / f"kafka-{self.kafka_version}"

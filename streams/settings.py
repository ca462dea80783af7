"""The settings object: each knob reads ``POSTWIRE_<NAME>`` from the environment or ``.env``."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "TopicNames"]


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "postwire"


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "postwire"


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
    kafka_heap: str = "512m"
    kafka_start_timeout: float = 60.0

    # PostgreSQL: set database_url to use an external server; otherwise the embedded one runs
    database_url: SecretStr | None = None
    postgres_host: str = "127.0.0.1"
    postgres_port: int = 5432
    postgres_db: str = "postwire"

    # topics
    topic_prefix: str = "postwire"
    partitions: int = Field(default=4, ge=1)
    replication_factor: int = Field(default=1, ge=1)

    # faust worker
    app_id: str = "postwire"
    # faust worker processes `postwire up` starts; partitions spread over them (one per core)
    worker_processes: int = Field(default=1, ge=1)
    worker_web_port: int = 6066
    # a single-node cluster rebalances in well under a second; the 60 s faust defaults only
    # make restarts and tests slow
    session_timeout: float = 10.0
    heartbeat_interval: float = 1.0
    rebalance_timeout: float = 10.0
    commit_interval: float = 1.0
    log_level: str = "info"
    producer_linger_ms: int = Field(default=2, ge=0)
    changelog_buffer: int = Field(default=10_000, ge=100)

    # gate: tenants, API keys and suppressions are reloaded from PostgreSQL this often, so a
    # revoked key stops working within this many seconds
    directory_refresh: float = Field(default=5.0, gt=0)
    dedup_ttl: float = Field(default=24 * 3600.0, gt=0)

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
    smtp_probe_default: bool = False
    smtp_probe_port: int = 25
    smtp_probe_timeout: float = Field(default=10.0, gt=0)
    smtp_probe_helo: str = "postwire.localhost"
    smtp_probe_from: str = "verify@postwire.localhost"
    verify_concurrency: int = Field(default=32, ge=1)
    lists_dir: Path | None = None  # extra disposable/role/free lists, see streams/verify/lists.py

    # sinks
    sink_batch_size: int = Field(default=2000, ge=1)
    sink_linger: float = Field(default=0.05, gt=0)
    sink_retry_max: float = Field(default=30.0, gt=0)

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

    @property
    def embedded_kafka(self) -> bool:
        return self.kafka_bootstrap is None

    @property
    def embedded_postgres(self) -> bool:
        return self.database_url is None

    @property
    def bootstrap(self) -> str:
        return self.kafka_bootstrap or f"{self.kafka_host}:{self.kafka_port}"

    @property
    def dsn(self) -> str:
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"postgresql://postgres@{self.postgres_host}:{self.postgres_port}/{self.postgres_db}"

    @property
    def nameservers(self) -> list[str]:
        return [s.strip() for s in self.dns_nameservers.split(",") if s.strip()]

    @property
    def kafka_jars_dir(self) -> Path:
        return self.cache_dir / f"kafka-{self.kafka_version}"

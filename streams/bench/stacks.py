"""Settings of a benchmark's throwaway stack: every port free, limits out of the way, so a
bench never collides with a running install or measures a rate limit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streams.bench.smtp_peers import free_port, free_port_block
from streams.settings import Settings

__all__ = ["Credentials", "bench_settings", "relay_settings"]

# a bench tenant's (key id, API key), which its directly produced records are signed with
Credentials = tuple[str, str]


def bench_settings(data_dir: Path, **overrides: Any) -> Settings:
    ports = (
        "kafka_port",
        "kafka_controller_port",
        "postgres_port",
        "api_port",
        "sinks_web_port",
    )
    values: dict[str, Any] = {
        "data_dir": data_dir,
        **{name: free_port("127.0.0.1") for name in ports},
        # three worker processes per slot (front, tx, bulk), numbered from this port
        "worker_web_port": free_port_block(3 * int(overrides.get("worker_processes", 1))),
        "topic_prefix": "bench",
        "app_id": "bench",
        "rate_per_second": 10**7,
        "rate_per_minute": 10**8,
        "rate_per_hour": 10**9,
        "api_rate": 10**7,
        "api_burst": 10**7,
        "log_level": "warning",
    }
    return Settings(**{**values, **overrides})


def relay_settings(data_dir: Path, host: str, port: int, **overrides: Any) -> Settings:
    """A bench stack that relays every message to the SMTP sink at ``host:port``, with every
    delivery limit out of the way (the sink, not a throttle, is what the bench meets)."""
    relay: dict[str, Any] = {
        "delivery_mode": "relay",
        "relay_host": host,
        "relay_port": port,
        "smtp_tls": "none",
        "dest_connections": 32,
        "dest_rate": 10**6,
        "dest_burst": 10**6,
        "tenant_send_rate": 10**6,
        "tenant_send_burst": 10**6,
    }
    return bench_settings(data_dir, **{**relay, **overrides})

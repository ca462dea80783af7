"""What the database layer needs to know: where PostgreSQL is, how often the tenant directory is
reloaded, and the limits a tenant row leaves unset. ``streams.settings`` fills it."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DatabaseSettings", "TenantDefaults"]


@dataclass(frozen=True)
class TenantDefaults:
    """What a tenant gets where its row says NULL."""

    rate_per_second: int = 2000
    rate_per_minute: int = 60000
    rate_per_hour: int = 1000000
    smtp_probe: bool = False


@dataclass(frozen=True)
class DatabaseSettings:
    dsn: str
    directory_refresh: float = 5.0
    tenant_defaults: TenantDefaults = field(default_factory=TenantDefaults)

"""Plain-SQL, versioned migrations, applied idempotently.

The schema has two homes: ``streams/db/migrations`` for the tables the directory and the API own
(tenants, api_keys, templates, verify_jobs) and ``sinks/migrations`` for the tables the sinks
write. Versions are one sequence across both. A file is ``NNNN_name.sql``, or, for a version whose
statements live in both homes, ``NNNN_name.<part>.sql``: the parts of a version are joined in part
order into the one migration that is applied and checksummed, so the split changed no checksum.

All pending files apply in one transaction under an advisory lock (each file behind its own
savepoint), so two processes starting at once never apply a migration twice and a failing file
leaves the database as it was. A checksum per applied file catches edits to released migrations.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from streams.errors import MigrationError

__all__ = ["MIGRATION_DIRS", "Migration", "apply_migrations", "load_migrations"]

MIGRATION_DIRS = (
    Path(__file__).parent / "migrations",
    Path(__file__).parents[2] / "sinks" / "migrations",
)
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)(?:\.(\d))?\.sql$")
# arbitrary but fixed: pg_advisory_xact_lock key shared by every postwire process
_LOCK_KEY = 0x706F7374_77697265 & 0x7FFFFFFFFFFFFFFF


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def _directories(where: Path | Sequence[Path]) -> Sequence[Path]:
    return (where,) if isinstance(where, Path) else where


def load_migrations(where: Path | Sequence[Path] = MIGRATION_DIRS) -> list[Migration]:
    """Every migration under ``where`` (one directory or several), in version order."""
    parts: dict[int, dict[int, tuple[str, str]]] = {}  # version -> part -> (name, sql)
    for directory in _directories(where):
        for path in sorted(directory.glob("*.sql")):
            match = _NAME.match(path.name)
            if match is None:
                raise MigrationError(f"migration file {path.name} is not named NNNN_name.sql")
            version, part = int(match.group(1)), int(match.group(3) or 0)
            found = parts.setdefault(version, {})
            names = {name for name, _ in found.values()}
            if part in found or (names and names != {match.group(2)}) or (found and not part):
                raise MigrationError(f"two migrations share version {version:04d}")
            found[part] = (match.group(2), path.read_text())
    versions = sorted(parts)
    if versions != list(range(1, len(versions) + 1)):
        raise MigrationError(f"migration versions must run 1..N without gaps, found {versions}")
    return [_joined(version, parts[version]) for version in versions]


def _joined(version: int, parts: dict[int, tuple[str, str]]) -> Migration:
    if 0 in parts and len(parts) > 1:
        raise MigrationError(f"two migrations share version {version:04d}")
    ordered = [parts[part] for part in sorted(parts)]
    return Migration(version, ordered[0][0], "".join(sql for _, sql in ordered))


async def apply_migrations(
    dsn: str, where: Path | Sequence[Path] = MIGRATION_DIRS
) -> list[Migration]:
    """Apply pending migrations; return those applied by this call."""
    migrations = load_migrations(where)
    try:
        conn = await asyncpg.connect(dsn)
    except (OSError, asyncpg.PostgresError) as exc:
        raise MigrationError(f"cannot connect to the database to migrate: {exc}") from exc
    applied: list[Migration] = []
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {
                r["version"]: r["checksum"]
                for r in await conn.fetch("SELECT version, checksum FROM schema_migrations")
            }
            for migration in migrations:
                if migration.version in done:
                    if done[migration.version] != migration.checksum:
                        raise MigrationError(
                            f"migration {migration.version:04d}_{migration.name} changed after it "
                            "was applied; add a new migration instead of editing a released one"
                        )
                    continue
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum)"
                        " VALUES ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
                applied.append(migration)
    except asyncpg.PostgresError as exc:
        raise MigrationError(f"migration failed: {exc}") from exc
    finally:
        await conn.close()
    return applied

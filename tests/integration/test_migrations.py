from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from streams.db.migrate import MIGRATION_DIRS, apply_migrations
from streams.errors import MigrationError
from streams.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def scratch_dsn(stack: Settings) -> AsyncIterator[str]:
    """A fresh database on the session's server, dropped afterwards."""
    name = f"scratch_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(stack.dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(stack.dsn)._replace(path=f"/{name}"))
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def test_migrations_apply_once(scratch_dsn: str) -> None:
    first = await apply_migrations(scratch_dsn)
    assert [m.version for m in first] == list(range(1, len(first) + 1))
    assert len(first) >= 2
    assert await apply_migrations(scratch_dsn) == []
    conn = await asyncpg.connect(scratch_dsn)
    try:
        tables = {
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        assert {
            "tenants",
            "api_keys",
            "requests",
            "verifications",
            "messages",
            "events",
            "rejections",
            "suppressions",
            "schema_migrations",
        } <= tables
    finally:
        await conn.close()


async def test_an_edited_released_migration_is_refused(scratch_dsn: str, tmp_path: Path) -> None:
    edited = tmp_path / "migrations"
    edited.mkdir()
    for directory in MIGRATION_DIRS:
        for path in directory.glob("*.sql"):
            (edited / path.name).write_text(path.read_text())
    await apply_migrations(scratch_dsn, edited)
    first = sorted(edited.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await apply_migrations(scratch_dsn, edited)


async def test_a_failing_migration_leaves_nothing_behind(scratch_dsn: str, tmp_path: Path) -> None:
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE a (x int);")
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE b (x nosuchtype);")
    with pytest.raises(MigrationError, match="nosuchtype"):
        await apply_migrations(scratch_dsn, tmp_path)
    conn = await asyncpg.connect(scratch_dsn)
    try:
        assert await conn.fetchval("SELECT to_regclass('a')") is None
    finally:
        await conn.close()

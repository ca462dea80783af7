"""The embedded PostgreSQL on a shared host: a generated password (scram-sha-256) kept in a 0600
passfile, never `trust`; an old trusting data dir is secured on its next start; every port of
the running stack listens on loopback only."""

from __future__ import annotations

import stat
from pathlib import Path

import asyncpg
import pytest

from streams.settings import Settings
from streams.stack.postgres import EmbeddedPostgres, read_password
from streams.stack.stack import WORKER_ROLES, Stack, worker_port
from tests.conftest import stack_settings
from tests.integration.helpers import eventually

pytestmark = pytest.mark.integration


async def _assert_secured(settings: Settings) -> None:
    passfile = settings.postgres_passfile
    assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
    password = read_password(passfile)
    assert password is not None
    assert len(password) >= 24
    assert password not in settings.dsn  # the URL names the file, not the password
    hba = (settings.data_dir / "postgres" / "pg_hba.conf").read_text()
    methods = {line.split()[-1] for line in hba.splitlines() if line.strip()[:1] not in ("", "#")}
    assert methods == {"scram-sha-256"}
    bare = f"postgresql://postgres@{settings.postgres_host}:{settings.postgres_port}/postgres"
    with pytest.raises(
        (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)
    ):
        await asyncpg.connect(bare, password="not-the-password")
    conn = await asyncpg.connect(settings.dsn)
    try:
        assert await conn.fetchval("SELECT current_database()") == settings.postgres_db
    finally:
        await conn.close()


async def test_a_new_server_asks_for_its_generated_password(tmp_path: Path) -> None:
    settings = stack_settings(tmp_path / "data")
    server = EmbeddedPostgres(settings)
    server.start(detach=False)
    try:
        await server.wait_ready()
        await _assert_secured(settings)
    finally:
        server.stop()


async def test_a_trusting_data_dir_of_an_older_version_is_secured_on_start(tmp_path: Path) -> None:
    settings = stack_settings(tmp_path / "data")
    server = EmbeddedPostgres(settings)
    server.start(detach=False)
    await server.wait_ready()
    server.stop()
    # what an older postwire left: `trust` for every line, and no passfile
    hba = settings.data_dir / "postgres" / "pg_hba.conf"
    hba.write_text(hba.read_text().replace("scram-sha-256", "trust"))
    settings.postgres_passfile.unlink()
    again = EmbeddedPostgres(settings)
    again.start(detach=False)
    try:
        await again.wait_ready()
        await _assert_secured(settings)
    finally:
        again.stop()


def _listening(pids: set[int]) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state owned by one of ``pids``."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue  # a short-lived child that is gone already
        for fd in fds:
            try:
                target = fd.readlink()
            except OSError:
                continue
            if str(target).startswith("socket:["):
                inodes.add(str(target)[8:-1])
    found: set[tuple[str, int]] = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A = LISTEN
                continue
            address, port = local.split(":")
            found.add((_address(address, width), int(port, 16)))
    return found


def _address(hex_address: str, width: int) -> str:
    raw = bytes.fromhex(hex_address)
    if width == 8:
        return ".".join(str(b) for b in reversed(raw))
    words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
    return ":".join(b.hex() for b in words)


def _children(pid: int) -> set[int]:
    out = {pid}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        for kid in kids:
            out |= _children(int(kid))
    return out


def _loopback(address: str) -> bool:
    v4_mapped = "00000000:00000000:0000ffff:"
    return (
        address.startswith("127.")
        or address == "00000000:00000000:00000000:00000001"
        or (address.startswith(v4_mapped) and address[len(v4_mapped) :].startswith("7f"))
    )


def _stack_listening(pipeline: Stack) -> set[tuple[str, int]]:
    pids: set[int] = set()
    # the children as they are now: a test may have restarted one (a new pid)
    for proc in pipeline.children().values():
        pid = proc.pid
        if pid is not None and Path(f"/proc/{pid}").exists():
            pids |= _children(pid)
    return _listening(pids)


async def test_every_port_of_the_running_stack_is_on_loopback(pipeline: Stack) -> None:
    settings = pipeline.settings
    # every web port: the API, the sinks, and each worker process's (front, tx, bulk)
    expected = {settings.api_port, settings.sinks_web_port}
    expected |= {
        worker_port(settings, role, slot)
        for role in WORKER_ROLES
        for slot in range(settings.worker_processes)
    }
    if settings.embedded_kafka:
        expected |= {settings.kafka_port, settings.kafka_controller_port}
    if settings.embedded_postgres:
        expected.add(settings.postgres_port)

    # the API and the workers bind their ports once they are up
    async def probe() -> set[tuple[str, int]]:
        return _stack_listening(pipeline)

    listening = await eventually(probe, lambda found: expected <= {p for _, p in found})
    assert expected <= {port for _, port in listening}, (expected, listening)
    public = {(a, p) for a, p in listening if not _loopback(a)}
    assert not public, f"listening beyond loopback: {sorted(public)}"

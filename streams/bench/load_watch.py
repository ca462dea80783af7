"""What `postwire bench load` watches while and after it drives the pipeline: the end rows in
PostgreSQL, the consumer-group backlog, every process's memory from ``/proc``, the workers'
state-store sizes from their ``/metrics``, and the table sizes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from streams.bench.load_report import Landing, ProcMemory, state_entries
from streams.obs.lag import LagMonitor
from streams.settings import Settings
from streams.stack.stack import WORKER_ROLES, worker_port

__all__ = [
    "TABLES",
    "BacklogWatch",
    "MemorySampler",
    "count_end_rows",
    "cpu_seconds",
    "dead_letters",
    "end_rows",
    "proc_status",
    "scrape_state",
    "table_sizes",
    "worker_ports",
]

# events that end a request's path without the row it was after
FAILED_ENDS = ("bounced", "failed", "dropped", "throttled")
TABLES = ("requests", "verifications", "events", "messages", "verify_jobs", "rejections")
SERVERS = ("kafka", "postgres")


async def end_rows(conn: asyncpg.Connection[Any], tenants: Sequence[str]) -> dict[str, Landing]:
    """Per request id of these tenants, the row that ended its path (the earliest, if several)."""
    rows: dict[str, Landing] = {}
    for r in await conn.fetch(
        "SELECT request_id, extract(epoch FROM min(landed_at))::float8 AS at FROM verifications"
        " WHERE tenant_id = ANY($1::text[]) GROUP BY request_id",
        list(tenants),
    ):
        rows[r["request_id"]] = Landing(r["at"], "verifications")
    for r in await conn.fetch(
        "SELECT request_id, type, extract(epoch FROM landed_at)::float8 AS at FROM events"
        " WHERE tenant_id = ANY($1::text[]) AND type = ANY($2::text[])"
        " AND request_id IS NOT NULL ORDER BY landed_at",
        list(tenants),
        ["delivered", *FAILED_ENDS],
    ):
        rows.setdefault(r["request_id"], Landing(r["at"], r["type"]))
    return rows


_ENDED = (
    "SELECT (SELECT count(*) FROM verifications WHERE tenant_id = ANY($1::text[]))"
    " + (SELECT count(*) FROM events WHERE tenant_id = ANY($1::text[])"
    " AND type = ANY($2::text[]))"
)
_DEAD = " + (SELECT count(*) FROM rejections WHERE tenant_id = ANY($1::text[]))"
# the excluded ids' rows, looked up by the request_id indexes (a few ids out of many rows)
_OF_IDS = (
    "SELECT (SELECT count(*) FROM verifications WHERE request_id = ANY($1::text[]))"
    " + (SELECT count(*) FROM events WHERE request_id = ANY($1::text[])"
    " AND type = ANY($2::text[]))"
)


async def count_end_rows(
    conn: asyncpg.Connection[Any],
    tenants: Sequence[str],
    *,
    failures: bool = True,
    exclude: Sequence[str] = (),
) -> int:
    """End rows of these tenants' requests so far, less those of the ids in ``exclude``; with
    ``failures``, also the events that ended a request otherwise and the dead letters (every
    way a path can end)."""
    ends = ["delivered", *FAILED_ENDS] if failures else ["delivered"]
    found = int(await conn.fetchval(_ENDED + _DEAD if failures else _ENDED, list(tenants), ends))
    if exclude:
        found -= int(await conn.fetchval(_OF_IDS, list(exclude), ends))
    return found


async def dead_letters(conn: asyncpg.Connection[Any], tenants: Sequence[str]) -> dict[str, int]:
    """Dead letters of these tenants' requests by error code (they name no request id)."""
    rows = await conn.fetch(
        "SELECT error_code, count(*) AS n FROM rejections WHERE tenant_id = ANY($1::text[])"
        " GROUP BY error_code",
        list(tenants),
    )
    return {r["error_code"]: int(r["n"]) for r in rows}


class BacklogWatch:
    """Records behind, summed over every consumer group of the app (committed offsets), every
    ``interval`` seconds: how much work is queued inside the pipeline."""

    def __init__(self, settings: Settings, interval: float = 2.0) -> None:
        self.monitor = LagMonitor(settings.kafka, interval)
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self.current: int | None = None

    async def measure(self) -> int:
        found = await self.monitor.measure()
        self.current = sum(found.values())
        self.samples.append((time.time(), self.current))
        return self.current

    async def run(self) -> None:
        while True:
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                await self.measure()
            await asyncio.sleep(self.interval)

    def peak(self, since: float) -> int | None:
        return max((n for t, n in self.samples if t >= since), default=None)

    async def close(self) -> None:
        await self.monitor.close()


def proc_status(pid: int) -> dict[str, int]:
    """The kB fields of ``/proc/<pid>/status`` (VmRSS, VmHWM, RssAnon...); {} if it is gone."""
    found: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return found
    for line in text.splitlines():
        name, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB":
            found[name] = int(parts[0])
    return found


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time ``pid`` has used so far; None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / _TICK


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            # the comm field may hold spaces: the parent pid is the second field after ")"
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                kids.append(int(entry))
    return kids


class MemorySampler:
    """VmRSS of each process every ``interval`` s; VmHWM (the kernel's peak) and the CPU time
    used since the start when finished. PostgreSQL's backends are one line: the sum of their
    private (RssAnon) memory and of their CPU time."""

    def __init__(self, pids: dict[str, int], interval: float = 1.0) -> None:
        self.interval = interval
        self.procs = {
            name: ProcMemory(name, pid, postwire=name not in (*SERVERS, "generator", "smtp sink"))
            for name, pid in pids.items()
        }
        postmaster = pids.get("postgres")
        self.backends = (
            ProcMemory("postgres backends", postmaster, postwire=False) if postmaster else None
        )
        self.t0 = time.monotonic()
        self.cpu0: dict[int, float] = {}

    def _cpu_start(self) -> None:
        pids = [p.pid for p in self.procs.values()]
        if self.backends is not None:
            pids += _children(self.backends.pid)
        self.cpu0 = {pid: cpu for pid in pids if (cpu := cpu_seconds(pid)) is not None}

    def _cpu_used(self, pids: list[int]) -> float:
        """CPU seconds since the start; a process born since counts from 0."""
        return sum(max((cpu_seconds(p) or 0.0) - self.cpu0.get(p, 0.0), 0.0) for p in pids)

    def sample(self) -> None:
        t = time.monotonic() - self.t0
        for proc in self.procs.values():
            rss = proc_status(proc.pid).get("VmRSS")
            if rss is not None:
                proc.samples.append((t, rss))
        if self.backends is not None:
            kids = _children(self.backends.pid)
            total = sum(proc_status(k).get("RssAnon", 0) for k in kids)
            self.backends.samples.append((t, total))

    async def run(self) -> None:
        self.t0 = time.monotonic()
        self._cpu_start()
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def finish(self) -> list[ProcMemory]:
        self.sample()
        out = []
        for proc in self.procs.values():
            proc.hwm_kb = proc_status(proc.pid).get("VmHWM")
            proc.cpu_s = self._cpu_used([proc.pid])
            out.append(proc)
        if self.backends is not None:
            self.backends.cpu_s = self._cpu_used(_children(self.backends.pid))
            out.append(self.backends)
        return out


def worker_ports(settings: Settings) -> dict[str, int]:
    """The web port of each worker process `Stack` starts."""
    return {
        f"{role}{str(i) if i else ''}": worker_port(settings, role, i)
        for role in WORKER_ROLES
        for i in range(settings.worker_processes)
    }


async def scrape_state(settings: Settings) -> dict[str, dict[str, float] | None]:
    """Per worker process, ``postwire_state_entries`` by store from its /metrics; None where
    the page could not be read, {} where the gauge is absent."""
    found: dict[str, dict[str, float] | None] = {}
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for name, port in worker_ports(settings).items():
            url = f"http://{settings.web_host}:{port}/metrics"
            try:
                async with session.get(url) as r:
                    found[name] = state_entries(await r.text()) if r.status == 200 else None
            except (aiohttp.ClientError, OSError, TimeoutError):
                found[name] = None
    return found


async def table_sizes(conn: asyncpg.Connection[Any]) -> dict[str, tuple[int, int]]:
    """(rows, bytes on disk including indexes and TOAST) of the pipeline's tables."""
    sizes = {}
    for table in TABLES:
        rows = await conn.fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608 (fixed names)
        size = await conn.fetchval("SELECT pg_total_relation_size($1::regclass)", table)
        sizes[table] = (int(rows), int(size))
    return sizes

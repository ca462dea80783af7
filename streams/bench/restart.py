"""How long a front worker takes from start to ready (``/healthz`` 200) when its gate changelog
holds many records: once with no table on disk (it reads the changelog from its start, as every
restart did before tables were kept), then after a clean stop and after a kill -9 (it reads from
its tables' marks). Run it as ``postwire bench restart --records N``; it runs its own
throwaway Kafka and PostgreSQL on free loopback ports and removes them afterwards."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import aiohttp
import orjson

from streams.bench.stacks import bench_settings
from streams.kafka.config import client_options
from streams.kafka.topics import changelog_topic
from streams.runtime.producer import BatchProducer
from streams.runtime.records import Out
from streams.stack.process import ManagedProcess
from streams.stack.stack import Stack
from streams.stages.names import FRONT_STAGES

__all__ = ["main", "measure", "report"]

READY_TIMEOUT = 300.0


async def _fill(stack: Stack, records: int) -> None:
    """Dedup entries like the gate's own, live for a day, on partition 0 of its changelog."""
    settings = stack.settings
    topic = changelog_topic(settings.app_id, "gate")
    producer = BatchProducer(client_options(settings.kafka), linger_ms=20)
    await producer.start()
    try:
        expires = time.time() + 86400
        for start in range(0, records, 10_000):
            outs = [
                Out(
                    topic,
                    f"d:bench\x1fkey-{i}".encode(),
                    orjson.dumps({"request_id": f"req-{i:012d}", "expires": expires}),
                    partition=0,
                )
                for i in range(start, min(start + 10_000, records))
            ]
            await producer.settle(await producer.send(outs))
    finally:
        await producer.stop()


async def _until_ready(url: str, worker: ManagedProcess, deadline: float) -> None:
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if not worker.running():
                raise RuntimeError(f"the worker exited; see {worker.log_path}")
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} not ready within {READY_TIMEOUT:.0f}s")


def _recovered(log_path: Path, since: int) -> str:
    """What the worker's recoveries read in this run (the log from byte ``since`` on), and how
    long they took, first "recovering" to last "recovered"."""
    read: list[str] = []
    times: list[datetime] = []
    with log_path.open("rb") as log:
        log.seek(since)
        for line in log.read().splitlines():
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            event = str(entry.get("event", ""))
            if event.startswith(("recovering ", "recovered ")):
                times.append(datetime.fromisoformat(str(entry["timestamp"])))
            if event.startswith("recovered "):
                read.append(event.removeprefix("recovered "))
    took = (max(times) - min(times)).total_seconds() if times else 0.0
    return f"recovery {took:.1f} s: " + "; ".join(read)


async def measure(records: int, data_dir: Path) -> dict[str, tuple[float, str]]:
    settings = bench_settings(data_dir, partitions=1, log_level="info")
    stack = Stack(settings, workers=False)
    await stack.start(detach=False)
    timings: dict[str, float] = {}
    read: dict[str, str] = {}
    try:
        await _fill(stack, records)
        url = f"http://{settings.web_host}:{settings.worker_web_port}/healthz"
        stages = [arg for stage in FRONT_STAGES for arg in ("--stage", stage)]
        worker = stack.process("worker", "worker", *stages)
        # (what the run is called, whether its tables are wiped first, how it is stopped)
        runs = (
            ("no table on disk", True, signal.SIGTERM),
            ("after a clean stop", False, signal.SIGKILL),
            ("after a kill -9", False, signal.SIGTERM),
        )
        for run, wipe, stop in runs:
            if wipe:
                shutil.rmtree(data_dir / "state", ignore_errors=True)
            since = worker.log_path.stat().st_size if worker.log_path.exists() else 0
            began = time.monotonic()
            worker.start(detach=False)
            await _until_ready(url, worker, began + READY_TIMEOUT)
            timings[run] = time.monotonic() - began
            read[run] = _recovered(worker.log_path, since)
            await asyncio.sleep(2.0)  # a commit interval or two of an idle, ready worker
            if stop == signal.SIGKILL and worker.pid is not None:
                os.kill(worker.pid, signal.SIGKILL)
            worker.stop()  # waits for it (a killed one is only reaped)
    finally:
        stack.stop()
    return {run: (seconds, read.get(run, "")) for run, seconds in timings.items()}


async def report(records: int) -> str:
    """Measure in a throwaway data dir (kept only when the run fails) and say what was seen."""
    data_dir = Path(tempfile.mkdtemp(prefix="postwire-bench-restart-"))
    try:
        timings = await measure(records, data_dir)
    except BaseException:
        print(f"failed; its data dir is kept at {data_dir}", file=sys.stderr)
        raise
    shutil.rmtree(data_dir, ignore_errors=True)
    lines = [f"front worker start to ready, gate changelog of {records:,} records:"]
    for run, (seconds, read) in timings.items():
        lines.append(f"  {run:>20}: {seconds:6.1f} s   ({read})")
    return "\n".join(lines)


def main() -> None:
    records = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    print(asyncio.run(report(records)))


if __name__ == "__main__":
    main()

"""Run a set of stages in one process: one producer shared by all, one runner (consumer group
``<app id>-<stage>``) per stage. If any runner fails (Kafka stopped acknowledging, a recovery
stalled), all stop and the error is raised, so the process exits and its supervisor restarts it;
the unacknowledged batch was never committed and is read again."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from streams.clock import Clock, wall_clock
from streams.kafka.config import ClientOptions
from streams.kafka.metadata import require_topics
from streams.obs.health import Check, phase_checks
from streams.runtime.producer import BatchProducer
from streams.runtime.runner import RunnerConfig, StageRunner
from streams.runtime.stage import Stage
from streams.runtime.state import ensure_changelogs

__all__ = ["HostConfig", "StageHost"]


@dataclass(frozen=True)
class HostConfig:
    """The Kafka side of a worker: where and how to connect (``client``, the options of
    ``streams.kafka.config.client_options``), under which app id, and the runners' defaults."""

    client: ClientOptions = field(repr=False)  # it holds the SASL password
    app_id: str
    partitions: int = 1  # of changelog topics the host creates
    replication: int = 1
    min_insync: int = 1
    linger_ms: int = 2
    session_timeout: float = 10.0
    heartbeat_interval: float = 1.0
    commit_interval: float = 0.5
    max_uncommitted_records: int = 10_000
    max_uncommitted_seconds: float = 5.0
    recovery_stall_timeout: float = 60.0
    # producer settings beyond these (its request and batch sizes, from the record limit)
    producer: dict[str, Any] = field(default_factory=dict)
    # how long a flow topic a stage reads or writes may take to show up at start
    topic_wait: float = 10.0

    def runner(self, stage: Stage) -> RunnerConfig:
        return RunnerConfig(
            self.client,
            f"{self.app_id}-{stage.name}",
            session_timeout=self.session_timeout,
            heartbeat_interval=self.heartbeat_interval,
            commit_interval=self.commit_interval,
            max_uncommitted_records=self.max_uncommitted_records,
            max_uncommitted_seconds=self.max_uncommitted_seconds,
            recovery_stall_timeout=self.recovery_stall_timeout,
        )


# a task that runs beside the stages for as long as they run (a feed the stages read)
Background = Callable[[asyncio.Event, "StageHost"], Coroutine[Any, Any, None]]


class StageHost:
    def __init__(
        self,
        config: HostConfig,
        stages: Sequence[Stage],
        clock: Clock = wall_clock,
        *,
        background: Sequence[Background] = (),
    ) -> None:
        self.config = config
        self.background = list(background)
        self.producer = BatchProducer(config.client, linger_ms=config.linger_ms, **config.producer)
        self.runners = [
            StageRunner(stage, config.runner(stage), self.producer, clock) for stage in stages
        ]
        self.started = False

    def runner(self, name: str) -> StageRunner:
        return next(r for r in self.runners if r.stage.name == name)

    async def run(self, stop: asyncio.Event) -> None:
        stores = [store for r in self.runners for store in r.stage.stores]
        # every topic a stage reads or writes exists before any stage joins its group: a
        # missing one is an error here, at start, never a crash after a send
        await require_topics(self.config.client, self.flow_topics(), wait=self.config.topic_wait)
        await ensure_changelogs(
            self.config.client,
            stores,
            self.config.partitions,
            self.config.replication,
            min_insync=self.config.min_insync,
        )
        # a changelog created a moment ago is not in every broker's metadata yet
        await require_topics(
            self.config.client,
            sorted({s.topic for s in stores}),
            wait=max(self.config.topic_wait, 30.0),
        )
        await self.producer.start()
        self.started = True
        tasks = [asyncio.create_task(r.run(stop), name=r.stage.name) for r in self.runners]
        tasks.extend(asyncio.create_task(job(stop, self)) for job in self.background)
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            stop.set()
            for task in done:
                task.result()  # raises the failure that ended it
            await asyncio.gather(*tasks)
        finally:
            stop.set()
            for task in tasks:
                if not task.done():
                    task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(*tasks, return_exceptions=True)
            self.started = False
            await self.producer.stop()

    def flow_topics(self) -> list[str]:
        """The topics the stages read and write (their changelogs aside)."""
        return sorted({t for r in self.runners for t in (*r.stage.inputs, *r.stage.writes)})

    def phases(self) -> dict[str, str]:
        return {r.stage.name: r.phase if self.started else "starting" for r in self.runners}

    def checks(self) -> list[Check]:
        """Readiness: one check per stage (``recovering gate[0]``, ``stage verify starting``)."""
        return phase_checks("stage", self.phases())

    def health(self) -> tuple[bool, dict[str, Any]]:
        phases = self.phases()
        return all(p == "running" for p in phases.values()), {"stages": phases}

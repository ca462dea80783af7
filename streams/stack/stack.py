"""The whole local stack under one data dir: Kafka, PostgreSQL, topics, migrations, the faust
worker and the sinks. Foreground (`postwire up`) supervises the children and stops them all in
order on Ctrl-C/SIGTERM; detached (`up --detach`) leaves them running for `postwire down`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from streams.db.migrate import apply_migrations
from streams.errors import StackError
from streams.kafka.topics import ensure_topics
from streams.settings import Settings
from streams.stack.kafka import EmbeddedKafka
from streams.stack.postgres import EmbeddedPostgres
from streams.stack.process import ManagedProcess, pid_alive, stop_pid
from streams.stages.names import BULK_STAGES, FRONT_STAGES, TX_STAGES
from streams.stages.policies import delay_topics

__all__ = [
    "KAFKA_NAMES",
    "STOP_ORDER",
    "WORKER_ROLES",
    "Stack",
    "StackInfo",
    "stop_detached",
    "worker_port",
]

# the embedded cluster's nodes (streams.stack.kafka.KafkaNode.name)
KAFKA_NAMES = ("kafka", *(f"kafka{i}" for i in range(1, 16)))
# applications first so they flush and commit while Kafka and PostgreSQL are still there
STOP_ORDER = (
    "api",
    "sinks",
    "worker",
    *(f"worker{i}" for i in range(1, 16)),
    "tx",
    *(f"tx{i}" for i in range(1, 16)),
    "bulk",
    *(f"bulk{i}" for i in range(1, 16)),
    # the brokers stop together (EmbeddedKafka.stop, _stop_brokers): the quorum goes as one
    *KAFKA_NAMES,
    "postgres",
)


WORKER_ROLES = ("worker", "tx", "bulk")


def worker_port(settings: Settings, role: str, slot: int) -> int:
    """The web port (metrics, health) of a worker process: the front ones first, then the
    transactional lanes, then the bulk ones."""
    return settings.worker_web_port + WORKER_ROLES.index(role) * settings.worker_processes + slot


def _stages(stages: tuple[str, ...]) -> list[str]:
    return [arg for stage in stages for arg in ("--stage", stage)]


@dataclass
class StackInfo:
    bootstrap: str
    database_url: str
    data_dir: Path
    pids: dict[str, int] = field(default_factory=dict)
    started_in: float = 0.0
    topics_created: list[str] = field(default_factory=list)


def _run_dir(settings: Settings) -> Path:
    return settings.data_dir / "run"


def _live_pids(settings: Settings) -> dict[str, int]:
    live = {}
    for name in STOP_ORDER:
        path = _run_dir(settings) / f"{name}.pid"
        try:
            pid = int(path.read_text().strip())
        except (OSError, ValueError):
            continue
        if pid_alive(pid):
            live[name] = pid
        else:
            path.unlink(missing_ok=True)
    return live


def stop_detached(settings: Settings) -> dict[str, int]:
    """Stop a stack started with ``up --detach`` from its pid files; return what was stopped."""
    stopped = {}
    live = _live_pids(settings)
    for name in STOP_ORDER:
        if name == "kafka":
            stopped.update(_stop_brokers(settings, live))
        elif name in live and name not in KAFKA_NAMES:
            sig = signal.SIGINT if name == "postgres" else signal.SIGTERM
            stop_pid(live[name], sig, timeout=30.0)
            (_run_dir(settings) / f"{name}.pid").unlink(missing_ok=True)
            stopped[name] = live[name]
    (_run_dir(settings) / "stack.json").unlink(missing_ok=True)
    return stopped


def _stop_brokers(settings: Settings, live: dict[str, int]) -> dict[str, int]:
    """Signal every broker at once, then wait for each: one by one, the last ones would wait
    for a controller quorum the first ones took with them."""
    brokers = {name: pid for name, pid in live.items() if name in KAFKA_NAMES}
    for pid in brokers.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for name, pid in brokers.items():
        stop_pid(pid, signal.SIGTERM, timeout=30.0)
        (_run_dir(settings) / f"{name}.pid").unlink(missing_ok=True)
    return brokers


class Stack:
    def __init__(self, settings: Settings, *, workers: bool = True) -> None:
        self.settings = settings
        self.workers = workers
        self.kafka = EmbeddedKafka(settings) if settings.embedded_kafka else None
        self.postgres = EmbeddedPostgres(settings) if settings.embedded_postgres else None
        self.apps: list[ManagedProcess] = []
        self.info = StackInfo(settings.bootstrap, settings.dsn, settings.data_dir)

    def _child_env(self) -> dict[str, str]:
        env = {**os.environ, **self.settings.to_env()}
        # the children use the servers this stack runs, never start their own
        env["POSTWIRE_KAFKA_BOOTSTRAP"] = self.settings.bootstrap
        env["POSTWIRE_DATABASE_URL"] = self.settings.dsn
        # to a child the cluster is an external one: it is told the replication that follows
        # this stack's cluster size rather than falling back to 1
        env["POSTWIRE_REPLICATION_FACTOR"] = str(self.settings.topic_replication_factor)
        env["POSTWIRE_MIN_INSYNC_REPLICAS"] = str(self.settings.topic_min_insync_replicas)
        return env

    def process(self, name: str, *args: str, env: dict[str, str] | None = None) -> ManagedProcess:
        """A ``python -m streams <args>`` child with this stack's servers in its environment."""
        return ManagedProcess(
            name=name,
            argv=[sys.executable, "-m", "streams", *args],
            log_path=self.settings.data_dir / "logs" / f"{name}.log",
            pid_path=_run_dir(self.settings) / f"{name}.pid",
            env={**self._child_env(), **(env or {})},
            stop_timeout=30.0,
        )

    def _workers(self) -> list[ManagedProcess]:
        """Per worker slot three processes: ``worker`` (gate, verify), ``tx`` (the
        transactional lane) and ``bulk`` (bulk lane, delay topics, queue commands, in a consumer
        group of its own). Each stage has its own consumer group, so the split costs no
        rebalance; it gives each part a loop (and a core) of its own, and a bulk backlog never
        stands in front of a password reset."""
        workers = []
        for i in range(self.settings.worker_processes):
            suffix = str(i) if i else ""
            for role, stages in zip(
                WORKER_ROLES, (FRONT_STAGES, TX_STAGES, BULK_STAGES), strict=True
            ):
                env = {"POSTWIRE_WORKER_WEB_PORT": str(worker_port(self.settings, role, i))}
                if role == "bulk":
                    env["POSTWIRE_APP_ID"] = f"{self.settings.app_id}-bulk"
                workers.append(self.process(f"{role}{suffix}", "worker", *_stages(stages), env=env))
        return workers

    def _all(self) -> dict[str, ManagedProcess]:
        found = {p.name: p for p in self.apps}
        if self.kafka is not None:
            found.update((p.name, p) for p in self.kafka.processes)
        if self.postgres is not None:
            found["postgres"] = self.postgres.process
        return found

    async def start(self, *, detach: bool) -> StackInfo:
        began = time.monotonic()
        live = _live_pids(self.settings)
        if live:
            names = ", ".join(f"{n} (pid {p})" for n, p in live.items())
            raise StackError(
                f"a stack is already running from {self.settings.data_dir}: {names}; "
                "run `postwire down` first."
            )
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            # start both servers before waiting on either: their start-ups overlap
            if self.kafka is not None:
                self.kafka.start(detach=detach)
            if self.postgres is not None:
                self.postgres.start(detach=detach)
            waits = []
            if self.kafka is not None:
                waits.append(self.kafka.wait_ready())
            if self.postgres is not None:
                waits.append(self.postgres.wait_ready())
            await asyncio.gather(*waits)
            self.info.topics_created = await ensure_topics(
                self.settings.kafka, delay_topics(self.settings)
            )
            await apply_migrations(self.settings.dsn)
            if self.workers:
                self.apps = [
                    *self._workers(),
                    self.process("sinks", "sink"),
                    self.process("api", "api"),
                ]
                for app in self.apps:
                    app.start(detach=detach)
        except BaseException:
            self.stop()
            raise
        self.info.pids = {name: p.pid for name, p in self._all().items() if p.pid is not None}
        self.info.started_in = time.monotonic() - began
        self._write_state()
        return self.info

    def _write_state(self) -> None:
        state = {
            "bootstrap": self.info.bootstrap,
            "database_url": self.info.database_url,
            "pids": self.info.pids,
            "supervisor": os.getpid(),
        }
        path = _run_dir(self.settings) / "stack.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(state, indent=2))

    def dead_child(self) -> ManagedProcess | None:
        for proc in self._all().values():
            if not proc.running():
                return proc
        return None

    def stop(self) -> None:
        procs = self._all()
        for name in STOP_ORDER:
            if name == "kafka" and self.kafka is not None:
                self.kafka.stop()
            elif name in procs and name not in KAFKA_NAMES:
                procs[name].stop()
        (_run_dir(self.settings) / "stack.json").unlink(missing_ok=True)

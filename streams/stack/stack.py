"""The whole local stack under one data dir: Kafka, PostgreSQL, topics, migrations, the faust
worker and the sinks. It starts and stops them in order; keeping them running is the
supervisor's job (streams/stack/supervisor.py), in `postwire up` or in the background process
`up --detach` starts, which `postwire down` stops first."""

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
from streams.stages.names import BULK_STAGES, FRONT_STAGES, TX_STAGES, WEBHOOK_STAGES
from streams.stages.policies import delay_topics, shaping_rules, webhook_delay_topics

__all__ = [
    "STOP_ORDER",
    "SUPERVISOR_PID",
    "WORKER_ROLES",
    "Stack",
    "StackInfo",
    "stop_detached",
    "stop_rank",
    "supervisor_pid",
    "webhooks_port",
    "worker_port",
]

# applications first so they flush and commit while Kafka and PostgreSQL are still there
STOP_ORDER = (
    "api",
    "inbound",
    "sinks",
    "webhooks",
    "worker",
    *(f"worker{i}" for i in range(1, 16)),
    "tx",
    *(f"tx{i}" for i in range(1, 16)),
    "bulk",
    *(f"bulk{i}" for i in range(1, 16)),
    # kafka1, kafka2, ... rank with it (stop_rank) and stop together with it
    "kafka",
    "postgres",
)


WORKER_ROLES = ("worker", "tx", "bulk")


def stop_rank(name: str) -> int:
    """Where ``name`` stops in STOP_ORDER; a numbered one not listed (``kafka2``) with its kind,
    anything else last, so no child of the stack is ever left running."""
    for candidate in (name, name.rstrip("0123456789")):
        if candidate in STOP_ORDER:
            return STOP_ORDER.index(candidate)
    return len(STOP_ORDER)


def worker_port(settings: Settings, role: str, slot: int) -> int:
    """The web port (metrics, health) of a worker process: the front ones first, then the
    transactional lanes, then the bulk ones."""
    return settings.worker_web_port + WORKER_ROLES.index(role) * settings.worker_processes + slot


def webhooks_port(settings: Settings) -> int:
    """The webhooks process's web port: the one after every worker's."""
    return settings.worker_web_port + len(WORKER_ROLES) * settings.worker_processes


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
    """The children's pid files whose process is still there, in stop order (every pid file:
    a child the stack started under any name is found)."""
    live = {}
    paths = [p for p in _run_dir(settings).glob("*.pid") if p.name != SUPERVISOR_PID]
    for path in sorted(paths, key=lambda p: stop_rank(p.stem)):
        name = path.stem
        try:
            pid = int(path.read_text().strip())
        except (OSError, ValueError):
            continue
        if pid_alive(pid):
            live[name] = pid
        else:
            path.unlink(missing_ok=True)
    return live


SUPERVISOR_PID = "supervisor.pid"


def supervisor_pid(settings: Settings) -> int | None:
    """The pid of the supervisor running this data dir's stack, if it is still there."""
    try:
        pid = int((_run_dir(settings) / SUPERVISOR_PID).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def stop_detached(settings: Settings) -> dict[str, int]:
    """Stop a stack from its pid files (the supervisor first, so it restarts nothing it sees
    stopped; it stops its children in order itself), then whatever is left; return what was
    stopped."""
    stopped = {}
    live = _live_pids(settings)
    supervisor = supervisor_pid(settings)
    if supervisor is not None:
        # long enough for every child's own stop timeout, in order
        stop_pid(supervisor, signal.SIGTERM, timeout=180.0)
        stopped["supervisor"] = supervisor
    (_run_dir(settings) / SUPERVISOR_PID).unlink(missing_ok=True)
    for name, pid in live.items():
        if not pid_alive(pid):
            (_run_dir(settings) / f"{name}.pid").unlink(missing_ok=True)
            stopped[name] = pid
    # what a supervisor that is gone (or was killed above) left running
    left = _live_pids(settings)
    for name, pid in left.items():
        if _is_broker(name):
            # all of them at the first (stop order keeps them side by side)
            if name not in stopped:
                stopped.update(_stop_brokers(settings, left))
            continue
        sig = signal.SIGINT if name == "postgres" else signal.SIGTERM
        stop_pid(pid, sig, timeout=30.0)
        (_run_dir(settings) / f"{name}.pid").unlink(missing_ok=True)
        stopped[name] = pid
    (_run_dir(settings) / "stack.json").unlink(missing_ok=True)
    return stopped


def _is_broker(name: str) -> bool:
    return name.rstrip("0123456789") == "kafka"


def _stop_brokers(settings: Settings, live: dict[str, int]) -> dict[str, int]:
    """Signal every broker at once, then wait for each: one by one, the last ones would wait
    for a controller quorum the first ones took with them."""
    brokers = {name: pid for name, pid in live.items() if _is_broker(name) and pid_alive(pid)}
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
        # one webhooks process whatever the slots: its posts wait on tenants' endpoints, and
        # on a loop of its own they never slow a stage that moves mail
        env = {"POSTWIRE_WORKER_WEB_PORT": str(webhooks_port(self.settings))}
        workers.append(self.process("webhooks", "worker", *_stages(WEBHOOK_STAGES), env=env))
        return workers

    def applications(self) -> list[ManagedProcess]:
        """The workers, the sinks, the API and, with a bounce domain, the inbound SMTP server
        (it runs only where mail goes out with return paths on that domain)."""
        apps = [*self._workers(), self.process("sinks", "sink"), self.process("api", "api")]
        if self.settings.inbound.bounce_domain:
            apps.append(self.process("inbound", "inbound"))
        return apps

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
        supervisor = supervisor_pid(self.settings)
        if supervisor is not None and supervisor != os.getpid():
            live["supervisor"] = supervisor
        if live:
            names = ", ".join(f"{n} (pid {p})" for n, p in live.items())
            raise StackError(
                f"a stack is already running from {self.settings.data_dir}: {names}; "
                "run `postwire down` first."
            )
        if self.workers:
            # a bad shaping file is refused here, not by every worker restarting on it
            shaping_rules(self.settings.delivery)
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
                self.settings.kafka,
                delay_topics(self.settings),
                webhook_delay_topics(self.settings),
            )
            await apply_migrations(self.settings.dsn)
            if self.workers:
                self.apps = self.applications()
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

    def children(self) -> dict[str, ManagedProcess]:
        """Every process this stack started, by name (servers included)."""
        return self._all()

    def record_pid(self, name: str, pid: int) -> None:
        """A child was restarted: stack.json names its new pid."""
        self.info.pids[name] = pid
        self._write_state()

    def stop(self) -> None:
        procs = self._all()
        brokers_stopped = False
        for name in sorted(procs, key=stop_rank):
            if _is_broker(name) and self.kafka is not None:
                # all of them at once, at the first (stop_rank puts them side by side)
                if not brokers_stopped:
                    self.kafka.stop()
                    brokers_stopped = True
            else:
                procs[name].stop()
        (_run_dir(self.settings) / "stack.json").unlink(missing_ok=True)

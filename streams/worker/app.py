"""A worker process: the stages on the batch runtime (gate, deferral, verify) and, until they move
there too, the delivery lanes as faust agents. The faust worker is the process host (signals,
web server with /metrics and /healthz, logging); the runtime stages run inside it as a service."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Callable
from typing import Any

import faust
import mode

from streams.clock import Clock, wall_clock
from streams.contract.codec import Codec, default_codec
from streams.db.directory import DirectoryHolder
from streams.deliver.queue import ControlFeed
from streams.deliver.shaping import Shaping
from streams.deliver.shaping_feed import ShapingFeed, preload_sites
from streams.deliver.throttle import SiteSlots
from streams.kafka.config import client_options
from streams.kafka.limits import (
    DEFAULT_LIMIT,
    LimitReader,
    RecordLimit,
    flow_topics,
    read_or_default,
)
from streams.kafka.metadata import wait_for_cluster
from streams.kafka.topics import changelog_topic
from streams.obs import tracing
from streams.obs.health import Check, Probe
from streams.obs.logs import configure_logging
from streams.runtime.eventloop import install_fast_loop
from streams.runtime.host import HostConfig, StageHost
from streams.runtime.probes import kafka_probe
from streams.runtime.stage import Stage
from streams.runtime.state import Store
from streams.runtime.tables import DiskTables, TableFactory
from streams.settings import Settings
from streams.stages.deliver import LaneStage, deliver_stages
from streams.stages.gate_stage import DeferralStage, GateStage
from streams.stages.names import DELIVER_PARTS, KNOWN_STAGES, STAGES
from streams.stages.policies import gate_trust, shaping_rules
from streams.stages.verify import VerifyStage, build_verifier
from streams.stages.webhooks import webhook_stages
from streams.worker.broker import broker_credentials
from streams.worker.shell import install_directory
from streams.worker.web import install_pages

__all__ = ["STAGES", "RuntimeService", "create_app", "run_worker", "runtime_stages"]

log = logging.getLogger("postwire.worker")


def state_tables(settings: Settings) -> DiskTables | None:
    """The worker's disk tables, or None when its stores stay in memory."""
    if settings.state_store == "memory":
        return None
    return DiskTables(settings.data_dir / "state", settings.app_id)


def runtime_stages(
    settings: Settings,
    stages: tuple[str, ...],
    codec: Codec,
    directory: DirectoryHolder,
    tables: TableFactory | None = None,
    limit: RecordLimit = DEFAULT_LIMIT,
) -> list[Stage]:
    """The stages of ``stages`` that run on the batch runtime, with their stores; ``limit``:
    the record size the flow's topics take."""
    found: list[Stage] = []
    topics = settings.topics
    if "gate" in stages:
        store = Store("gate", changelog_topic(settings.app_id, "gate"), tables)
        trust = gate_trust(settings.secret)
        found.append(
            GateStage(
                codec,
                topics,
                directory,
                store,
                trust=trust,
                dedup_ttl=settings.dedup_ttl,
                limit=limit,
                limits=LimitReader(client_options(settings.kafka), flow_topics(settings.topics)),
            )
        )
        found.append(DeferralStage(codec, topics))
    if "verify" in stages:
        store = Store("verdicts", changelog_topic(settings.app_id, "verdicts"), tables)
        verifier = build_verifier(settings.verify, directory)
        found.append(
            VerifyStage(codec, topics, verifier, store, concurrency=settings.verify_concurrency)
        )
    return found


class RuntimeService(mode.Service):
    """The runtime stages as a child service of the faust app: started with it, stopped with
    it (finishing and committing the batch in flight), and a failure crashes the worker."""

    def __init__(
        self, host: StageHost, on_failure: Any, tables: DiskTables | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.host = host
        self.tables = tables
        self.on_failure = on_failure
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def on_start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            await self.host.run(self._stop)
        except Exception as exc:
            log.critical("a runtime stage failed, stopping the worker: %s", exc, exc_info=True)
            await self.on_failure(exc)

    async def on_stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._task), 30.0)
            if not self._task.done():
                # still draining (an SMTP data timeout, Kafka away): it must not touch a store
                # after this closes them, so it ends here; what it did not commit is read again
                self._task.cancel()
                with contextlib.suppress(BaseException):
                    await self._task
        for runner in self.host.runners:
            for store in runner.stage.stores:
                store.close()
        if self.tables is not None:
            self.tables.close()


def stage_directory(settings: Settings, stages: tuple[str, ...]) -> DirectoryHolder:
    """The directory of a worker; one that delivers mail also opens the tenants' DKIM keys, one
    that gates requests the API keys' sealed copies (it checks what direct producers sign)."""
    signs = any(part in DELIVER_PARTS for part in stages)
    gates = "gate" in stages
    return DirectoryHolder(
        settings.database,
        key_secret=settings.secret if gates else None,
        dkim_secret=settings.secret if signs else None,
    )


def create_app(
    settings: Settings,
    stages: tuple[str, ...] = STAGES,
    clock: Clock = wall_clock,
    directory: DirectoryHolder | None = None,
    control: ControlFeed | None = None,
    on_failure: Any = None,
    limit: RecordLimit = DEFAULT_LIMIT,
    shaping: Shaping | None = None,
) -> faust.App:
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.bootstrap}",
        broker_credentials=broker_credentials(settings.kafka.security),
        store="memory://",
        autodiscover=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.topic_replication_factor,
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=settings.heartbeat_interval,
        broker_rebalance_timeout=settings.rebalance_timeout,
        broker_commit_interval=settings.commit_interval,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # a few ms of linger turns one produce request per record into one per batch
        producer_linger_ms=settings.producer_linger_ms,
        # faust binds `web_bind` (0.0.0.0 unless told) and only names `web_host` in URLs
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.worker_web_port,
        datadir=str(settings.data_dir / "faust"),
    )
    codec = default_codec()
    unknown = set(stages) - set(KNOWN_STAGES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; known: {', '.join(KNOWN_STAGES)}")
    directory = directory or stage_directory(settings, stages)
    install_directory(app, directory)
    flags = {"directory_loaded": directory.ready.is_set}
    tables = state_tables(settings)
    found = runtime_stages(settings, stages, codec, directory, tables, limit)
    background = []
    slots: SiteSlots | None = None
    lanes = tuple(sorted({lane for part in stages for lane in DELIVER_PARTS.get(part, ())}))
    if lanes:
        feed = control or ControlFeed(settings.kafka)
        flags["queue_control_loaded"] = feed.ready.is_set
        # one Shaping per process, shared by its lanes and fed by every other process's rules
        if shaping is None:
            shaping = Shaping(shaping_rules(settings.delivery))
        # the delay topics and queue commands go with the bulk lane: one process group
        # re-queues released mail, so it is not re-queued twice
        delivering = deliver_stages(settings, codec, directory, clock, feed, lanes, tables, shaping)
        found.extend(delivering)
        background.append(_control_feed(feed))
        background.append(_shaping_feed(ShapingFeed(settings.kafka, shaping)))
        lane = next(s for s in delivering if isinstance(s, LaneStage))
        slots = lane.shell.deliverer.throttle.slots
    if "webhooks" in stages:
        shell, hooks = webhook_stages(
            settings.webhooks, settings.topics, codec, settings.dsn, settings.secret
        )
        found.extend(hooks)
        background.append(shell.run)
        flags["webhook_endpoints_loaded"] = shell.book.ready.is_set
    kafka = kafka_probe(
        client_options(settings.kafka),
        interval=settings.health_interval,
        timeout=settings.health_timeout,
    )
    background.append(lambda stop, _host: kafka.run(stop))
    host = StageHost(
        HostConfig(
            client_options(settings.kafka),
            settings.app_id,
            partitions=settings.partitions,
            replication=settings.topic_replication_factor,
            min_insync=settings.topic_min_insync_replicas,
            linger_ms=settings.producer_linger_ms,
            session_timeout=settings.session_timeout,
            heartbeat_interval=settings.heartbeat_interval,
            commit_interval=settings.commit_interval,
            max_uncommitted_records=settings.max_uncommitted_records,
            max_uncommitted_seconds=settings.max_uncommitted_seconds,
            recovery_stall_timeout=settings.recovery_stall_timeout,
            producer=limit.stage_producer_config(),
        ),
        found,
        clock,
        background=background,
    )
    app.add_dependency(RuntimeService(host, on_failure or _no_failure_hook, tables, loop=None))
    install_pages(app, lambda: worker_checks(host, flags, kafka, directory, slots))
    return app


def worker_checks(
    host: StageHost,
    flags: dict[str, Callable[[], bool]],
    kafka: Probe,
    directory: DirectoryHolder,
    slots: SiteSlots | None = None,
) -> list[Check]:
    """What a worker needs to do its job: every stage assigned and recovered, the directory
    (and the queue-control feed) loaded, Kafka answering. PostgreSQL is not one of them: it
    only refreshes the directory, and the last one keeps serving (its age is in the body)."""
    checks = host.checks()
    checks.extend(
        Check(name, bool(flag()), name.replace("_", " ") + ": not yet")
        for name, flag in flags.items()
    )
    checks.append(kafka.check())
    age = directory.age()
    checks.append(
        Check("directory", True, detail={"age_s": None if age is None else round(age, 1)})
    )
    checks.append(Check("stages", True, detail=host.phases()))
    if slots is not None:
        # shown, not judged: without its database session a delivery worker waits for slots,
        # it is not broken (README: PostgreSQL down)
        checks.append(Check("connection_slots", True, detail=slots.status()))
    return checks


def _control_feed(feed: ControlFeed) -> Any:
    """Read queue commands for as long as the host runs; a command that changes what is due
    wakes the delay tiers at once instead of at their next look."""

    async def run(stop: asyncio.Event, host: StageHost) -> None:
        feed.start()
        delays = [r for r in host.runners if r.stage.name.startswith("delay.")]
        try:
            while not stop.is_set():
                await feed.wait_changed(1.0)
                for runner in delays:
                    runner.wake()
        finally:
            await feed.stop()

    return run


def _shaping_feed(feed: ShapingFeed) -> Any:
    """Fold every process's shaping states into this one's for as long as the host runs."""

    async def run(stop: asyncio.Event, _host: StageHost) -> None:
        feed.start()
        try:
            await stop.wait()
        finally:
            await feed.stop()

    return run


async def _no_failure_hook(exc: BaseException) -> None:
    raise exc


def tune_gc() -> None:
    """Keep what start-up allocated out of every collection, and collect the youngest
    generation less often: a batch allocates tens of thousands of short-lived objects that
    reference counting frees anyway, and each gen-0 pass over them showed up in profiles."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def run_worker(settings: Settings, stages: tuple[str, ...] = STAGES) -> None:
    """Run the faust worker in this process until SIGINT/SIGTERM."""
    configure_logging(settings.logs, "worker", app=settings.app_id, stages=",".join(stages))
    tracing.setup(settings.tracing, "worker." + "+".join(stages))
    install_fast_loop(kafka_tls=settings.kafka.security.tls)
    # faust and aiokafka build debug records on every send even when nobody prints them
    logging.disable(logging.DEBUG)
    directory = stage_directory(settings, stages)
    directory.preload()
    control = None
    shaping = None
    if any(part in DELIVER_PARTS for part in stages):
        control = ControlFeed(settings.kafka)
        control.preload()
        # a bad shaping file stops the worker here, before it joins any group
        shaping = Shaping(shaping_rules(settings.delivery))
        preload_sites(settings.kafka, shaping)
    worker: faust.Worker | None = None

    async def crash(exc: BaseException) -> None:
        # the worker re-raises the reason when it stops: the process exits with status 1
        assert worker is not None
        await worker.crash(exc)

    client = client_options(settings.kafka)
    # read before the stages start: the gate measures every request against it, and the
    # producer is sized by it; a broker still starting (or restarting) is waited for first
    asyncio.run(wait_for_cluster(client, settings.kafka.start_wait))
    limit = asyncio.run(read_or_default(client, flow_topics(settings.topics)))
    app = create_app(
        settings,
        stages,
        directory=directory,
        control=control,
        on_failure=crash,
        limit=limit,
        shaping=shaping,
    )
    tune_gc()
    # override_logging=False: mode's Worker would otherwise replace our root handler with its
    # own text formatter when it starts (configure_logging above set the level)
    worker = faust.Worker(app, quiet=True, redirect_stdouts=False, override_logging=False)
    # the terminal spinner mode's logging set-up would have switched off: it writes cursor
    # escapes to stdout, into the middle of the JSON lines; without it faust logs "Ready"
    worker.spinner = None
    worker.execute_from_commandline()

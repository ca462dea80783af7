"""The faust application, configured from Settings, with the stages registered."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import faust

from streams.codec import default_codec
from streams.deliver.queue import ControlFeed
from streams.obs.faust_web import install_pages
from streams.obs.logs import configure_logging
from streams.settings import Settings
from streams.stages import deliver, gate, verify
from streams.stages.names import DELIVER_PARTS, KNOWN_STAGES, STAGES
from streams.stages.shell import Clock, DirectoryHolder, Outputs, wall_clock

__all__ = ["STAGES", "create_app", "run_worker"]


def create_app(
    settings: Settings,
    stages: tuple[str, ...] = STAGES,
    clock: Clock = wall_clock,
    directory: DirectoryHolder | None = None,
    control: ControlFeed | None = None,
) -> faust.App:
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.bootstrap}",
        store="memory://",
        autodiscover=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=settings.heartbeat_interval,
        broker_rebalance_timeout=settings.rebalance_timeout,
        broker_commit_interval=settings.commit_interval,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # a few ms of linger turns one produce request per record into one per batch
        producer_linger_ms=settings.producer_linger_ms,
        web_host=settings.web_host,
        web_port=settings.worker_web_port,
        datadir=str(settings.data_dir / "faust"),
    )
    codec = default_codec()
    unknown = set(stages) - set(KNOWN_STAGES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; known: {', '.join(KNOWN_STAGES)}")
    outputs = Outputs(app, settings, codec)
    directory = directory or DirectoryHolder(settings)
    directory.install(app)
    checks = {"directory_loaded": directory.ready.is_set}
    if control is not None:
        checks["queue_control_loaded"] = control.ready.is_set
    install_pages(app, checks)
    if "gate" in stages:
        gate.register(app, settings, codec, outputs, directory, clock)
    if "verify" in stages:
        verify.register(app, settings, codec, outputs, directory, clock)
    lanes = tuple(lane for part in stages for lane in DELIVER_PARTS.get(part, ()))
    if lanes:
        # the delay topics and queue commands go with the bulk lane: one process group
        # re-queues released mail, so it is not re-queued twice
        deliver.register(
            app,
            settings,
            codec,
            outputs,
            directory,
            clock,
            control,
            lanes=tuple(sorted(set(lanes))),
        )
    return app


def tune_producer_buffer(settings: Settings) -> None:
    """faust parks an agent whenever more than 100 table-changelog records wait to be produced,
    so every agent that writes a table stalls every few ms under load; let a burst through."""
    from faust.transport.producer import ProducerBuffer

    ProducerBuffer.max_messages = settings.changelog_buffer


def run_worker(settings: Settings, stages: tuple[str, ...] = STAGES) -> None:
    """Run the faust worker in this process until SIGINT/SIGTERM."""
    configure_logging(settings, "worker", app=settings.app_id, stages=",".join(stages))
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    # faust and aiokafka build debug records on every send even when nobody prints them
    logging.disable(logging.DEBUG)
    directory = DirectoryHolder(settings)
    directory.preload()
    control = None
    if any(part in DELIVER_PARTS for part in stages):
        control = ControlFeed(settings)
        control.preload()
    app = create_app(settings, stages, directory=directory, control=control)
    tune_producer_buffer(settings)
    # override_logging=False: mode's Worker would otherwise replace our root handler with its
    # own text formatter when it starts (configure_logging above set the level)
    worker = faust.Worker(app, quiet=True, redirect_stdouts=False, override_logging=False)
    # the terminal spinner mode's logging set-up would have switched off: it writes cursor
    # escapes to stdout, into the middle of the JSON lines; without it faust logs "Ready"
    worker.spinner = None
    worker.execute_from_commandline()

"""The faust side of the delivery lanes (until they move to the batch runtime): raw topics,
outputs through faust's producer, the directory's refresh on a faust timer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import faust

from streams.codec import Codec, Record
from streams.directory import DirectoryHolder
from streams.runtime.records import Clock, header, wall_clock
from streams.settings import Settings

__all__ = [
    "Clock",
    "DirectoryHolder",
    "OutputTopic",
    "Outputs",
    "header",
    "install_directory",
    "raw_topic",
    "wall_clock",
]


def raw_topic(app: faust.App, name: str) -> Any:
    return app.topic(name, key_serializer="raw", value_serializer="raw")


class OutputTopic:
    """Send raw bytes straight to faust's producer: the Topic.send path builds a FutureMessage,
    runs sensors and formats a debug line per record, which costs more than the send itself on
    the hot path. Same producer, so faust's flush-before-commit still covers these records."""

    def __init__(self, app: faust.App, name: str) -> None:
        self.app = app
        self.name = name

    async def send(
        self, *, key: bytes | None, value: bytes | None, headers: Mapping[str, bytes] | None = None
    ) -> Any:
        return await self.app.producer.send(self.name, key, value, None, None, headers)


class Outputs:
    """Encode once and send to the result topics; keys chosen for ordering per message."""

    def __init__(self, app: faust.App, settings: Settings, codec: Codec) -> None:
        t = settings.topics
        self.codec = codec
        self.events = OutputTopic(app, t.events)
        self.rejections = OutputTopic(app, t.rejections)
        self.verify = OutputTopic(app, t.verify)
        self.verifications = OutputTopic(app, t.verifications)
        self.accepted = OutputTopic(app, t.accepted)
        self.deferred = OutputTopic(app, t.deferred)
        self.requests = OutputTopic(app, t.requests)
        self.lanes = {lane: OutputTopic(app, t.lane(lane)) for lane in ("tx", "bulk")}
        self.queue = OutputTopic(app, t.queue)
        self.suppressions = OutputTopic(app, t.suppressions)

    async def event(self, record: Record) -> None:
        key = (record["message_id"] or record["request_id"] or record["tenant"]).encode()
        await self.events.send(key=key, value=self.codec.encode("DeliveryEvent", record))

    async def rejection(self, record: Record) -> None:
        await self.rejections.send(key=record["key"], value=self.codec.encode("Rejection", record))


def install_directory(app: faust.App, holder: DirectoryHolder) -> None:
    """Reload ``holder`` on a faust timer in a faust worker."""

    @app.timer(holder.settings.directory_refresh, on_leader=False)
    async def refresh_directory() -> None:
        await holder.refresh()

    @app.task
    async def first_directory() -> None:
        await holder.refresh()

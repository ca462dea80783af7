"""One idempotent producer per process for every stage's outputs and changelogs: records are
handed to aiokafka without waiting, and ``settle`` waits for Kafka's acknowledgement of all of
them at once (acks=all) before the caller commits the offsets that produced them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from streams.errors import RuntimeProduceError
from streams.kafka.connect import start_client
from streams.runtime.records import Out

__all__ = ["BatchProducer"]


class BatchProducer:
    def __init__(self, client: Mapping[str, Any], *, linger_ms: int = 2, **config: Any) -> None:
        # ``client``: the options of streams.kafka.config.client_options (cluster, SASL, TLS)
        self._client_options = dict(client)
        self._config: dict[str, Any] = {
            **self._client_options,
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": linger_ms,
            "max_batch_size": 256 * 1024,
            **config,
        }
        self._client: AIOKafkaProducer | None = None
        self.sent: dict[str, int] = {}  # records per topic since start (replay summaries)

    @property
    def _producer(self) -> AIOKafkaProducer:
        if self._client is None:
            raise RuntimeError("the producer is not started")
        return self._client

    async def start(self) -> None:
        # made here, not in __init__: aiokafka binds a client to the loop running it
        self._client = AIOKafkaProducer(**self._config)
        await start_client(self._client, self._client_options)

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.stop()
            self._client = None

    async def send(self, records: Iterable[Out]) -> list[asyncio.Future[Any]]:
        """Queue ``records`` in order; the futures resolve when Kafka acknowledged each."""
        send = self._producer.send
        futures = []
        sent = self.sent
        try:
            for out in records:
                futures.append(
                    await send(
                        out.topic,
                        out.value,
                        key=out.key,
                        partition=out.partition,
                        headers=list(out.headers) if out.headers else None,
                    )
                )
                sent[out.topic] = sent.get(out.topic, 0) + 1
        except KafkaError as exc:
            raise RuntimeProduceError(f"could not queue records for Kafka: {exc}") from exc
        return futures

    async def settle(self, futures: list[asyncio.Future[Any]]) -> None:
        """Wait for every future; the first failure is raised as RuntimeProduceError."""
        if not futures:
            return
        results = await asyncio.gather(*futures, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise RuntimeProduceError(f"Kafka did not acknowledge a record: {result}") from (
                    result
                )

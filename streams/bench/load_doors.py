"""The two doors `postwire bench load` drives the pipeline through, and the open-model
generator that fires requests at them on schedule.

HTTP: ``POST /v1/verify`` (``timeout: 0``, answered 202 at once) and SendGrid ``POST
/v3/mail/send``, over one aiohttp session. Kafka: the EmailRequest records the API would have
produced for the same requests, from one AIOKafkaProducer (acks=all, idempotent), as a
producer that writes to ``postwire.requests`` directly does (signed with the tenant's key).
"""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError

from streams.api.sendgrid import translate
from streams.api.verifyjobs import plan
from streams.api.verifyjobs import requests as verify_requests
from streams.bench.load_report import Sent
from streams.bench.stacks import Credentials
from streams.contract.codec import default_codec
from streams.contract.records import EmailRequest
from streams.contract.signing import sign
from streams.kafka.config import client_options
from streams.settings import Settings

__all__ = ["DOMAINS", "Door", "DoorError", "Generator", "HttpDoor", "KafkaDoor", "send_body"]

DOMAINS = 50
SENDER = "news@bench.example"


class DoorError(Exception):
    """A request that was not acknowledged; ``kind`` is how it failed (``http_429``, ...)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def address(run: str, kind: str, i: int) -> str:
    return f"{kind[0]}{run}x{i}@d{i % DOMAINS}.bench.example"


def send_body(recipient: str) -> dict[str, Any]:
    """A transactional SendGrid v3 body: one recipient, ~0.5 KB of text."""
    return {
        "personalizations": [{"to": [{"email": recipient}], "custom_args": {"n": "1"}}],
        "from": {"email": SENDER, "name": "Bench"},
        "subject": "Your receipt",
        "content": [{"type": "text/plain", "value": "Thanks for your order. " * 20}],
        "categories": ["receipt"],
    }


class Door(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(self, kind: str, i: int) -> str:
        """Send request ``i`` of ``kind``; its request id once acknowledged, else DoorError."""
        ...


class HttpDoor:
    name = "http"

    def __init__(
        self,
        settings: Settings,
        tenants: Sequence[tuple[str, Credentials]],
        run: str,
        *,
        timeout: float,
        connections: int,
    ) -> None:
        self.base = settings.api_base
        self.headers = [{"Authorization": f"Bearer {key}"} for _, (_, key) in tenants]
        self.run = run
        self.timeout = timeout
        self.connections = connections
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.connections),
            timeout=aiohttp.ClientTimeout(total=self.timeout),
        )

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def send(self, kind: str, i: int) -> str:
        assert self.session is not None
        headers = {**self.headers[i % len(self.headers)], "Content-Type": "application/json"}
        recipient = address(self.run, kind, i)
        try:
            if kind == "verify":
                body = orjson.dumps({"email": recipient, "timeout": 0})
                url = f"{self.base}/v1/verify"
                async with self.session.post(url, data=body, headers=headers) as r:
                    if r.status not in (200, 202):
                        raise DoorError(f"http_{r.status}")
                    return str(orjson.loads(await r.read())["id"])
            body = orjson.dumps(send_body(recipient))
            url = f"{self.base}/v3/mail/send"
            async with self.session.post(url, data=body, headers=headers) as r:
                if r.status != 202:
                    raise DoorError(f"http_{r.status}")
                return r.headers["X-Message-Id"]
        except TimeoutError:
            raise DoorError("timeout") from None
        except (aiohttp.ClientConnectionError, OSError):
            raise DoorError("connection") from None
        except aiohttp.ClientError:
            raise DoorError("http_protocol") from None


class KafkaDoor:
    name = "kafka"

    def __init__(
        self,
        settings: Settings,
        tenants: Sequence[tuple[str, Credentials]],
        run: str,
        *,
        timeout: float,
    ) -> None:
        self.settings = settings
        self.tenants = list(tenants)
        self.run = run
        self.timeout = timeout
        self.codec = default_codec()
        self.producer: AIOKafkaProducer | None = None
        self.lock = asyncio.Lock()

    async def start(self) -> None:
        self.producer = AIOKafkaProducer(
            **client_options(self.settings.kafka),
            acks="all",
            enable_idempotence=True,
            linger_ms=2,
            # the default 16 KB batch holds ~25 requests: one in flight per partition, a busy
            # broker's round trip would cap the door itself; a producer at this rate batches more
            max_batch_size=256 * 1024,
        )
        await self.producer.start()

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()

    def record(self, kind: str, i: int) -> tuple[str, str, EmailRequest]:
        """(tenant, request id, EmailRequest) as the API would have produced it."""
        tenant, _ = self.tenants[i % len(self.tenants)]
        request_id = uuid.uuid4().hex
        now = datetime.now(UTC)
        priority = self.settings.api_priority
        recipient = address(self.run, kind, i)
        if kind == "verify":
            job = plan(request_id, [recipient], None)
            rec = verify_requests(job, tenant=tenant, priority=priority, now=now)[0]
        else:
            rec = translate(
                send_body(recipient),
                tenant=tenant,
                message_id=request_id,
                idempotency_key=None,
                priority=priority,
                now=now,
            )[0]
        return tenant, request_id, rec

    async def send(self, kind: str, i: int) -> str:
        assert self.producer is not None
        tenant, request_id, rec = self.record(kind, i)
        key_id, key = self.tenants[i % len(self.tenants)][1]
        value = self.codec.encode("EmailRequest", rec)
        headers = sign(value, tenant=tenant, key_id=key_id, api_key=key)
        try:
            async with asyncio.timeout(self.timeout):
                # one caller at a time: thousands of tasks waiting in send() for room in a
                # full accumulator would all wake on every batch sent (quadratic), the lock
                # queues them in order instead
                async with self.lock:
                    ack = await self.producer.send(
                        self.settings.topics.requests, value, key=tenant.encode(), headers=headers
                    )
                await ack
        except (TimeoutError, KafkaTimeoutError):
            raise DoorError("timeout") from None
        except KafkaError as exc:
            raise DoorError(f"kafka_{type(exc).__name__}") from None
        return request_id


class Generator:
    """Fires requests at ``door`` at their scheduled offsets, each as its own task, whether or
    not earlier ones were answered. More than ``cap`` unanswered requests at once and the next
    one is not sent: it counts as a ``client_overload`` error instead of waiting."""

    def __init__(self, door: Door, cap: int) -> None:
        self.door = door
        self.cap = cap
        self.sent: list[Sent] = []
        self.probes: list[Sent] = []
        self.in_flight = 0
        self.errors = 0
        self.pending = 0  # scheduled requests (not probes) sent and not answered yet
        self.acked = 0  # scheduled requests (not probes) acknowledged
        self.started = 0.0  # perf_counter() of offset 0
        self.start_wall = 0.0  # time.time() of offset 0
        self.load_end = 0.0  # time.time() once the last scheduled request went out
        self._tasks: set[asyncio.Task[None]] = set()
        self._n = 0

    async def _one(self, s: Sent, i: int, probe: bool) -> None:
        began = time.perf_counter()
        s.lag = max(began - (self.started + s.due), 0.0)
        s.sent_at = time.time()
        try:
            s.request_id = await self.door.send(s.kind, i)
            s.response_s = time.perf_counter() - began
            self.acked += not probe
        except DoorError as exc:
            s.error = exc.kind
            self.errors += 1
        finally:
            self.in_flight -= 1
            self.pending -= not probe

    def fire(self, kind: str, due: float, into: list[Sent]) -> None:
        s = Sent(kind, due)
        into.append(s)
        i, self._n = self._n, self._n + 1
        if self.in_flight >= self.cap:
            s.error = "client_overload"
            s.sent_at = time.time()
            self.errors += 1
            return
        self.in_flight += 1
        probe = into is self.probes
        self.pending += not probe
        task = asyncio.create_task(self._one(s, i, probe))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self, offsets: Iterable[float], mix: Iterator[str]) -> None:
        """Fire every scheduled request; returns once the last one went out (answers may still
        be outstanding: :meth:`settle` waits for them).

        Python's cycle collector is paused meanwhile: with thousands of requests in flight its
        full collections stopped the loop for hundreds of milliseconds (measured: schedule lag
        p99 ~1 s at 2,000/s with it, ~20 ms without). The little cyclic garbage piles up until
        the schedule is done and is collected then; the generator's RSS is in the report."""
        gc.collect()
        gc.freeze()  # what exists now is never scanned again
        gc.disable()
        try:
            self.started = time.perf_counter()
            self.start_wall = time.time()
            since_yield = 0
            for due in offsets:
                wait = self.started + due - time.perf_counter()
                if wait > 0.0005:
                    await asyncio.sleep(wait)
                    since_yield = 0
                elif since_yield >= 32:
                    # behind schedule: still let the request tasks run, or none would go out
                    await asyncio.sleep(0)
                    since_yield = 0
                self.fire(next(mix), due, self.sent)
                since_yield += 1
            await asyncio.sleep(0)  # let the last tasks start, so their sent_at is set
            self.load_end = max((s.sent_at for s in self.sent[-64:]), default=time.time())
        finally:
            gc.enable()
            gc.unfreeze()

    async def probe(self, kind: str) -> None:
        """One probe request now (a ``due`` relative to the load's start)."""
        self.fire(kind, time.perf_counter() - self.started, self.probes)

    def outstanding(self) -> int:
        return len(self._tasks)

    async def settle(self) -> None:
        """Wait for every request's answer (each is bounded by the door's timeout)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks))

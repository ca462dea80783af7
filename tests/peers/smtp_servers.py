"""Fake receiving MX servers on loopback (aiosmtpd), one 127.0.0.x address per behaviour."""

from __future__ import annotations

import asyncio
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller

__all__ = ["MxBehaviour", "MxServer", "StallServer", "free_port_on"]


def free_port_on(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class MxBehaviour:
    """How a fake MX answers RCPT TO. ``users``: mailboxes that exist; ``catch_all``: accept any;
    ``rcpt_reply``: a fixed reply for every RCPT (greylisting, full mailbox...)."""

    users: set[str] = field(default_factory=set)
    catch_all: bool = False
    rcpt_reply: str | None = None
    replies: dict[str, str] = field(default_factory=dict)  # per-address fixed replies
    # answer 451 to the first RCPT of each address, accept it afterwards (greylisting that lets go)
    defer_first: bool = False


class _Handler:
    def __init__(
        self,
        behaviour: MxBehaviour,
        stats: dict[str, int],
        lock: threading.Lock,
        received: list[tuple[list[str], bytes]],
    ) -> None:
        self.behaviour = behaviour
        self.stats = stats
        self.lock = lock
        self.received = received
        self.seen: set[str] = set()

    def _bump(self, key: str) -> None:
        with self.lock:
            self.stats[key] = self.stats.get(key, 0) + 1

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        self._bump("ehlo")
        session.host_name = hostname
        return responses

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        self._bump("rcpt")
        b = self.behaviour
        local = address.rpartition("@")[0].lower()
        if address.lower() in b.replies:
            return b.replies[address.lower()]
        if b.rcpt_reply is not None:
            return b.rcpt_reply
        if b.defer_first and address.lower() not in self.seen:
            self.seen.add(address.lower())
            return "451 4.7.1 Greylisted, come back later"
        if b.catch_all or local in b.users:
            envelope.rcpt_tos.append(address)
            return "250 2.1.5 OK"
        return "550 5.1.1 The email account that you tried to reach does not exist"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self._bump("data")
        with self.lock:
            self.received.append((list(envelope.rcpt_tos), bytes(envelope.original_content)))
        return "250 2.0.0 OK"


class MxServer:
    def __init__(self, host: str, port: int, behaviour: MxBehaviour) -> None:
        self.host = host
        self.port = port
        self.behaviour = behaviour  # a test may add mailboxes of its own to ``users``
        self.stats: dict[str, int] = {}
        self.received: list[tuple[list[str], bytes]] = []
        self._lock = threading.Lock()
        self.controller = Controller(
            _Handler(behaviour, self.stats, self._lock, self.received),
            hostname=host,
            port=port,
            server_hostname=f"mx.{host}",
            ready_timeout=10,
        )

    def count(self, key: str) -> int:
        with self._lock:
            return self.stats.get(key, 0)

    def received_snapshot(self) -> list[tuple[list[str], bytes]]:
        """Every message so far, as (recipients, data)."""
        with self._lock:
            return list(self.received)

    def messages_to(self, address: str) -> list[bytes]:
        with self._lock:
            return [data for rcpts, data in self.received if address in rcpts]

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()


class StallServer:
    """Accepts TCP and never says a word: the MX that hangs."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self.connections = 0

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        await reader.read()  # until the client gives up
        writer.close()

    def start(self) -> None:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._on_connect, self.host, self.port), self._loop
        )
        self._server = fut.result(10)

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

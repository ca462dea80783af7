"""A process starting while Kafka does not answer waits for it (bounded), instead of exiting."""

from __future__ import annotations

import asyncio
import time

import pytest

from streams.errors import UnreachableError
from streams.kafka.config import client_options
from streams.kafka.metadata import wait_for_cluster
from streams.settings import Settings
from tests.conftest import free_port

pytestmark = pytest.mark.integration


async def test_a_running_cluster_is_there_at_once(stack: Settings) -> None:
    began = time.monotonic()
    await wait_for_cluster(client_options(stack.kafka), timeout=30)
    assert time.monotonic() - began < 5


async def test_nobody_answering_is_waited_for_then_named() -> None:
    options = {"bootstrap_servers": f"127.0.0.1:{free_port()}"}
    began = time.monotonic()
    with pytest.raises(UnreachableError) as raised:
        await wait_for_cluster(options, timeout=1.5, first_pause=0.2)
    waited = time.monotonic() - began
    assert raised.value.code == "kafka.unreachable"
    assert "127.0.0.1" in str(raised.value)
    assert 1.4 <= waited < 10


async def test_a_broker_that_comes_up_meanwhile_ends_the_wait(stack: Settings) -> None:
    """A listener that appears while waiting: a TCP forwarder to the real broker, started late."""
    port = free_port()
    target = stack.bootstrap.split(",")[0].rsplit(":", 1)

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(target[0], int(target[1]))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def open_late() -> asyncio.Server:
        await asyncio.sleep(1.0)
        return await asyncio.start_server(forward, "127.0.0.1", port)

    opening = asyncio.ensure_future(open_late())
    options = {**client_options(stack.kafka), "bootstrap_servers": f"127.0.0.1:{port}"}
    began = time.monotonic()
    await wait_for_cluster(options, timeout=30, first_pause=0.2)
    server = await opening
    server.close()
    assert 0.9 <= time.monotonic() - began < 20

"""The event loop the long-running processes use: uvloop where it is installed (a dependency
everywhere but Windows). The loop's own Python (handles, call_soon, socket writes) was a third
of the API's CPU on the standard loop.

Not when Kafka is reached over TLS: uvloop's SSL transport, closed while a response is still
coming in (a consumer stopped with a fetch in flight, as every state recovery does), waits for
its 30 s shutdown timeout instead of closing (MagicStack/uvloop#471). A stage's recovery then
took 30 s, its consumer missed the session timeout, and the worker crashed on the next commit.
The standard loop closes those at once."""

from __future__ import annotations

import asyncio
import contextlib
import signal

__all__ = ["install_fast_loop", "stop_on_signals"]


def stop_on_signals() -> asyncio.Event:
    """An event the running loop sets on SIGINT or SIGTERM: what every long-running process
    waits on before its orderly stop. Installed before anything starts, so a signal at any
    moment goes through that stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def install_fast_loop(*, kafka_tls: bool = False) -> bool:
    """Make uvloop the loop of every later ``asyncio.run``; False when it is not installed or
    ``kafka_tls`` (the Kafka clients speak TLS) says it must not be."""
    if kafka_tls:
        return False
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        return True
    return False

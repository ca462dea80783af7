"""The event loop the long-running processes use: uvloop where it is installed (a dependency
everywhere but Windows). The loop's own Python (handles, call_soon, socket writes) was a third
of the API's CPU on the standard loop."""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["install_fast_loop"]


def install_fast_loop() -> bool:
    """Make uvloop the loop of every later ``asyncio.run``; False when it is not installed."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        return True
    return False

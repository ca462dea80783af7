"""The transaction phase's own reading of an SMTP session opened by aiosmtplib.

aiosmtplib reads one reply per command it sent and drops bytes that arrive while it is not
waiting, so several replies to one pipelined write would be lost or mis-paired. A ``Wire`` sits
between the session's asyncio transport and aiosmtplib's protocol: outside a transaction it
passes everything through (EHLO, STARTTLS and AUTH before, RSET and QUIT after are aiosmtplib's),
and inside one it parses the replies itself (``ReplyParser``) and queues them, so none is lost
however the server cuts them into packets. Loss of the connection reaches both.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import cast

from streams.mail.pipeline import Reply, ReplyParser

__all__ = ["Wire"]


class Wire(asyncio.Protocol):
    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._inner = cast(asyncio.Protocol, transport.get_protocol())
        self._parser: ReplyParser | None = None  # set while a transaction reads for itself
        self._replies: deque[Reply] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed: Exception | None = None
        transport.set_protocol(self)

    @property
    def is_open(self) -> bool:
        return self._closed is None and not self._transport.is_closing()

    def begin(self) -> None:
        """Read replies here from now on, until ``end``."""
        self._parser = ReplyParser()
        self._replies.clear()

    def end(self) -> bool:
        """Hand reading back to aiosmtplib; False if the server said more than was asked (the
        session's framing cannot be trusted then)."""
        parser, self._parser = self._parser, None
        clean = parser is not None and not parser.pending and not parser.broken
        clean = clean and not self._replies
        self._replies.clear()
        return clean

    def write(self, data: bytes) -> None:
        if not self.is_open:
            raise ConnectionResetError("connection lost")
        self._transport.write(data)

    async def read(self, timeout: float) -> Reply:
        """The next reply; TimeoutError after ``timeout`` seconds, ConnectionResetError if the
        session ends first."""
        if self._parser is None:
            raise RuntimeError("read outside begin/end")
        async with asyncio.timeout(timeout):
            while not self._replies:
                if self._closed is not None:
                    text = str(self._closed) or "connection lost"
                    raise ConnectionResetError(text) from self._closed
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
        return self._replies.popleft()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def close(self) -> None:
        self._transport.close()

    # --- asyncio.Protocol -----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._parser is None:
            self._inner.data_received(data)
            return
        replies = self._parser.feed(data)
        if replies:
            self._replies.extend(replies)
            self._wake()

    def eof_received(self) -> bool | None:
        if self._parser is None:
            return self._inner.eof_received()
        self._closed = ConnectionResetError("the server closed the connection")
        self._wake()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed is None:
            self._closed = exc or ConnectionResetError("connection lost")
        self._wake()
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

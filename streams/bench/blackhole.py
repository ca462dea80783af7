"""A minimal SMTP sink for benchmarks when Postfix's ``smtp-sink`` is not installed: accepts
every envelope and discards it, with PIPELINING, on loopback, in a process of its own.

Run it as ``python -m streams.bench.blackhole HOST PORT``; it prints ``listening`` once bound
and, on SIGTERM/SIGINT, ``accepted=N`` (messages whose DATA ended) before it exits. It speaks
just enough SMTP for the pipeline's relay client: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from typing import cast

from streams.runtime.eventloop import stop_on_signals

__all__ = ["SmtpBlackhole", "main"]

_EHLO = b"250-blackhole\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 104857600\r\n"
_SIMPLE = {
    b"HELO": b"250 blackhole\r\n",
    b"MAIL": b"250 2.1.0 Ok\r\n",
    b"RCPT": b"250 2.1.5 Ok\r\n",
    b"RSET": b"250 2.0.0 Ok\r\n",
    b"NOOP": b"250 2.0.0 Ok\r\n",
}


class SmtpBlackhole(asyncio.Protocol):
    accepted = 0  # across connections, for the exit line

    def __init__(self) -> None:
        self.buffer = b""
        self.in_data = False
        self.data_start = False  # nothing of the current DATA section consumed yet
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(b"220 blackhole ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        replies: list[bytes] = []
        while self.transport is not None:
            if self.in_data:
                if self.data_start and self.buffer.startswith(b".\r\n"):
                    end, skip = 0, 3
                else:
                    end = self.buffer.find(b"\r\n.\r\n")
                    skip = 5
                if end < 0:
                    # keep only what may be the start of the terminator
                    if len(self.buffer) > 4:
                        self.buffer = self.buffer[-4:]
                        self.data_start = False
                    break
                self.buffer = self.buffer[end + skip :]
                self.in_data = False
                SmtpBlackhole.accepted += 1
                replies.append(b"250 2.0.0 Ok: queued\r\n")
                continue
            line, sep, rest = self.buffer.partition(b"\r\n")
            if not sep:
                break
            self.buffer = rest
            verb = line[:4].upper()
            if verb == b"EHLO":
                replies.append(_EHLO)
            elif verb == b"DATA":
                self.in_data = self.data_start = True
                replies.append(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            elif verb == b"QUIT":
                replies.append(b"221 2.0.0 Bye\r\n")
                self.transport.write(b"".join(replies))
                self.transport.close()
                return
            else:
                replies.append(_SIMPLE.get(verb, b"502 5.5.2 Command not recognized\r\n"))
        if replies and self.transport is not None:
            self.transport.write(b"".join(replies))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def _serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(SmtpBlackhole, host, port, backlog=4096)
    stop = stop_on_signals()
    print("listening", flush=True)
    async with server:
        await stop.wait()
    print(f"accepted={SmtpBlackhole.accepted}", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or not args[1].isdigit():
        raise SystemExit("usage: python -m streams.bench.blackhole HOST PORT")
    if not args[0].startswith("127."):
        raise SystemExit("the blackhole binds loopback addresses only")
    try:
        import uvloop

        uvloop.run(_serve(args[0], int(args[1])))
    except ImportError:
        asyncio.run(_serve(args[0], int(args[1])))


if __name__ == "__main__":
    main()

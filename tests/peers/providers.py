"""Loopback MX servers (aiosmtpd) that answer like the large mailbox providers do when they push
back: the first few recipients get the provider's deferral or block, later ones are accepted.
Each RCPT is recorded with its time and the reply, so a test can see when the server was asked
again after shaping stopped the sender."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from aiosmtpd.controller import Controller

__all__ = ["GMAIL_RATE", "MICROSOFT_BLOCK", "MICROSOFT_BUSY", "YAHOO_TSS04", "ProviderServer"]

# the providers' published wordings (addresses are documentation ones)
YAHOO_TSS04 = (
    "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume "
    "or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes"
)
MICROSOFT_BUSY = (
    "451 4.7.500 Server busy. Please try again later from [192.0.2.1]. (S77714) "
    "[AM0PR01MB1234.eurprd01.prod.exchangelabs.com]"
)
MICROSOFT_BLOCK = (
    "550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your "
    "Internet service provider since part of their network is on our block list (S3150). "
    "You can also refer your provider to http://mail.live.com/mail/troubleshooting.aspx#errors."
)
GMAIL_RATE = (
    "421-4.7.28 [192.0.2.1 15] Our system has detected an unusual rate of\r\n"
    "421-4.7.28 unsolicited mail originating from your IP address. To protect our\r\n"
    "421-4.7.28 users from spam, mail sent from your IP address has been temporarily\r\n"
    "421 4.7.28 rate limited."
)


@dataclass(frozen=True)
class Asked:
    at: float  # time.time() when the RCPT arrived
    address: str
    reply: str


class _Handler:
    def __init__(self, server: ProviderServer) -> None:
        self.server = server

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        owner = self.server
        with owner.lock:
            refuse = owner.refusals > 0
            if refuse:
                owner.refusals -= 1
            reply = owner.reply if refuse else "250 2.1.5 OK"
            owner.asked.append(Asked(time.time(), address.lower(), reply))
        if not refuse:
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        owner = self.server
        with owner.lock:
            for rcpt in envelope.rcpt_tos:
                owner.delivered.append((time.time(), rcpt.lower()))
        return "250 2.0.0 OK queued"


class ProviderServer:
    """An MX on ``host``:``port`` refusing its first ``refusals`` recipients with ``reply``."""

    def __init__(self, host: str, port: int, reply: str, refusals: int) -> None:
        self.host = host
        self.port = port
        self.reply = reply
        self.refusals = refusals
        self.lock = threading.Lock()
        self.asked: list[Asked] = []
        self.delivered: list[tuple[float, str]] = []
        self.controller = Controller(
            _Handler(self),
            hostname=host,
            port=port,
            server_hostname=f"mx.{host}",
            ready_timeout=10,
        )

    def refuse(self, reply: str, refusals: int) -> None:
        with self.lock:
            self.reply, self.refusals = reply, refusals

    def asked_snapshot(self) -> list[Asked]:
        with self.lock:
            return list(self.asked)

    def delivered_to(self, address: str) -> list[float]:
        with self.lock:
            return [at for at, rcpt in self.delivered if rcpt == address.lower()]

    def start(self) -> ProviderServer:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

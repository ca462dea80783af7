"""Optional SMTP probe: EHLO, MAIL FROM, RCPT TO on the domain's MX, never DATA.

Sessions are pooled per MX host, so several recipients of one domain share a connection
(RSET between them). What a RCPT reply means is ``streams.mail.replies.classify_rcpt``.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass

import aiosmtplib

from streams.mail.replies import RcptOutcome, classify_rcpt

__all__ = ["ProbeResult", "SmtpProber"]


@dataclass(frozen=True)
class ProbeResult:
    can_connect: bool
    outcome: RcptOutcome
    code: int = 0
    message: str = ""
    catch_all: bool | None = None
    error: str | None = None


@dataclass
class _Session:
    client: aiosmtplib.SMTP
    lock: asyncio.Lock
    used: int
    last_used: float


class SmtpProber:
    def __init__(
        self,
        *,
        port: int,
        helo_name: str,
        mail_from: str,
        timeout: float,
        max_per_connection: int = 50,
        idle_timeout: float = 30.0,
    ) -> None:
        self.port = port
        self.helo_name = helo_name
        self.mail_from = mail_from
        self.timeout = timeout
        self.max_per_connection = max_per_connection
        self.idle_timeout = idle_timeout
        self._sessions: dict[str, _Session] = {}
        self._opening: dict[str, asyncio.Lock] = {}
        self.connections_opened = 0

    async def _session(self, host: str) -> _Session:
        lock = self._opening.setdefault(host, asyncio.Lock())
        async with lock:
            session = self._sessions.get(host)
            now = time.monotonic()
            stale = session is not None and (
                session.used >= self.max_per_connection
                or now - session.last_used > self.idle_timeout
                or not session.client.is_connected
            )
            if session is not None and stale:
                await self._close(host)
                session = None
            if session is None:
                client = aiosmtplib.SMTP(
                    hostname=host,
                    port=self.port,
                    timeout=self.timeout,
                    local_hostname=self.helo_name,
                    start_tls=False,
                    use_tls=False,
                )
                await client.connect()
                self.connections_opened += 1
                await client.ehlo()
                session = _Session(client, asyncio.Lock(), 0, now)
                self._sessions[host] = session
            return session

    async def _close(self, host: str) -> None:
        session = self._sessions.pop(host, None)
        if session is not None:
            try:
                await session.client.quit()
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                session.client.close()

    async def close(self) -> None:
        for host in list(self._sessions):
            await self._close(host)

    async def _rcpt(self, client: aiosmtplib.SMTP, address: str) -> tuple[int, str]:
        reply = await client.execute_command(b"RCPT", f"TO:<{address}>".encode())
        return reply.code, reply.message

    async def probe(
        self, hosts: list[str], address: str, domain: str, *, catch_all: bool | None
    ) -> ProbeResult:
        """Probe ``address`` on the first MX address that answers (``hosts``: IP addresses in MX
        preference order); with ``catch_all`` None, also ask for a random local part at
        ``domain`` to detect a catch-all server."""
        last_error = "no MX host to probe"
        for host in hosts[:3]:
            try:
                session = await self._session(host)
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                last_error = f"{host}: {type(exc).__name__}: {exc}"
                continue
            try:
                async with session.lock:
                    return await self._transaction(session, address, domain, catch_all)
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                await self._close(host)
                last_error = f"{host}: {type(exc).__name__}: {exc}"
        return ProbeResult(can_connect=False, outcome=RcptOutcome.UNKNOWN, error=last_error)

    async def _transaction(
        self, session: _Session, address: str, domain: str, catch_all: bool | None
    ) -> ProbeResult:
        client = session.client
        session.used += 1
        session.last_used = time.monotonic()
        mail = await client.execute_command(b"MAIL", f"FROM:<{self.mail_from}>".encode())
        if mail.code != 250:
            await client.execute_command(b"RSET")
            outcome = classify_rcpt(mail.code, mail.message)
            if outcome is not RcptOutcome.TEMPORARY:
                outcome = RcptOutcome.BLOCKED
            return ProbeResult(True, outcome, mail.code, mail.message, None)
        code, message = await self._rcpt(client, address)
        outcome = classify_rcpt(code, message)
        if catch_all is None and outcome is RcptOutcome.DELIVERABLE:
            probe_code, _ = await self._rcpt(client, f"pw-{secrets.token_hex(6)}@{domain}")
            catch_all = probe_code in (250, 251)
        await client.execute_command(b"RSET")
        return ProbeResult(True, outcome, code, message, catch_all)

"""Optional SMTP probe: EHLO, MAIL FROM, RCPT TO on the domain's MX, never DATA.

Sessions come from the shared SMTP pool, one per MX host, so several recipients of one domain
share a connection (RSET between them). What a RCPT reply means is
``streams.mail.replies.classify_rcpt``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import aiosmtplib

from streams.mail.pool import Connection, LocalSlots, Pool
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


class SmtpProber:
    """Sessions come from the shared SMTP pool (``streams.mail.pool``) with one session per MX
    host: concurrent probes of one host wait their turn on it, and a session is reused for up to
    ``max_per_connection`` probes and closed after ``idle_timeout``."""

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
        self._pool = Pool(
            LocalSlots(lambda _host: 1),
            max_messages=max_per_connection,
            idle_timeout=idle_timeout,
            # a probe waits for the host's session as long as a few probes before it may take
            wait=max(60.0, 6 * timeout),
            quit_timeout=min(timeout, 5.0),
        )
        self.connections_opened = 0

    async def _session(self, host: str) -> Connection:
        conn = await self._pool.acquire(host, host, host)
        if conn is None:
            raise TimeoutError(f"no SMTP session to {host} came free")
        if conn.client is not None:
            return conn
        client = aiosmtplib.SMTP(
            hostname=host,
            port=self.port,
            timeout=self.timeout,
            local_hostname=self.helo_name,
            start_tls=False,
            use_tls=False,
        )
        try:
            await client.connect()
            self.connections_opened += 1
            await client.ehlo()
        except BaseException:
            client.close()
            self._pool.release(conn, reusable=False)
            raise
        conn.client, conn.address = client, host
        return conn

    async def close(self) -> None:
        await self._pool.close()

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
                conn = await self._session(host)
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                last_error = f"{host}: {type(exc).__name__}: {exc}"
                continue
            reusable = False
            try:
                result = await self._transaction(conn, address, domain, catch_all)
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                last_error = f"{host}: {type(exc).__name__}: {exc}"
            else:
                reusable = True
                return result
            finally:
                self._pool.release(conn, reusable=reusable)
        return ProbeResult(can_connect=False, outcome=RcptOutcome.UNKNOWN, error=last_error)

    async def _transaction(
        self, conn: Connection, address: str, domain: str, catch_all: bool | None
    ) -> ProbeResult:
        client = conn.client
        assert client is not None
        conn.sent += 1
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

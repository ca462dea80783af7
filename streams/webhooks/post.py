"""One webhook post over HTTP (aiohttp): the signed JSON array to the endpoint's URL, and what
came of it. Only a 2xx answer accepts a batch; a redirect is not followed (SendGrid does not
either), so it counts as a failure like any other non-2xx.

A tenant chooses the URL, so unless ``allow_private`` the poster connects to public addresses
only: loopback, private, link-local (cloud metadata) and other non-global addresses are refused,
whether the URL names them or its host name resolves to them. The check is made on the addresses
the connection is opened to (in the resolver), so a name that resolves differently later (DNS
rebinding) is caught too."""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from streams.webhooks.signing import EndpointKey

__all__ = ["Outcome", "PostResult", "Poster"]

Outcome = Literal["accepted", "rejected", "timeout", "refused"]
USER_AGENT = "postwire-webhook/1"


@dataclass(frozen=True, slots=True)
class PostResult:
    outcome: Outcome
    seconds: float
    status: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "accepted"

    @property
    def reason(self) -> str:
        """What a retry and a dead letter record about the failure."""
        if self.status is not None:
            return f"HTTP {self.status}" + (f": {self.error}" if self.error else "")
        return f"{self.outcome}: {self.error}" if self.error else self.outcome


def _global(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global


class PublicResolver(AbstractResolver):
    """The default resolver, less every address that is not global; none left is an error."""

    def __init__(self) -> None:
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        public = [r for r in found if _global(r["host"])]
        if not public:
            raise OSError(f"{host} resolves to no public address (private ones are refused)")
        return public

    async def close(self) -> None:
        await self._inner.close()


class Poster:
    """Posts batches; made and closed on the event loop that uses it."""

    def __init__(self, timeout: float, *, per_host: int = 8, allow_private: bool = False) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.per_host = per_host
        self.allow_private = allow_private
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            options: dict[str, Any] = {} if self.allow_private else {"resolver": PublicResolver()}
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=self.per_host, **options)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self.timeout, headers={"User-Agent": USER_AGENT}
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(
        self, url: str, payload: bytes, key: EndpointKey | None, timestamp: int
    ) -> PostResult:
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers.update(key.headers(payload, timestamp))
        started = time.perf_counter()
        refused = None if self.allow_private else _private_literal(url)
        if refused is not None:
            return PostResult("refused", 0.0, error=refused)
        try:
            async with self._client().post(
                url, data=payload, headers=headers, allow_redirects=False
            ) as answer:
                # read (and drop) the body: the connection goes back to the pool clean
                await answer.read()
                seconds = time.perf_counter() - started
                if 200 <= answer.status < 300:
                    return PostResult("accepted", seconds, answer.status)
                return PostResult("rejected", seconds, answer.status, answer.reason or None)
        except TimeoutError:
            return PostResult("timeout", time.perf_counter() - started, error="no answer in time")
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            # refused, reset, DNS, TLS, or a URL aiohttp cannot use
            cause = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
            detail = f"{type(exc).__name__}: {exc}{cause}"[:300]
            return PostResult("refused", time.perf_counter() - started, error=detail)


def _private_literal(url: str) -> str | None:
    """Why a URL naming an address (not a host name) may not be posted to, if it may not: the
    connector does not ask the resolver about those."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None  # aiohttp says what is wrong with it
    if host is None:
        return None
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None  # a name: the resolver checks what it resolves to
    return None if _global(host) else f"{host} is not a public address (private ones are refused)"

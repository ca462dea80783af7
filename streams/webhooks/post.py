"""One webhook post over HTTP (aiohttp): the signed JSON array to the endpoint's URL, and what
came of it. Only a 2xx answer accepts a batch; a redirect is not followed (SendGrid does not
either), so it counts as a failure like any other non-2xx."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import aiohttp

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


class Poster:
    """Posts batches; made and closed on the event loop that uses it."""

    def __init__(self, timeout: float, *, per_host: int = 8) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.per_host = per_host
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=self.per_host)
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
            detail = f"{type(exc).__name__}: {exc}"[:300]
            return PostResult("refused", time.perf_counter() - started, error=detail)

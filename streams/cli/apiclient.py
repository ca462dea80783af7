"""A small client of postwire's HTTP API for the CLI: the key, the base URL, patient with 429s,
and one-sentence errors."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, Self

import aiohttp

from streams.errors import ApiClientError
from streams.settings import Settings

__all__ = ["ApiClient"]


def _sentence(status: int, body: Any) -> str:
    """The API's own words for a refusal (SendGrid's errors[] shape)."""
    errors = body.get("errors") if isinstance(body, dict) else None
    if errors:
        parts = [
            f"{e['field']}: {e['message']}" if e.get("field") else e["message"] for e in errors
        ]
        return f"the API refused the request ({status}): " + "; ".join(parts)
    return f"the API answered {status}"


class ApiClient:
    def __init__(self, settings: Settings, key: str | None, url: str | None = None) -> None:
        key = key or (settings.api_key.get_secret_value() if settings.api_key else None)
        if not key:
            raise ApiClientError(
                "no API key: pass --key or set POSTWIRE_API_KEY "
                "(make one with `postwire keys create --tenant T`)"
            )
        self.key = key
        self.base = (url or settings.api_base).rstrip("/")
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self.session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=aiohttp.ClientTimeout(total=120),
        )
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.session is not None:
            await self.session.close()

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        ok: tuple[int, ...] = (200,),
        **headers: str,
    ) -> tuple[int, dict[str, str], Any]:
        """(status, headers, JSON body) of an answer with a status in ``ok``; 429s are waited
        out; anything else is an ApiClientError."""
        if self.session is None:
            raise ApiClientError("the API client is not open")
        while True:
            try:
                async with self.session.request(
                    method, f"{self.base}{path}", json=body, headers=headers
                ) as r:
                    payload = await r.json() if r.content_type == "application/json" else None
                    status, answer_headers = r.status, dict(r.headers)
            except aiohttp.ClientConnectionError as exc:
                raise ApiClientError(
                    f"cannot reach the API at {self.base} ({exc}); is `postwire up` running?"
                ) from exc
            if status == 429:
                await asyncio.sleep(float(answer_headers.get("Retry-After", "1")))
                continue
            if status not in ok:
                raise ApiClientError(_sentence(status, payload), status)
            return status, answer_headers, payload

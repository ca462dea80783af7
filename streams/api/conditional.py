"""Conditional and compressed reads: strong ETags with ``If-None-Match`` -> 304, gzip for large
JSON answers, and a ``Cache-Control`` that keeps tenant data out of shared caches.

The tag is a digest of the answer's JSON, so it changes exactly when the answer does and costs no
extra query: a client polling a verify job or a message's status gets a bodiless 304 until
something changed. A gzip answer is another representation of the same content (RFC 9110
8.8.3), so it carries its own tag (the digest with a ``.gz`` suffix); ``If-None-Match`` matches
either, since both describe the same content."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.web_response import ContentCoding

__all__ = [
    "CACHE_CONTROL",
    "GZIP_MIN_BYTES",
    "accepts_gzip",
    "conditional_middleware",
    "etag_of",
    "none_match",
    "not_modified",
    "version_tag",
]

# every read answers with one tenant's data: a browser may keep it but must ask again, a shared
# cache (a proxy, a CDN) must not keep it at all
CACHE_CONTROL = "private, no-cache"
GZIP_MIN_BYTES = 1024  # below this, gzip's header and a round of deflate cost more than they save
_GZ = ".gz"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def etag_of(body: bytes) -> str:
    """A strong entity tag for ``body`` (quoted, as the header carries it)."""
    digest = hashlib.blake2b(body, digest_size=16).digest()
    return '"' + base64.urlsafe_b64encode(digest).rstrip(b"=").decode() + '"'


def _opaque(tag: str) -> str:
    tag = tag.strip()
    if tag.startswith("W/"):  # If-None-Match compares weakly (RFC 9110 13.1.2)
        tag = tag[2:]
    if tag.endswith(_GZ + '"'):
        tag = tag[: -len(_GZ) - 1] + '"'
    return tag


def none_match(header: str | None, etag: str) -> bool:
    """True when ``If-None-Match: header`` names ``etag`` (or is ``*``): the client's copy is
    current and the answer is a 304."""
    if not header:
        return False
    if header.strip() == "*":
        return True
    wanted = _opaque(etag)
    return any(_opaque(tag) == wanted for tag in header.split(","))


def version_tag(*parts: object) -> str:
    """A strong tag from what identifies an answer's version (its ids, counts and latest change),
    for a handler that can tell a client's copy is current without building the answer."""
    return etag_of(repr(parts).encode())


def _variant(etag: str, request: web.Request, size: int | None) -> str:
    """The tag of the representation ``request`` gets: the gzip one carries the suffix."""
    gzip = (size is None or size >= GZIP_MIN_BYTES) and accepts_gzip(
        request.headers.get("Accept-Encoding")
    )
    return etag[:-1] + _GZ + '"' if gzip else etag


def not_modified(request: web.Request, etag: str) -> web.Response | None:
    """The 304 for a request whose ``If-None-Match`` names ``etag``, or None: the handler then
    builds the answer and returns it with ``ETag: etag`` (the middleware keeps that tag)."""
    if not none_match(request.headers.get("If-None-Match"), etag):
        return None
    tag = _variant(etag, request, None)
    return web.Response(status=304, headers=_headers(tag))


def _headers(etag: str) -> dict[str, str]:
    return {"ETag": etag, "Cache-Control": CACHE_CONTROL, "Vary": "Accept-Encoding"}


def accepts_gzip(header: str | None) -> bool:
    """Whether ``Accept-Encoding: header`` allows gzip (``q=0`` refuses it, RFC 9110 12.5.3)."""
    if not header:
        return False
    star = False
    for item in header.split(","):
        coding, _, params = item.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        name = coding.strip().lower()
        if name in ("gzip", "x-gzip"):
            return q > 0
        if name == "*":
            star = q > 0
    return star


@web.middleware
async def conditional_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    if (
        request.method not in ("GET", "HEAD")
        or response.status != 200
        or not isinstance(response, web.Response)
        or not isinstance(response.body, bytes)
        or response.content_type != "application/json"
    ):
        return response
    body = response.body
    gzip = len(body) >= GZIP_MIN_BYTES and accepts_gzip(request.headers.get("Accept-Encoding"))
    # a handler that tags its answers by version (``not_modified``) has set the tag already
    etag = _variant(response.headers.get("ETag") or etag_of(body), request, len(body))
    headers = _headers(etag)
    if none_match(request.headers.get("If-None-Match"), etag):
        return web.Response(status=304, headers=headers)
    response.headers.update(headers)
    if gzip:
        # aiohttp deflates on a thread past its executor threshold, so a 10,000-row page does
        # not hold the event loop
        response.enable_compression(ContentCoding.gzip)
    return response

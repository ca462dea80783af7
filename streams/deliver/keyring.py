"""The signing keys of the tenants, parsed once.

The directory opens each tenant's DKIM keys at every refresh and hands them out as PEM; parsing
an RSA key costs about a millisecond, so the parsed key is kept and reused for as long as the
tenant's key of that domain stays the same. Lookups are by (tenant, domain): a tenant that has
no key of a domain gets none, whoever else has one.
"""

from __future__ import annotations

from collections.abc import Callable

from streams.deliver.dkim import DkimKey

__all__ = ["KeyRing", "PemSource"]

# (tenant, domain) -> the tenant's current key of the domain as (selector, PEM), or None
PemSource = Callable[[str, str], tuple[str, bytes] | None]
MAX_PARSED = 10_000


class KeyRing:
    """A ``KeySource`` for the Signer over a ``PemSource``. Raises DkimKeyError for a key that
    does not parse, so the message fails with the reason instead of leaving unsigned."""

    def __init__(self, source: PemSource) -> None:
        self._source = source
        self._parsed: dict[tuple[str, str], tuple[str, bytes, DkimKey]] = {}

    def __call__(self, tenant: str, domain: str) -> DkimKey | None:
        found = self._source(tenant, domain)
        if found is None:
            return None
        selector, pem = found
        cached = self._parsed.get((tenant, domain))
        if cached is not None and cached[0] == selector and (cached[1] is pem or cached[1] == pem):
            return cached[2]
        key = DkimKey.from_pem(
            domain, selector, pem, source=f"DKIM key {selector} of tenant {tenant} for {domain}"
        )
        if len(self._parsed) >= MAX_PARSED:
            self._parsed.clear()
        self._parsed[(tenant, domain)] = (selector, pem, key)
        return key

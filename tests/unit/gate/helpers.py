"""A directory of keys and signed arrivals for the gate's pure tests."""

from __future__ import annotations

from streams.contract.ids import MessageIds
from streams.contract.signing import ingress_headers, sign
from streams.db.tenants import ApiKey, Directory, Tenant, api_key_digest
from streams.gate.admission import Limits
from streams.gate.core import Arrival
from streams.gate.trust import Trust
from streams.kafka.records import SourcePosition
from streams.secret import ServerSecret

SECRET = ServerSecret(b"s" * 32)
TRUST = Trust(SECRET.subkey("ingress"), MessageIds(SECRET))
SRC = SourcePosition("postwire.requests", 0, 7)
RAW = b"raw request bytes"


def _key(
    key_id: str,
    secret: str,
    scopes: set[str],
    *,
    tenant: str = "acme",
    revoked: bool = False,
    sealed: bool = True,
    opens: bool = True,
) -> ApiKey:
    digest = api_key_digest(secret)
    opened = secret.encode() if sealed and opens else None
    return ApiKey(key_id, tenant, digest, frozenset(scopes), revoked, sealed, opened)


# key id -> (its key, what it is)
KEYS = {
    "k1": _key("k1", "good", {"send", "verify"}),
    "k2": _key("k2", "sendonly", {"send"}),
    "k3": _key("k3", "old", {"verify"}, revoked=True),
    "k4": _key("k4", "unsealed", {"send", "verify"}, sealed=False),
    "k5": _key("k5", "broken", {"send", "verify"}, opens=False),
}


def directory(policy: str = "defer", probe: bool = False) -> Directory:
    d = Directory()
    d.tenants["acme"] = Tenant("acme", Limits(2, 100, 1000), policy, probe)
    d.tenants["other"] = Tenant("other", Limits(2, 100, 1000), policy, probe)
    for key in KEYS.values():
        d.add_key(key)
    return d


def key_signed(key_id: str = "k1", secret: str = "good", raw: bytes = RAW) -> Arrival:
    """An arrival as a direct producer signs it, with the key ``secret`` under ``key_id``."""
    return Arrival(
        SRC, raw, b"acme", headers=sign(raw, tenant="acme", key_id=key_id, api_key=secret)
    )


def ingress_signed(
    key_id: str = "k1", raw: bytes = RAW, signing_key: bytes | None = None
) -> Arrival:
    """An arrival as the HTTP ingress signs it for a caller of ``key_id``."""
    signing = signing_key if signing_key is not None else SECRET.subkey("ingress")
    headers = ingress_headers(raw, tenant="acme", key_id=key_id, ingress_key=signing)
    return Arrival(SRC, raw, b"acme", headers=headers)

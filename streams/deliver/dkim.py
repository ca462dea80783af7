"""DKIM signing (RFC 6376, rsa-sha256 and RFC 8463 ed25519-sha256) with OpenSSL.

The signature itself goes through ``cryptography`` (OpenSSL): dkimpy's pure-Python RSA signs
about 105 messages/s, OpenSSL about 2,200. Canonicalisation is relaxed/relaxed, so folding and
whitespace changes made by relays on the way do not break the signature.

Signed: the headers :data:`~streams.mail.headers.SIGNED_HEADERS` lists (From, Subject, To, the
MIME headers, List-Unsubscribe and List-Unsubscribe-Post, ...), each over-signed: named once more
than the message holds it, so a header of those names added on the way, above or below ours, makes
the signature fail (RFC 6376 section 8.15; a receiver shows the topmost From).

A key belongs to a (tenant, domain): the signer asks its key source for the sending tenant's key
of the From domain and signs with nothing else (``streams/deliver/keyring.py`` serves the keys the
directory opened). All recipients of a request get the same body, so the body hash is kept in a
small LRU keyed by the body bytes (bounded in entries and in bytes): per recipient only the header
block is canonicalised and signed.

``sign_async`` does the one per-recipient private-key operation on a small thread pool (one
thread per core, at most two): OpenSSL releases the GIL while it signs, so RSA runs on the other
core while the event loop goes on with SMTP. Parsing, hashing and assembling stay on the caller's
thread, so the cache is only ever touched from there.
"""

from __future__ import annotations

import asyncio
import os
import re
from base64 import b64encode
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from hashlib import sha256
from typing import Final, Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from streams.errors import DkimError, DkimKeyError, DkimMessageError
from streams.mail.headers import SIGNED_HEADERS

__all__ = [
    "BODY_CACHE_BYTES",
    "BODY_CACHE_SIZE",
    "SIGNED_HEADERS",
    "SIGNING_THREADS",
    "Algorithm",
    "DkimKey",
    "KeySource",
    "PrivateKey",
    "Signer",
    "canonical_body",
    "check_selector",
    "keygen",
    "parse_key_file_name",
]

Algorithm = Literal["rsa-sha256", "ed25519-sha256"]
PrivateKey = rsa.RSAPrivateKey | Ed25519PrivateKey

BODY_CACHE_SIZE: Final = 32
BODY_CACHE_BYTES: Final = 8 * 1024 * 1024  # bodies kept as cache keys, in all
SIGNING_THREADS: Final = min(2, os.cpu_count() or 1)
MIN_RSA_BITS: Final = 1024  # RFC 8301: verifiers must accept 1024, signers should use 2048
_SUFFIX: Final = ".pem"
_SEPARATOR: Final = "._domainkey."
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?")
_WSP_RUN = re.compile(rb"[ \t]+")
_MAX_LINE: Final = 78


@dataclass(frozen=True, slots=True)
class DkimKey:
    """One signing key: ``d=domain``, ``s=selector``, and the algorithm the key type implies."""

    domain: str
    selector: str
    private_key: PrivateKey
    algorithm: Algorithm

    @classmethod
    def from_pem(cls, domain: str, selector: str, pem: bytes, *, source: str = "key") -> DkimKey:
        """Load a PKCS8 (or traditional) PEM key; ``source`` names it in errors."""
        for label, value in (("domain", domain), ("selector", selector)):
            if not value.isascii() or not _NAME.fullmatch(value):
                raise DkimKeyError(f"{source}: {label} {value!r} is not an ASCII DNS name")
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise DkimKeyError(f"{source}: not an unencrypted PEM private key ({exc})") from exc
        if isinstance(key, rsa.RSAPrivateKey):
            if key.key_size < MIN_RSA_BITS:
                raise DkimKeyError(f"{source}: RSA key of {key.key_size} bits, need >= 1024")
            return cls(domain.lower(), selector, key, "rsa-sha256")
        if isinstance(key, Ed25519PrivateKey):
            return cls(domain.lower(), selector, key, "ed25519-sha256")
        raise DkimKeyError(f"{source}: {type(key).__name__} cannot sign DKIM (RSA or Ed25519 only)")

    @property
    def record_name(self) -> str:
        """The DNS name of the public key's TXT record."""
        return f"{self.selector}{_SEPARATOR}{self.domain}"

    def dns_record(self) -> str:
        """The TXT record value publishing this key's public half."""
        return _dns_record(self.private_key)


def _dns_record(key: PrivateKey) -> str:
    # RSA publishes the DER SubjectPublicKeyInfo, Ed25519 the bare 32-byte key (RFC 8463).
    if isinstance(key, rsa.RSAPrivateKey):
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        kind = "rsa"
    else:
        public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        kind = "ed25519"
    return f"v=DKIM1; k={kind}; p={b64encode(public).decode('ascii')}"


KeyType = Literal["rsa", "ed25519"]
KEY_TYPES: Final[tuple[KeyType, ...]] = ("rsa", "ed25519")


def key_type(name: str) -> KeyType:
    """``name`` as a key type, or a DkimKeyError that lists the ones there are."""
    for known in KEY_TYPES:
        if name == known:
            return known
    raise DkimKeyError(f"unknown DKIM key type {name!r}: use rsa or ed25519")


def keygen(algorithm: KeyType, bits: int = 2048) -> tuple[bytes, str]:
    """A new key: its PKCS8 PEM, and the TXT record value to publish at the selector."""
    key: PrivateKey
    if algorithm == "rsa":
        if bits < MIN_RSA_BITS:
            raise DkimKeyError(f"RSA keys need >= {MIN_RSA_BITS} bits, not {bits}")
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    elif algorithm == "ed25519":
        key = Ed25519PrivateKey.generate()
    else:
        raise DkimKeyError(f"unknown algorithm {algorithm!r} (rsa or ed25519)")
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem, _dns_record(key)


def check_selector(selector: str) -> str:
    """``selector`` when it can name a key record (``<selector>._domainkey.<domain>``)."""
    if not selector.isascii() or not _NAME.fullmatch(selector) or len(selector) > 63:
        raise DkimKeyError(f"selector {selector!r} is not an ASCII DNS name of at most 63 bytes")
    return selector


def parse_key_file_name(name: str) -> tuple[str, str]:
    """``pw1._domainkey.acme.example.pem`` -> ``("pw1", "acme.example")``: the selector and
    domain a key file of the old key directory was named for (``postwire dkim import``)."""
    stem = name.removesuffix(_SUFFIX)
    selector, separator, domain = stem.partition(_SEPARATOR)
    if stem == name or not separator or not selector or not domain:
        raise DkimKeyError(f"{name}: not named <selector>{_SEPARATOR}<domain>{_SUFFIX}")
    return selector, domain.lower()


def canonical_body(body: bytes) -> bytes:
    """The relaxed body canonicalisation (RFC 6376 section 3.4.4) of a CRLF-only body."""
    # Trailing spaces and empty lines go, which also strips the trailing CRLF; one is put back.
    body = _WSP_RUN.sub(b" ", body).replace(b" \r\n", b"\r\n").rstrip(b" \r\n")
    return body + b"\r\n" if body else b""


def _relaxed_header(field: bytes) -> bytes:
    name, _, value = field.partition(b":")
    value = _WSP_RUN.sub(b" ", value.replace(b"\r\n", b"")).strip(b" ")
    return name.rstrip(b" \t").lower() + b":" + value


def _split(message: bytes) -> tuple[list[bytes], bytes]:
    """The header fields (folded lines joined, without their final CRLF) and the body."""
    if message.count(b"\n") != message.count(b"\r\n") or message.count(b"\r") != message.count(
        b"\r\n"
    ):
        raise DkimMessageError("the message has CR or LF outside CRLF pairs")
    head, separator, body = message.partition(b"\r\n\r\n")
    if not separator or not head:
        raise DkimMessageError("the message has no header block followed by an empty line")
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        elif b":" in line and line[:1] not in (b" ", b"\t", b":"):
            fields.append(line)
        else:
            raise DkimMessageError(f"not a header field: {line[:40]!r}")
    return fields, body


def _header_list(names: list[str]) -> list[str]:
    """The ``h=`` tag in pieces that each fit a line: over-signed, it no longer does whole.
    Folding white space may follow each colon (RFC 6376 section 3.5)."""
    pieces = [f"h={names[0]}"]
    for name in names[1:]:
        if len(pieces[-1]) + len(name) + 2 > _MAX_LINE - 2:
            pieces[-1] += ":"
            pieces.append(name)
        else:
            pieces[-1] += f":{name}"
    pieces[-1] += ";"
    return pieces


def _fold(tags: list[str]) -> str:
    # Relaxed canonicalisation turns each fold back into one space, so any layout signs alike.
    lines = ["DKIM-Signature:"]
    for tag in tags:
        if len(lines[-1]) + 1 + len(tag) > _MAX_LINE:
            lines.append("")
        lines[-1] += f" {tag}"
    return "\r\n".join(lines)


# (tenant, lower-cased domain) -> that tenant's key of the domain, or None
KeySource = Callable[[str, str], DkimKey | None]


@dataclass(frozen=True, slots=True)
class _Unsigned:
    """A message whose signature is all that is missing: ``data`` is what the key signs."""

    key: DkimKey
    header: str  # the DKIM-Signature field up to "b=", folded
    data: bytes
    message: bytes

    def finish(self, signature: str) -> bytes:
        header = self.header
        first = max(_MAX_LINE - len(header) + header.rfind("\n") + 1, 0)
        chunks = [signature[:first]] + [
            signature[i : i + _MAX_LINE - 1] for i in range(first, len(signature), _MAX_LINE - 1)
        ]
        value = "\r\n ".join(chunk for chunk in chunks if chunk)
        if not signature[:first]:
            value = "\r\n " + value
        return f"{header}{value}\r\n".encode("ascii") + self.message


class Signer:
    """Signs messages with the sending tenant's key of the From domain; per-body LRU."""

    def __init__(
        self,
        keys: KeySource,
        *,
        body_cache: int = BODY_CACHE_SIZE,
        body_cache_bytes: int = BODY_CACHE_BYTES,
        threads: int = SIGNING_THREADS,
    ) -> None:
        self.keys = keys
        self._cache_size = body_cache
        self._cache_bytes = body_cache_bytes
        self._cached_bytes = 0
        self._body_hashes: OrderedDict[bytes, str] = OrderedDict()
        self._threads = threads
        self._executor: ThreadPoolExecutor | None = None
        self.body_hashes_computed = 0  # canonicalised and hashed, not found in the cache

    def body_hash(self, body: bytes) -> str:
        """The base64 SHA-256 of the canonical body, remembered for the last few bodies."""
        found = self._body_hashes.get(body)
        if found is not None:
            self._body_hashes.move_to_end(body)
            return found
        digest = b64encode(sha256(canonical_body(body)).digest()).decode("ascii")
        self.body_hashes_computed += 1
        if self._cache_size > 0 and len(body) <= self._cache_bytes:
            self._body_hashes[body] = digest
            self._cached_bytes += len(body)
            while (
                len(self._body_hashes) > self._cache_size or self._cached_bytes > self._cache_bytes
            ):
                old, _ = self._body_hashes.popitem(last=False)
                self._cached_bytes -= len(old)
        return digest

    def sign(self, message: bytes, tenant: str, domain: str, now: datetime) -> bytes:
        """``message`` with a DKIM-Signature prepended, or unchanged if ``tenant`` has no key of
        ``domain`` (another tenant's key of it never signs).

        Raises DkimMessageError when the message is not CRLF-only headers, blank line, body.
        """
        unsigned = self._unsigned(message, tenant, domain, now)
        if unsigned is None:
            return message
        return unsigned.finish(_signature(unsigned.key.private_key, unsigned.data))

    async def sign_async(self, message: bytes, tenant: str, domain: str, now: datetime) -> bytes:
        """``sign``, with the private-key operation on the signer's threads."""
        unsigned = self._unsigned(message, tenant, domain, now)
        if unsigned is None:
            return message
        if self._threads < 1:
            signature = _signature(unsigned.key.private_key, unsigned.data)
        else:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self._threads, thread_name_prefix="dkim")
            loop = asyncio.get_running_loop()
            signature = await loop.run_in_executor(
                self._executor, _signature, unsigned.key.private_key, unsigned.data
            )
        return unsigned.finish(signature)

    def close(self) -> None:
        """Stop the signing threads (a later ``sign_async`` starts new ones)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)  # a signature in flight still finishes

    def _unsigned(
        self, message: bytes, tenant: str, domain: str, now: datetime
    ) -> _Unsigned | None:
        key = self.keys(tenant, domain.lower())
        if key is None:
            return None
        if now.tzinfo is None:
            raise DkimError("the signature time must be timezone-aware")
        fields, body = _split(message)
        by_name: dict[bytes, list[bytes]] = {}
        for field in fields:
            by_name.setdefault(field.partition(b":")[0].rstrip(b" \t").lower(), []).append(field)
        if b"from" not in by_name:
            raise DkimMessageError("the message has no From header")
        names: list[str] = []
        signed: list[bytes] = []
        for name in SIGNED_HEADERS:
            # Several instances are signed bottom-up, as verifiers pick them (section 5.4.2).
            for field in reversed(by_name.get(name.encode("ascii"), ())):
                names.append(name)
                signed.append(_relaxed_header(field) + b"\r\n")
            # ...and the name once more, for an instance that does not exist: it signs as
            # nothing, and any instance added later takes its place and breaks the signature
            names.append(name)
        tags = [
            "v=1;",
            f"a={key.algorithm};",
            "c=relaxed/relaxed;",
            f"d={key.domain};",
            f"s={key.selector};",
            f"t={int(now.timestamp())};",
            *_header_list(names),
            f"bh={self.body_hash(body)};",
            "b=",
        ]
        header = _fold(tags)
        data = b"".join(signed) + _relaxed_header(header.encode("ascii"))
        return _Unsigned(key, header, data, message)


def _signature(key: PrivateKey, data: bytes) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        raw = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    else:
        # RFC 8463: PureEdDSA over the SHA-256 of the data, not over the data itself.
        raw = key.sign(sha256(data).digest())
    return b64encode(raw).decode("ascii")

"""The server secret: one random key per install from which every purpose gets its own subkey.

Message ids, the sealing of API keys and DKIM private keys at rest, and anything else that must
be unguessable to tenants derive their key from it with HKDF-SHA256 and a purpose label, so one
leaked subkey never reveals another. Sealed values are AES-256-GCM with the caller's context
(tenant, key id) as associated data: a sealed value copied to another row does not open.

The key comes from ``POSTWIRE_SECRET_KEY`` or, unset, from a file made once (mode 0600) under the
data dir, which every process of one install shares. A cluster of machines sets the variable.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from streams.errors import ConfigError, SecretError

__all__ = ["SECRET_FILE", "ServerSecret", "load_server_secret", "stored_key", "write_private"]

SECRET_FILE: Final = "secret.key"  # noqa: S105 - a file name, not a secret
MIN_KEY_BYTES: Final = 32
_NONCE: Final = 12
_SEP: Final = b"\x1f"


def write_private(path: Path, data: bytes) -> None:
    """``data`` in ``path``, readable by its owner only from the first byte on (also when the
    file existed: it is replaced whole, so a reader never sees half of it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(candidate, path)
    finally:
        candidate.unlink(missing_ok=True)


def stored_key(path: Path, *, nbytes: int = 32) -> bytes:
    """The key in ``path`` (hex text), made (random, mode 0600) if there is none yet.

    Every process of a stack starts at once and each may find no key: each writes its own
    candidate to a private file and links it into place, which only one link can win, so all
    of them end up reading the same complete key."""
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        candidate = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(nbytes))
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(candidate, path)
        except FileExistsError:
            pass  # another process won; its key is the one
        finally:
            candidate.unlink(missing_ok=True)
        return _read_key(path)
    except OSError as exc:
        raise ConfigError(f"cannot create the key file {path}: {exc}") from exc


def _read_key(path: Path) -> bytes:
    key = path.read_text().strip().encode()
    if not key:
        raise ConfigError(f"the key file {path} is empty; delete it to make a new one")
    return key


class ServerSecret:
    """Subkeys, MACs and sealing under one install-wide secret."""

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ConfigError(f"the server secret must have at least {MIN_KEY_BYTES} bytes")
        self._key = key
        self._subkeys: dict[str, bytes] = {}

    def __repr__(self) -> str:
        return "ServerSecret(<hidden>)"

    def subkey(self, purpose: str) -> bytes:
        """The 32-byte key of one purpose (``"message-id"``, ``"api-key"``, ...)."""
        found = self._subkeys.get(purpose)
        if found is None:
            hkdf = HKDF(hashes.SHA256(), 32, salt=None, info=b"postwire/" + purpose.encode())
            found = self._subkeys[purpose] = hkdf.derive(self._key)
        return found

    def mac(self, purpose: str, *parts: str | bytes) -> bytes:
        """HMAC-SHA256 over ``parts`` joined by a unit separator, under the purpose's subkey."""
        data = _SEP.join(p.encode() if isinstance(p, str) else p for p in parts)
        return hmac.digest(self.subkey(purpose), data, "sha256")  # one C call, same bytes

    def seal(self, purpose: str, plaintext: bytes, *, context: str = "") -> bytes:
        """``plaintext`` encrypted and authenticated; ``context`` must match to open it."""
        nonce = secrets.token_bytes(_NONCE)
        sealed = AESGCM(self.subkey(purpose)).encrypt(nonce, plaintext, context.encode())
        return nonce + sealed

    def open(self, purpose: str, sealed: bytes, *, context: str = "") -> bytes:
        """What ``seal`` sealed; SecretError when it was sealed under another key, purpose or
        context, or changed since."""
        nonce, body = sealed[:_NONCE], sealed[_NONCE:]
        try:
            return AESGCM(self.subkey(purpose)).decrypt(nonce, body, context.encode())
        except (InvalidTag, ValueError) as exc:
            raise SecretError(
                f"a sealed {purpose} value does not open: sealed under another server secret"
                " (POSTWIRE_SECRET_KEY) or altered"
            ) from exc


def _decode(value: str) -> bytes:
    text = value.strip()
    try:
        return bytes.fromhex(text)
    except ValueError:
        pass
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError("POSTWIRE_SECRET_KEY must be hex or base64 (32 bytes or more)") from exc


@lru_cache(maxsize=8)
def _load(value: str | None, path: Path) -> ServerSecret:
    if value:
        return ServerSecret(_decode(value))
    return ServerSecret(_decode(stored_key(path).decode()))


def load_server_secret(value: str | None, path: Path) -> ServerSecret:
    """The install's secret: ``value`` (POSTWIRE_SECRET_KEY) when set, else the key file at
    ``path``, made on first use. Loaded once per process."""
    return _load(value or None, path)

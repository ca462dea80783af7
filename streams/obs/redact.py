"""Email addresses out of log text (pure): each becomes ``addr:<keyed hash>@<domain>``.

The local part is what identifies a person; the domain is what operators need (a Gmail
deferral storm, a relay refusing one customer's domain) and is kept in clear. The hash is an
HMAC-SHA256 of the whole lower-cased address under a secret key, cut to 12 hex digits: the same
address gives the same hash in every process of an install, so one recipient's story can be
followed through the logs, while without the key a guessed address cannot be confirmed (a plain
hash of an address is reversible by trying the likely ones). 48 bits: collisions are not a
concern at the scale of one log search.

API keys (``pw_`` and a URL-safe token, ``streams/db/tenants.py create_api_key``) never belong in
a log, a dead letter or a table: ``scrub_keys`` and ``scrub_key_bytes`` (the one definition of a
key's shape) replace every key-shaped token, and ``Redactor`` applies them to every log string.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["ADDRESS", "API_KEY", "Redactor", "scrub_key_bytes", "scrub_keys"]

# an API key as create_api_key makes it: "pw_" + token_urlsafe(32), 43 characters; shorter runs
# (a truncated key in an error message) still hold most of a key's secret, so 20 is enough
API_KEY = re.compile(r"pw_[A-Za-z0-9_-]{20,}")
_API_KEY_BYTES = re.compile(API_KEY.pattern.encode())
KEY_REDACTED = "pw_[redacted]"


def scrub_keys(text: str) -> str:
    """``text`` with every API-key-shaped token replaced by ``pw_[redacted]``."""
    if "pw_" not in text:
        return text
    return API_KEY.sub(KEY_REDACTED, text)


def scrub_key_bytes(data: bytes) -> bytes:
    """``data`` with every API-key-shaped run overwritten in place by ``pw_`` and ``*``s of the
    same length: Avro strings are length-prefixed, so a record stays decodable (a dead letter's
    raw bytes keep their use) while the key is gone, and ``*`` is no key character."""
    if b"pw_" not in data:
        return data
    return _API_KEY_BYTES.sub(lambda m: b"pw_" + b"*" * (len(m[0]) - 3), data)


# RFC 5322 atext and dots, less "=": ``to=bob@x.com`` (key=value logging, Postfix's too) keeps
# its key; in an SRS address (``SRS0=hash=tt=orig.example=bob@fwd.example``) only the part after
# the last "=" is hashed, which still hides the mailbox
_LOCAL_CHARS = r"\w.!#$%&'*+/?^`{|}~-"
# - a local part never starts with "/" here: the user of a URL (``postgresql://postgres@db``)
#   is not a mailbox (a password in ``smtp://user:secret@host`` is still hashed: no harm)
# - ``(?<!addr:)``: an already hashed address is left as it is, so redacting twice is harmless
# - the quoted form covers ``"john smith"@example.com``
ADDRESS = re.compile(
    rf"(?<!addr:)(?<![{_LOCAL_CHARS}])"
    rf'(?P<local>"[^"\r\n]+"|[{_LOCAL_CHARS.replace("/", "")}][{_LOCAL_CHARS}]*)'
    r"@(?P<domain>[\w-]+(?:\.[\w-]+)+)"
)
_HASH_CHARS = 12


class Redactor:
    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("the address hash key must not be empty")
        self._key = key

    def digest(self, address: str) -> str:
        mac = hmac.new(self._key, address.lower().encode(), hashlib.sha256)
        return mac.hexdigest()[:_HASH_CHARS]

    def _replace(self, match: re.Match[str]) -> str:
        local, domain = match["local"], match["domain"].lower()
        return f"addr:{self.digest(local + '@' + domain)}@{domain}"

    def text(self, value: str) -> str:
        value = scrub_keys(value)
        if "@" not in value:  # nearly every log line: skip the regex
            return value
        return ADDRESS.sub(self._replace, value)

    def value(self, value: Any) -> Any:
        """``value`` with every address in it replaced, looking into containers (keys too).
        Numbers, booleans and None stay; anything else becomes its redacted ``str()``, since
        the renderer would otherwise ``str()`` it later, unredacted (an exception, bytes)."""
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {self.value(k): self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.value(v) for v in value]
        return self.text(str(value))

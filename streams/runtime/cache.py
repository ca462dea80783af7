"""A size-bounded in-memory mapping for caches that need no changelog (MX answers, verdicts that
are cheap to recompute): when full, the oldest tenth of the entries goes, so memory stays flat
however many distinct keys a long run sees.

Values are kept packed (orjson bytes): one object per entry instead of the dozens a nested
verdict is made of, so the garbage collector's full passes stay short however full the cache is
(a cache of 200,000 unpacked verdicts made them take a large part of the p99 latency). A value
is unpacked on every read, so each reader gets a copy it may change."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

import orjson

__all__ = ["BoundedCache"]


class BoundedCache(MutableMapping[str, Any]):
    def __init__(self, max_entries: int) -> None:
        """``max_entries`` 0: keep nothing."""
        self.max_entries = max(max_entries, 0)
        self._data: dict[str, bytes] = {}

    def __getitem__(self, key: str) -> Any:
        return orjson.loads(self._data[key])

    def get(self, key: str, default: Any = None) -> Any:  # the hot path: no exception
        packed = self._data.get(key)
        return default if packed is None else orjson.loads(packed)

    def __setitem__(self, key: str, value: Any) -> None:
        data = self._data
        if key not in data and len(data) >= self.max_entries:
            if not self.max_entries:
                return
            # dicts keep insertion order: the first keys are the oldest
            for old in list(data)[: max(self.max_entries // 10, 1)]:
                del data[old]
        data[key] = _pack(value)

    def __delitem__(self, key: str) -> None:
        del self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def _pack(value: Any) -> bytes:
    # orjson's bytes keep the 8 KB buffer they were written into, whatever their length: 20,000
    # half-KB verdicts held 164 MB that way, and 11 MB as exact-size copies
    return memoryview(orjson.dumps(value)).tobytes()

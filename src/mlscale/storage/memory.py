"""In-process key-value store: a dict with lazy expiry, for tests and single-process use."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence

from mlscale.storage.base import KeyValue


class MemoryKeyValue(KeyValue):
    """A dict of key -> (value, expires_at); expired entries vanish when read or scanned.

    Versions of ``set_many_if_newer`` live in a second dict (a plain ``set_many`` drops them), so
    readers of ``_data`` see the same (value, expires_at) pairs as before.
    """

    def __init__(self) -> None:
        self._data: dict[bytes, tuple[bytes, float]] = {}
        self._versions: dict[bytes, int] = {}
        # A conditional write's compare and write are one step between threads; plain writes and
        # deletes take the lock too, so none of them can slip in between.
        self._lock = threading.Lock()

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        now = time.monotonic()
        out: list[bytes | None] = []
        for key in keys:
            entry = self._data.get(key)
            if entry is None:
                out.append(None)
            elif entry[1] <= now:
                self._data.pop(key, None)
                self._versions.pop(key, None)
                out.append(None)
            else:
                out.append(entry[0])
        return out

    def set_many(self, items: Mapping[bytes, bytes], ttl: float | None = None) -> None:
        expires = time.monotonic() + ttl if ttl is not None else float("inf")
        versions = self._versions
        with self._lock:
            for key, value in items.items():
                self._data[key] = (value, expires)
                if versions:
                    versions.pop(key, None)

    def _set_many_if_newer(self, items: Mapping[bytes, bytes], versions: Sequence[int], ttl: float | None) -> None:
        now = time.monotonic()
        expires = now + ttl if ttl is not None else float("inf")
        data, stored = self._data, self._versions
        with self._lock:
            for (key, value), version in zip(items.items(), versions, strict=True):
                old = stored.get(key)
                if old is not None and old > version:
                    entry = data.get(key)
                    if entry is not None and entry[1] > now:
                        continue
                data[key] = (value, expires)
                stored[key] = version

    def delete(self, keys: Sequence[bytes]) -> int:
        versions = self._versions
        with self._lock:
            for key in keys:
                versions.pop(key, None)
            return sum(self._data.pop(key, None) is not None for key in keys)

    def scan(self, prefix: bytes = b"") -> Iterator[bytes]:
        now = time.monotonic()
        return iter([k for k, (_, exp) in self._data.items() if k.startswith(prefix) and exp > now])

    def ttl_many(self, keys: Sequence[bytes]) -> list[float | None]:
        now = time.monotonic()
        out: list[float | None] = []
        for key in keys:
            entry = self._data.get(key)
            out.append(None if entry is None or entry[1] == float("inf") else max(entry[1] - now, 0.001))
        return out

    async def aget_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        # A dict lookup is faster than a thread hop; it never blocks the loop.
        return self.get_many(keys)

    async def aset_many(self, items: Mapping[bytes, bytes], ttl: float | None = None) -> None:
        self.set_many(items, ttl)

    async def adelete(self, keys: Sequence[bytes]) -> int:
        return self.delete(keys)

"""In-process key-value store: a dict with lazy expiry, for tests and single-process use."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence

from mlscale.storage.base import KeyValue


class MemoryKeyValue(KeyValue):
    """A dict of key -> (value, expires_at); expired entries vanish when read or scanned."""

    def __init__(self) -> None:
        self._data: dict[bytes, tuple[bytes, float]] = {}

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        now = time.monotonic()
        out: list[bytes | None] = []
        for key in keys:
            entry = self._data.get(key)
            if entry is None:
                out.append(None)
            elif entry[1] <= now:
                del self._data[key]
                out.append(None)
            else:
                out.append(entry[0])
        return out

    def set_many(self, items: Mapping[bytes, bytes], ttl: float | None = None) -> None:
        expires = time.monotonic() + ttl if ttl is not None else float("inf")
        for key, value in items.items():
            self._data[key] = (value, expires)

    def delete(self, keys: Sequence[bytes]) -> int:
        return sum(self._data.pop(key, None) is not None for key in keys)

    def scan(self, prefix: bytes = b"") -> Iterator[bytes]:
        now = time.monotonic()
        return iter([k for k, (_, exp) in self._data.items() if k.startswith(prefix) and exp > now])

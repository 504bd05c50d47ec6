"""A short-lived read-through cache in front of a KeyValue, for the online feature store.

``CachedKeyValue(store, ttl=5)`` is itself a KeyValue: reads answer from L1 when they can and fetch
only the misses from ``store`` in one batch; writes and deletes go through and update L1, so this
process never reads its own stale write. Other processes' writes are seen after at most ``ttl``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from mlscale.cache.l1 import LRUCache
from mlscale.storage.base import KeyValue


class CachedKeyValue(KeyValue):
    """L1 (bytes-bounded LRU with a short TTL) over any KeyValue."""

    def __init__(
        self,
        store: KeyValue,
        *,
        ttl: float = 5.0,
        l1_max_bytes: int = 16 * 1024 * 1024,
        name: str = "features",
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.l1 = LRUCache(l1_max_bytes, ttl=ttl, name=name, tier="l1")

    def _split(self, keys: Sequence[bytes]) -> tuple[list[bytes | None], list[int]]:
        out = self.l1.get_many(keys)
        return out, [i for i, v in enumerate(out) if v is None]

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        out, missing = self._split(keys)
        if missing:
            fetched = self.store.get_many([keys[i] for i in missing])
            self._fill(keys, out, missing, fetched)
        return out

    async def aget_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        out, missing = self._split(keys)
        if missing:
            fetched = await self.store.aget_many([keys[i] for i in missing])
            self._fill(keys, out, missing, fetched)
        return out

    def _fill(self, keys: Sequence[bytes], out: list, missing: list[int], fetched: list[bytes | None]) -> None:
        for i, value in zip(missing, fetched, strict=True):
            out[i] = value
            if value is not None:
                self.l1.put(keys[i], value)

    def set_many(self, items: Mapping[bytes, bytes], ttl: float | None = None) -> None:
        self.store.set_many(items, ttl)
        self._remember(items, ttl)

    async def aset_many(self, items: Mapping[bytes, bytes], ttl: float | None = None) -> None:
        await self.store.aset_many(items, ttl)
        self._remember(items, ttl)

    def _set_many_if_newer(self, items: Mapping[bytes, bytes], versions: Sequence[int], ttl: float | None) -> None:
        self.store.set_many_if_newer(items, versions, ttl)
        # Whether each write won is known only to the store: forget the keys rather than guess.
        for key in items:
            self.l1.delete(key)

    def _remember(self, items: Mapping[bytes, bytes], ttl: float | None) -> None:
        short = self.ttl if ttl is None else min(ttl, self.ttl)
        for key, value in items.items():
            self.l1.put(key, value, ttl=short)

    def delete(self, keys: Sequence[bytes]) -> int:
        for key in keys:
            self.l1.delete(key)
        return self.store.delete(keys)

    async def adelete(self, keys: Sequence[bytes]) -> int:
        for key in keys:
            self.l1.delete(key)
        return await self.store.adelete(keys)

    def scan(self, prefix: bytes = b"") -> Iterator[bytes]:
        return self.store.scan(prefix)

    def ttl_many(self, keys: Sequence[bytes]) -> list[float | None]:
        return self.store.ttl_many(keys)

    def close(self) -> None:
        self.l1.clear()
        self.store.close()

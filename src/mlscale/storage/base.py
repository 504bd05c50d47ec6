"""The one key-value interface shared by the caches and the online feature store.

Bytes in, bytes out, batch calls first: every backend (memory, SQLite, Redis, a sharded store over
other stores) answers many keys in one round trip, which is where latency is won.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence


class KeyValue(ABC):
    """A key-value store of bytes with optional time-to-live per write."""

    @abstractmethod
    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """Values for ``keys`` in the same order; None where a key is missing or expired."""

    @abstractmethod
    def set_many(self, items: Mapping[bytes, bytes], ttl: float | None = None) -> None:
        """Write all ``items``; with ``ttl`` (seconds) they expire after that long."""

    @abstractmethod
    def delete(self, keys: Sequence[bytes]) -> int:
        """Remove ``keys``; returns how many existed."""

    @abstractmethod
    def scan(self, prefix: bytes = b"") -> Iterator[bytes]:
        """Every live key starting with ``prefix`` (order unspecified); used by resharding and purges."""

    def get(self, key: bytes) -> bytes | None:
        """One value, or None."""
        return self.get_many([key])[0]

    def set(self, key: bytes, value: bytes, ttl: float | None = None) -> None:
        """Write one value."""
        self.set_many({key: value}, ttl=ttl)

    def ttl_many(self, keys: Sequence[bytes]) -> list[float | None]:
        """Seconds left before each key expires (None: no expiry, missing, or not tracked).

        Resharding uses it to carry expiries over; a backend that cannot tell keeps values forever.
        """
        return [None] * len(keys)

    def set_many_with_ttls(self, items: Mapping[bytes, tuple[bytes, float | None]]) -> None:
        """Write items that each carry their own ttl (grouped into one set_many per ttl)."""
        groups: dict[float | None, dict[bytes, bytes]] = defaultdict(dict)
        for key, (value, ttl) in items.items():
            groups[ttl][key] = value
        for ttl, group in groups.items():
            self.set_many(group, ttl=ttl)

    # Async face for event-loop callers (the server). The default runs the blocking call in a worker
    # thread; a backend with a native async client (Redis) overrides these.
    async def aget_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """get_many without blocking the event loop."""
        return await asyncio.to_thread(self.get_many, keys)

    async def aset_many(self, items: Mapping[bytes, bytes], ttl: float | None = None) -> None:
        """set_many without blocking the event loop."""
        await asyncio.to_thread(self.set_many, items, ttl)

    async def adelete(self, keys: Sequence[bytes]) -> int:
        """delete without blocking the event loop."""
        return await asyncio.to_thread(self.delete, keys)

    def close(self) -> None:  # noqa: B027 - optional hook; most backends hold nothing to release
        """Release connections or files."""

    def __enter__(self) -> KeyValue:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

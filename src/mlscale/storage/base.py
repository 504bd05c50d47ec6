"""The one key-value interface shared by the caches and the online feature store.

Bytes in, bytes out, batch calls first: every backend (memory, SQLite, Redis, a sharded store over
other stores) answers many keys in one round trip, which is where latency is won.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence

# First 8 bytes that read as this or more are text, not a version (see ``set_many_if_newer``).
_TEXT = 2**62


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

    def set_many_if_newer(
        self, items: Mapping[bytes, bytes], versions: Sequence[int], ttl: float | None = None
    ) -> None:
        """Write ``items`` except where the stored value is newer: a conditional write per key.

        A versioned value starts with its version, a little-endian int64 (the feature store's
        packed records already do: event time first); ``versions`` repeats those versions as ints,
        in the order of ``items``, so a store that keeps them in a column need not parse values.
        A key whose live stored value has a greater version keeps it; an equal or smaller one, a
        missing or expired key is overwritten. Memory and SQLite keep the version beside the
        value, so there a value written by plain ``set_many`` counts as unversioned (overwritten);
        Redis reads it from the stored value's first 8 bytes, where 2^62 or more means text (an
        unversioned value); versions stay below 2^53. Backends compare and write as one
        atomic step: a writer paused between its own checks and its write can then never clobber a
        newer writer (stream processors fence zombies with it). Backends implement
        ``_set_many_if_newer``; this checks the arguments once for all of them, before any write.
        """
        if len(versions) != len(items):
            raise ValueError(f"{len(items)} items but {len(versions)} versions")
        if items:
            self._set_many_if_newer(items, versions, ttl)

    def _set_many_if_newer(self, items: Mapping[bytes, bytes], versions: Sequence[int], ttl: float | None) -> None:
        """The conditional write of a non-empty batch. This default reads, then writes: it is NOT
        atomic; every backend in this package overrides it."""
        keys = list(items)
        stored = [
            None if v is None or len(v) < 8 else int.from_bytes(v[:8], "little", signed=True)
            for v in self.get_many(keys)
        ]
        keep = {
            k: items[k]
            for k, old, version in zip(keys, stored, versions, strict=True)
            if old is None or old >= _TEXT or old <= version
        }
        if keep:
            self.set_many(keep, ttl=ttl)

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

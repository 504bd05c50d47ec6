"""The one key-value interface shared by the caches and the online feature store.

Bytes in, bytes out, batch calls first: every backend (memory, SQLite, Redis, a sharded store over
other stores) answers many keys in one round trip, which is where latency is won.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
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

    def close(self) -> None:  # noqa: B027 - optional hook; most backends hold nothing to release
        """Release connections or files."""

    def __enter__(self) -> KeyValue:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

"""Consistent hashing with virtual nodes: which shards own a key.

Each shard places ``vnodes`` points on a 64-bit ring (xxh3 of "name#i"); a key belongs to the first
point clockwise from its own hash, and its replicas to the next distinct shards. Adding or removing
one of N shards therefore moves only ~1/N of the keys. The ring is a sorted NumPy array and the
owners of every arc are precomputed, so a batch of keys is one ``searchsorted`` plus one ``take``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

import numpy as np
import xxhash


def key_hash(key: bytes) -> int:
    """Stable 64-bit hash of a key, the same in every process and on every host."""
    return xxhash.xxh3_64_intdigest(key)


class HashRing:
    """Owners of keys among named shards; ``replicas`` distinct owners per key (capped at the shard count)."""

    def __init__(self, names: Iterable[str], *, vnodes: int = 160, replicas: int = 1) -> None:
        self.names: list[str] = sorted(set(names))
        if not self.names:
            raise ValueError("a hash ring needs at least one shard")
        if vnodes < 1 or replicas < 1:
            raise ValueError("vnodes and replicas must be at least 1")
        self.vnodes = vnodes
        self.replicas = min(replicas, len(self.names))
        points = []
        for index, name in enumerate(self.names):
            for v in range(vnodes):
                points.append((key_hash(f"{name}#{v}".encode()), index))
        points.sort()
        self._points = np.array([p for p, _ in points], dtype=np.uint64)
        owners = np.array([i for _, i in points], dtype=np.int32)
        self._owners = self._successors(owners)
        # Plain-Python copies for one-key lookups, where NumPy's per-call cost would dominate.
        self._point_list: list[int] = self._points.tolist()
        self._primary_list: list[int] = self._owners[:, 0].tolist()

    def _successors(self, owners: np.ndarray) -> np.ndarray:
        """Row j: the first ``replicas`` distinct shards clockwise from ring point j."""
        n = len(owners)
        table = np.empty((n, self.replicas), dtype=np.int32)
        doubled = np.concatenate([owners, owners])
        for j in range(n):
            seen: list[int] = []
            k = j
            while len(seen) < self.replicas:
                shard = int(doubled[k])
                if shard not in seen:
                    seen.append(shard)
                k += 1
            table[j] = seen
        return table

    def _rows(self, keys: Sequence[bytes]) -> np.ndarray:
        hashes = np.fromiter((key_hash(k) for k in keys), dtype=np.uint64, count=len(keys))
        idx = np.searchsorted(self._points, hashes, side="left")
        idx[idx == len(self._points)] = 0  # past the last point wraps to the first
        return idx

    def owner_indices(self, keys: Sequence[bytes]) -> np.ndarray:
        """Array (len(keys), replicas) of shard indices into ``names``; column 0 is the primary."""
        return self._owners[self._rows(keys)]

    def primary_index(self, key: bytes) -> int:
        """Index into ``names`` of the primary owner of one key (bisect, no NumPy)."""
        i = bisect.bisect_left(self._point_list, key_hash(key))
        return self._primary_list[i if i < len(self._point_list) else 0]

    def owners(self, key: bytes) -> list[str]:
        """Names of the shards that own ``key``, primary first."""
        return [self.names[i] for i in self.owner_indices([key])[0]]

    def primaries(self, keys: Sequence[bytes]) -> list[str]:
        """The primary shard name of each key."""
        return [self.names[i] for i in self.owner_indices(keys)[:, 0]]

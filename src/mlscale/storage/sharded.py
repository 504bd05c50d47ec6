"""A key-value store over N stores, placed by consistent hashing, optionally replicated.

Reads go to each key's first owner that answers (a dead or missing answer falls through to the next
replica), so with ``replicas=2`` one dead shard loses no reads. Writes go to every owner and succeed
when at least one owner of every key took them. A shard that fails is skipped for ``retry_after``
seconds, so requests do not each pay its timeout while it is down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from mlscale.errors import ServiceUnavailable
from mlscale.storage.base import KeyValue
from mlscale.storage.hashring import HashRing

log = logging.getLogger(__name__)


class ShardedKeyValue(KeyValue):
    """``ShardedKeyValue({"a": store_a, "b": store_b}, replicas=2)``: itself a KeyValue."""

    def __init__(
        self,
        shards: Mapping[str, KeyValue],
        *,
        vnodes: int = 160,
        replicas: int = 1,
        retry_after: float = 1.0,
        parallel: bool = False,
    ) -> None:
        self.shards = dict(shards)
        # ``parallel`` asks the shards of one batch from a thread pool (one round trip instead of one
        # per shard). Off by default: on local SQLite files and loopback Redis the hand-off cost more
        # than it saved (bench/cache/run.py: 4 SQLite shards, 100 keys, p50 1129 us from threads vs
        # 453 us in turn); worth it only with remote shards on slow links.
        self.parallel = parallel
        self._pool: ThreadPoolExecutor | None = None
        self.ring = HashRing(self.shards, vnodes=vnodes, replicas=replicas)
        self.replicas = self.ring.replicas
        self.retry_after = retry_after
        self._stores = [self.shards[name] for name in self.ring.names]
        self._down_until = [0.0] * len(self._stores)

    # -- health -------------------------------------------------------------------------------
    def _usable(self, index: int) -> bool:
        return self._down_until[index] <= time.monotonic()

    def _failed(self, index: int, exc: Exception) -> None:
        if self._usable(index):
            log.warning("shard %s failed, skipping it for %.1fs: %s", self.ring.names[index], self.retry_after, exc)
        self._down_until[index] = time.monotonic() + self.retry_after

    @staticmethod
    def _groups(owner_column: np.ndarray, positions: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        for shard in np.unique(owner_column):
            yield int(shard), positions[owner_column == shard]

    # -- reads --------------------------------------------------------------------------------
    def _read(self, keys: Sequence[bytes], call: Callable[[KeyValue, list[bytes]], list]) -> list:
        """Answer each key from its first owner that answers with a value."""
        n = len(keys)
        if n == 1 and self.replicas == 1:
            return self._read_one(keys[0], call)
        out: list = [None] * n
        if not n:
            return out
        owners = self.ring.owner_indices(keys)
        answered = np.zeros(n, dtype=bool)
        pending = np.arange(n)
        last_error: Exception | None = None
        for col in range(self.replicas):
            if not len(pending):
                break
            retry: list[np.ndarray] = []
            groups = list(self._groups(owners[pending, col], pending))
            usable = [(s, p) for s, p in groups if self._usable(s)]
            retry.extend(p for s, p in groups if not self._usable(s))
            results = self._fan_out(usable, lambda s, p: call(self._stores[s], [keys[i] for i in p]))
            for (shard, positions), values in zip(usable, results, strict=True):
                if isinstance(values, ServiceUnavailable):
                    self._failed(shard, values)
                    last_error = values
                    retry.append(positions)
                    continue
                if isinstance(values, BaseException):
                    raise values
                answered[positions] = True
                missing = []
                for p, value in zip(positions.tolist(), values, strict=True):
                    if value is None:
                        missing.append(p)  # a replica may hold it (written while this shard was down)
                    else:
                        out[p] = value
                retry.append(np.array(missing, dtype=np.intp))
            pending = np.concatenate(retry) if retry else np.empty(0, dtype=np.intp)
        if not answered.all():
            down = sorted({self.ring.names[i] for i in owners[~answered].ravel()})
            raise ServiceUnavailable(
                f"no owner of {int((~answered).sum())} keys answered (shards {down}): {last_error}"
            )
        return out

    def _fan_out(self, groups: list[tuple[int, np.ndarray]], fn: Callable[[int, np.ndarray], list]) -> list:
        """``fn`` on every group, concurrently when there are several; exceptions are returned."""

        def guarded(group: tuple[int, np.ndarray]) -> object:
            try:
                return fn(*group)
            except Exception as exc:
                return exc

        if not self.parallel or len(groups) < 2:
            return [guarded(g) for g in groups]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=len(self._stores), thread_name_prefix="shard")
        return list(self._pool.map(guarded, groups))

    def _read_one(self, key: bytes, call: Callable[[KeyValue, list[bytes]], list]) -> list:
        """``_read`` for one key without replicas: the online store's single-entity reads, where
        grouping keys with NumPy cost six times the SQLite lookup itself (measured 69 vs 10 us)."""
        shard = self.ring.primary_index(key)
        error: Exception | None = None
        if self._usable(shard):
            try:
                return call(self._stores[shard], [key])
            except ServiceUnavailable as exc:
                self._failed(shard, exc)
                error = exc
        raise ServiceUnavailable(f"no owner of 1 keys answered (shards {[self.ring.names[shard]]}): {error}")

    async def _aread_one(self, key: bytes) -> list[bytes | None]:
        """``aget_many`` of one key without replicas: no NumPy grouping (see ``_read_one``)."""
        shard = self.ring.primary_index(key)
        error: Exception | None = None
        if self._usable(shard):
            try:
                return await self._stores[shard].aget_many([key])
            except ServiceUnavailable as exc:
                self._failed(shard, exc)
                error = exc
        raise ServiceUnavailable(f"no owner of 1 keys answered (shards {[self.ring.names[shard]]}): {error}")

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        return self._read(keys, lambda store, ks: store.get_many(ks))

    def ttl_many(self, keys: Sequence[bytes]) -> list[float | None]:
        return self._read(keys, lambda store, ks: store.ttl_many(ks))

    async def aget_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """Like get_many, with the shards of one replica column asked concurrently."""
        n = len(keys)
        out: list[bytes | None] = [None] * n
        if not n:
            return out
        if n == 1 and self.replicas == 1:
            return await self._aread_one(keys[0])
        owners = self.ring.owner_indices(keys)
        answered = np.zeros(n, dtype=bool)
        pending = np.arange(n)
        last_error: BaseException | None = None
        for col in range(self.replicas):
            if not len(pending):
                break
            groups = [(s, p) for s, p in self._groups(owners[pending, col], pending)]
            usable = [(s, p) for s, p in groups if self._usable(s)]
            retry = [p for s, p in groups if not self._usable(s)]
            results = await asyncio.gather(
                *(self._stores[s].aget_many([keys[i] for i in p]) for s, p in usable), return_exceptions=True
            )
            for (shard, positions), values in zip(usable, results, strict=True):
                if isinstance(values, ServiceUnavailable):
                    self._failed(shard, values)
                    last_error = values
                    retry.append(positions)
                    continue
                if isinstance(values, BaseException):
                    raise values
                answered[positions] = True
                missing = [p for p, v in zip(positions.tolist(), values, strict=True) if v is None]
                for p, v in zip(positions.tolist(), values, strict=True):
                    if v is not None:
                        out[p] = v
                retry.append(np.array(missing, dtype=np.intp))
            pending = np.concatenate(retry) if retry else np.empty(0, dtype=np.intp)
        if not answered.all():
            raise ServiceUnavailable(f"no owner of {int((~answered).sum())} keys answered: {last_error}")
        return out

    # -- writes -------------------------------------------------------------------------------
    def _write(self, keys: Sequence[bytes], call: Callable[[KeyValue, np.ndarray], None]) -> None:
        """Run ``call`` on every owner; fail only when some key reached none of its owners."""
        owners = self.ring.owner_indices(keys)
        stored = np.zeros(len(keys), dtype=bool)
        last_error: Exception | None = None
        all_positions = np.arange(len(keys))
        for col in range(self.replicas):
            for shard, positions in self._groups(owners[:, col], all_positions):
                try:
                    call(self._stores[shard], positions)
                except ServiceUnavailable as exc:
                    self._failed(shard, exc)
                    last_error = exc
                    continue
                stored[positions] = True
        if not stored.all():
            raise ServiceUnavailable(f"{int((~stored).sum())} keys reached none of their shards: {last_error}")

    def set_many(self, items: Mapping[bytes, bytes], ttl: float | None = None) -> None:
        keys = list(items)
        if keys:
            self._write(keys, lambda store, pos: store.set_many({keys[p]: items[keys[p]] for p in pos}, ttl))

    def _set_many_if_newer(self, items: Mapping[bytes, bytes], versions: Sequence[int], ttl: float | None) -> None:
        """Each owner compares and writes its share atomically (a key lives whole on each owner)."""
        keys = list(items)

        def write(store: KeyValue, positions: np.ndarray) -> None:
            chosen = positions.tolist()
            store.set_many_if_newer({keys[p]: items[keys[p]] for p in chosen}, [versions[p] for p in chosen], ttl)

        self._write(keys, write)

    def set_many_with_ttls(self, items: Mapping[bytes, tuple[bytes, float | None]]) -> None:
        keys = list(items)
        if keys:
            self._write(keys, lambda store, pos: store.set_many_with_ttls({keys[p]: items[keys[p]] for p in pos}))

    def delete(self, keys: Sequence[bytes]) -> int:
        """Delete on every owner; the count is each key's first reachable owner's answer."""
        if not keys:
            return 0
        counted = np.zeros(len(keys), dtype=bool)
        total = 0

        def remove(store: KeyValue, positions: np.ndarray) -> None:
            nonlocal total
            fresh = positions[~counted[positions]]
            seen = positions[counted[positions]]
            if len(fresh):
                total += store.delete([keys[p] for p in fresh])
                counted[fresh] = True
            if len(seen):
                store.delete([keys[p] for p in seen])

        self._write(keys, remove)
        return total

    def scan(self, prefix: bytes = b"") -> Iterator[bytes]:
        seen: dict[bytes, None] = {}
        failed: list[str] = []
        for index, store in enumerate(self._stores):
            try:
                seen.update(dict.fromkeys(store.scan(prefix)))
            except ServiceUnavailable as exc:
                self._failed(index, exc)
                failed.append(self.ring.names[index])
        # With replicas, every key has another owner unless `replicas` shards failed.
        if len(failed) >= self.replicas:
            raise ServiceUnavailable(f"shards {failed} did not answer a scan")
        return iter(seen)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
        for store in self._stores:
            store.close()

    def __repr__(self) -> str:
        return f"ShardedKeyValue({self.ring.names}, replicas={self.replicas})"

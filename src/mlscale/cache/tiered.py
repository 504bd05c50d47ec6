"""Two tiers and single-flight in front of an expensive async computation.

Lookup order: L1 (in-process) -> an identical computation already running (wait for it) -> L2
(shared) -> compute. An L2 hit fills L1; a computed value fills L1 at once and L2 in the background,
so the caller never waits for the shared tier's write.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from mlscale.cache.keys import model_of, model_prefix
from mlscale.cache.l1 import LRUCache
from mlscale.cache.l2 import SharedTier
from mlscale.cache.metrics import SHARED
from mlscale.cache.singleflight import SingleFlight
from mlscale.storage.base import KeyValue

log = logging.getLogger(__name__)

Source = str  # "l1" | "l2" | "computed" | "shared"


class TieredCache:
    """L1 bounded by ``l1_max_bytes``, optional L2 over a KeyValue, entries living ``ttl`` seconds."""

    def __init__(
        self,
        *,
        l1_max_bytes: int = 64 * 1024 * 1024,
        ttl: float | None = 300.0,
        l2: KeyValue | None = None,
        l1_ttl: float | None = None,
        name: str = "default",
        l2_timeout: float = 0.5,
        l2_retry_after: float = 5.0,
    ) -> None:
        self.name = name
        self.ttl = ttl
        # L1 may keep entries for less time than L2: other workers' purges reach L1 only by expiry/sync.
        self.l1 = LRUCache(l1_max_bytes, ttl=ttl if l1_ttl is None else l1_ttl, name=name, tier="l1")
        self.l2 = SharedTier(l2, name=name, timeout=l2_timeout, retry_after=l2_retry_after) if l2 is not None else None
        self._flight: SingleFlight[tuple[bytes, Source]] = SingleFlight()
        self._shared = SHARED.labels(name)
        self._writes: set[asyncio.Task] = set()

    async def get_or_compute(self, key: bytes, compute: Callable[[], Awaitable[bytes]]) -> tuple[bytes, Source]:
        """The value for ``key`` and where it came from: "l1", "l2", "computed" or "shared"."""
        value = self.l1.get(key)
        if value is not None:
            return value, "l1"
        (value, source), leader = await self._flight.run(key, lambda: self._load(key, compute))
        if not leader:
            self._shared.inc()
            return value, "shared"
        return value, source

    def _accepts(self, key: bytes, token: object) -> bool:
        """Hook: may a value computed since ``token`` be stored? (PredictionCache refuses after a purge.)"""
        return True

    def _token(self, key: bytes) -> object:
        return None

    async def _load(self, key: bytes, compute: Callable[[], Awaitable[bytes]]) -> tuple[bytes, Source]:
        token = self._token(key)
        if self.l2 is not None:
            value = await self.l2.get(key)
            if value is not None:
                self.l1.put(key, value)
                return value, "l2"
        value = await compute()
        if not isinstance(value, bytes | bytearray | memoryview):
            raise TypeError(f"the cached computation must return bytes, not {type(value).__name__}")
        value = bytes(value)
        if self._accepts(key, token):
            self.l1.put(key, value)
            if self.l2 is not None:
                self._spawn(self.l2.put_many({key: value}, self.ttl))
        return value, "computed"

    def _spawn(self, coro: Awaitable[object]) -> None:
        task = asyncio.ensure_future(coro)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def drain(self) -> None:
        """Wait for background L2 writes (tests, shutdown)."""
        while self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)

    def purge_prefix(self, prefix: bytes) -> int:
        """Drop every entry with ``prefix`` from L1 and L2 (blocking); returns how many were removed."""
        removed = self.l1.purge_prefix(prefix)
        if self.l2 is not None:
            removed += self.l2.purge_prefix(prefix)
        return removed


class PredictionCache(TieredCache):
    """The model server's cache: keys from ``prediction_key``, purge per model.

    A purge clears this process's L1 and the shared L2, refuses to store answers that were being
    computed while it ran, and leaves a purge mark in L2 that other workers pick up within
    ``purge_sync_interval`` seconds (they then clear that model from their own L1).
    """

    PURGE_MARK = b"\x00purge\x00"

    def __init__(self, *, purge_sync_interval: float = 1.0, name: str = "prediction", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.purge_sync_interval = purge_sync_interval
        self._generation: dict[bytes, int] = {}
        self._marks: dict[bytes, bytes] = {}  # model -> last purge mark seen in L2
        self._started = time.time()
        self._next_sync = time.monotonic() + purge_sync_interval
        self._models: set[bytes] = set()

    async def get_or_compute(self, key: bytes, compute: Callable[[], Awaitable[bytes]]) -> tuple[bytes, Source]:
        if self.l2 is not None and time.monotonic() >= self._next_sync:
            self._next_sync = time.monotonic() + self.purge_sync_interval
            self._spawn(self._sync_purges())
        return await super().get_or_compute(key, compute)

    def _token(self, key: bytes) -> object:
        model = model_of(key)
        self._models.add(model)
        return self._generation.get(model, 0)

    def _accepts(self, key: bytes, token: object) -> bool:
        return self._generation.get(model_of(key), 0) == token

    def purge(self, model: str) -> int:
        """Remove every cached answer of ``model`` (all versions); returns how many entries went.

        Blocking when there is an L2 (a scan and deletes): from async code call ``apurge``.
        """
        name = model.encode()
        self._generation[name] = self._generation.get(name, 0) + 1
        removed = self.l1.purge_prefix(model_prefix(model))
        if self.l2 is not None:
            removed += self.l2.purge_prefix(model_prefix(model))
            mark = repr(time.time()).encode()
            self.l2.store.set_many({self.PURGE_MARK + name: mark})
            self._marks[name] = mark
        return removed

    async def apurge(self, model: str) -> int:
        """``purge`` without blocking the event loop."""
        return await asyncio.to_thread(self.purge, model)

    async def _sync_purges(self) -> None:
        """Clear from L1 the models another worker purged since we last looked."""
        if self.l2 is None or not self._models:
            return
        models = sorted(self._models)
        marks = await self.l2.get_many([self.PURGE_MARK + m for m in models])
        for model, mark in zip(models, marks, strict=True):
            if mark is None or self._marks.get(model) == mark:
                continue
            first_look = model not in self._marks
            self._marks[model] = mark
            if first_look and float(mark) < self._started:
                continue  # purged before this worker started: nothing of it is in our L1
            self._generation[model] = self._generation.get(model, 0) + 1
            dropped = self.l1.purge_prefix(model + b"\x00")
            log.info("model %s purged by another worker: dropped %d L1 entries", model.decode(), dropped)

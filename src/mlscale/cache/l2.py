"""L2: a shared tier over any KeyValue (Redis across hosts, SQLite across processes).

A cache must never be the reason a request fails: every L2 error or timeout is logged, counted
(``result="error"``) and answered as a miss, and after a failure the tier is skipped for
``retry_after`` seconds so requests do not each wait for a dead server's timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time

from mlscale.cache.metrics import REQUESTS
from mlscale.storage.base import KeyValue

log = logging.getLogger(__name__)


class SharedTier:
    """Async get/put over a KeyValue that degrades to misses when the store is unavailable."""

    def __init__(
        self,
        store: KeyValue,
        *,
        name: str = "default",
        timeout: float = 0.5,
        retry_after: float = 5.0,
    ) -> None:
        self.store = store
        self.timeout = timeout
        self.retry_after = retry_after
        self.errors = 0
        self._down_until = 0.0
        self._hit = REQUESTS.labels(name, "l2", "hit")
        self._miss = REQUESTS.labels(name, "l2", "miss")
        self._error = REQUESTS.labels(name, "l2", "error")

    @property
    def available(self) -> bool:
        """False while the tier is being skipped after a failure."""
        return time.monotonic() >= self._down_until

    def _failed(self, action: str, exc: BaseException) -> None:
        self.errors += 1
        self._error.inc()
        if self.available:
            log.warning("L2 %s failed, serving without it for %.0fs: %r", action, self.retry_after, exc)
        self._down_until = time.monotonic() + self.retry_after

    async def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        """Values or None; None for all keys when the store fails."""
        if not self.available:
            self._error.inc(len(keys))
            return [None] * len(keys)
        try:
            values = await asyncio.wait_for(self.store.aget_many(keys), self.timeout)
        except Exception as exc:  # any failure of the shared tier is a miss, never a failed request
            self._failed("read", exc)
            return [None] * len(keys)
        hits = sum(v is not None for v in values)
        if hits:
            self._hit.inc(hits)
        if hits < len(values):
            self._miss.inc(len(values) - hits)
        return values

    async def get(self, key: bytes) -> bytes | None:
        return (await self.get_many([key]))[0]

    async def put_many(self, items: dict[bytes, bytes], ttl: float | None) -> bool:
        """Store items; False (logged, counted) when the store failed."""
        if not self.available:
            return False
        try:
            await asyncio.wait_for(self.store.aset_many(items, ttl), self.timeout)
        except Exception as exc:
            self._failed("write", exc)
            return False
        return True

    def purge_prefix(self, prefix: bytes) -> int:
        """Delete every key with ``prefix`` (blocking: a scan); errors propagate to the caller."""
        keys = list(self.store.scan(prefix))
        removed = 0
        for start in range(0, len(keys), 1000):
            removed += self.store.delete(keys[start : start + 1000])
        return removed

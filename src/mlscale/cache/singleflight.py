"""Single-flight: concurrent identical requests share one computation.

The computation runs as its own task and every caller awaits it through ``asyncio.shield``, so a
caller that goes away (client disconnect, deadline) cancels only its own wait, never the answer
the others are waiting for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


def _retrieve(task: asyncio.Task) -> None:
    # Mark a failure as seen even when every waiter was cancelled (no "never retrieved" warning).
    if not task.cancelled():
        task.exception()


class SingleFlight(Generic[T]):
    """``await flight.run(key, make)`` -> (result, leader): ``leader`` is False for callers that waited."""

    def __init__(self) -> None:
        self._inflight: dict[bytes, asyncio.Task[T]] = {}

    def __len__(self) -> int:
        return len(self._inflight)

    async def run(self, key: bytes, make: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        task = self._inflight.get(key)
        if task is not None:
            return await asyncio.shield(task), False
        task = asyncio.ensure_future(make())
        self._inflight[key] = task

        def done(t: asyncio.Task[T]) -> None:
            if self._inflight.get(key) is t:
                del self._inflight[key]
            _retrieve(t)

        task.add_done_callback(done)
        return await asyncio.shield(task), True

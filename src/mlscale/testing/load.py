"""Closed-loop load for tests and benchmarks: ``concurrency`` clients, each sending its next request
as soon as its last one is answered, bounded in count and in time.

It runs its own event loop on a thread, so the caller stays free to kill hosts and watch the
gateway meanwhile. Every request is kept as an ``Outcome`` (when it started and ended, its status,
0 for no answer at all), so a test can ask afterwards what happened in any window of time.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request: ``time.monotonic()`` at start and end, and the status (0: no answer)."""

    started: float
    ended: float
    status: int

    @property
    def ok(self) -> bool:
        return self.status == 200


class ClosedLoop:
    """``with ClosedLoop(url, body, concurrency=4, max_requests=10_000, max_seconds=30) as load:``.

    POSTs ``body`` (JSON) to ``url``; ``outcomes`` grows as answers come; leaving the block (or
    ``stop()``) ends the load and waits for the requests in flight.
    """

    def __init__(
        self,
        url: str,
        body: bytes,
        *,
        concurrency: int,
        max_requests: int,
        max_seconds: float,
        timeout: float = 10.0,
    ) -> None:
        if concurrency < 1 or max_requests < 1 or max_seconds <= 0:
            raise ValueError("concurrency and max_requests must be at least 1, max_seconds positive")
        self.url, self.body = url, body
        self.concurrency, self.max_requests, self.max_seconds = concurrency, max_requests, max_seconds
        self.timeout = timeout
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="mlscale-load", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> ClosedLoop:
        self._thread.start()
        return self

    def stop(self) -> list[Outcome]:
        self._stop.set()
        self._thread.join(self.timeout + 5)
        if self.error is not None:
            raise RuntimeError(f"the load generator failed: {self.error!r}") from self.error
        return self.outcomes

    def __enter__(self) -> ClosedLoop:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def ok_count(self) -> int:
        return sum(1 for o in list(self.outcomes) if o.ok)

    def wait_ok(self, count: int, timeout: float) -> None:
        """Until ``count`` requests were answered 200 (polled; the load has no event to wait on)."""
        deadline = time.monotonic() + timeout
        while self.ok_count() < count:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise TimeoutError(f"only {self.ok_count()} of {count} requests answered in {timeout:.0f}s")
            time.sleep(0.05)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported by stop()
            self.error = exc

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        headers = {"content-type": "application/json"}
        end = time.monotonic() + self.max_seconds
        async with httpx.AsyncClient(timeout=self.timeout, limits=limits, headers=headers) as client:

            async def client_loop() -> None:
                while not self._stop.is_set() and len(self.outcomes) < self.max_requests and time.monotonic() < end:
                    started = time.monotonic()
                    try:
                        status = (await client.post(self.url, content=self.body)).status_code
                    except httpx.HTTPError:
                        status = 0
                    self.outcomes.append(Outcome(started, time.monotonic(), status))

            await asyncio.gather(*(client_loop() for _ in range(self.concurrency)))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]

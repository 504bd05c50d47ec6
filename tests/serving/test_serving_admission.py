"""Overload control: refuse by expected queue delay, serve newest first under sustained overload.

The batcher takes a clock, so these tests step time by hand: no sleeps, no timing figures.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from serving_support import RunningServer

from mlscale.errors import Overloaded
from mlscale.serving.admission import QueueDelayAdmission
from mlscale.serving.batching import AdaptiveBatcher


def test_a_request_that_would_wait_past_the_target_is_refused():
    admission = QueueDelayAdmission(target=0.05, interval=0.1)
    assert not admission.refuses(10_000, 1)  # no drain rate measured yet: nothing to judge by
    admission.on_drained(0, 0.0)
    admission.on_drained(100, 1.0)  # 100 rows/s
    assert admission.drain_rate == pytest.approx(100)
    assert not admission.refuses(4, 1)  # 40 ms of backlog
    assert admission.refuses(6, 1)  # 60 ms
    assert not admission.refuses(6, 64)  # below one full batch the model would only idle
    assert admission.retry_after(6) == 1
    assert admission.retry_after(450) == 5  # scaled to the backlog's drain time


def test_overload_starts_only_after_an_interval_above_the_target():
    admission = QueueDelayAdmission(target=0.05, interval=0.1)
    admission.on_take(0.2, now=10.0)
    assert not admission.overloaded  # a burst: served in order
    admission.on_take(0.2, now=10.0625)
    assert not admission.overloaded
    admission.on_take(0.2, now=10.125)
    assert admission.overloaded
    admission.on_take(0.01, now=10.25)
    assert not admission.overloaded
    admission.on_take(0.2, now=10.5)
    admission.on_take(0.2, now=10.75)
    assert admission.overloaded
    admission.on_idle()  # an empty queue is never overloaded
    assert not admission.overloaded


class SteppedModel:
    """Runs one call per release, recording the inputs it saw; the test steps the clock between."""

    def __init__(self) -> None:
        self.seen: list[float] = []
        self.entered = threading.Semaphore(0)
        self.go = threading.Semaphore(0)

    def __call__(self, inputs, outputs=None):
        self.seen.extend(float(v) for v in inputs["x"][:, 0])
        self.entered.release()
        if not self.go.acquire(timeout=5):
            raise RuntimeError("the test never released the model")
        return {"y": inputs["x"]}

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.acquire, True, 5), "the model was not called"


def test_sustained_overload_serves_the_newest_first_and_refuses_stale_requests():
    model = SteppedModel()
    now = [0.0]
    shed: list[str] = []

    def submit(batcher: AdaptiveBatcher, value: float) -> asyncio.Future:
        return asyncio.ensure_future(batcher.submit({"x": np.full((1, 1), value)}))

    async def step(to: float) -> None:
        """Let the running call return at time ``to`` and wait for the next call to start."""
        now[0] = to
        model.go.release()
        await model.wait_entered()

    async def scenario():
        batcher = AdaptiveBatcher(
            model,
            max_batch_size=1,
            admission=QueueDelayAdmission(target=0.05, interval=0.1),
            on_shed=shed.append,
            clock=lambda: now[0],
        )
        first = submit(batcher, 0)
        await model.wait_entered()
        old = [submit(batcher, v) for v in (1, 2, 3)]  # queued at t=0
        await asyncio.sleep(0)
        await step(0.001)  # 1 taken at once: the queue drains fast
        await step(0.2)  # 2 taken 200 ms old: above target, but a burst until an interval passes
        now[0] = 0.35
        fresh = [submit(batcher, v) for v in (4, 5)]  # one request ahead: admitted at the door
        await asyncio.sleep(0)
        await step(0.35)  # above target for 150 ms: overloaded, newest first
        await step(0.35)
        now[0] = 0.35
        model.go.release()  # 3 is now stale: refused, never run
        results = await asyncio.gather(first, *old, *fresh, return_exceptions=True)
        await batcher.close()
        return results

    results = asyncio.run(scenario())
    assert model.seen == [0, 1, 2, 5, 4]  # in order while a burst, then newest first
    refused = [r for r in results if isinstance(r, Overloaded)]
    assert results[3] is refused[0] and len(refused) == 1
    assert "waited over 50 ms" in str(refused[0])
    assert shed == ["queue_timeout"]


def test_admission_refuses_before_the_body_is_read(model_repository):
    """A malformed body to an overloaded model answers 503, not 400: the refusal came first."""
    server = RunningServer(model_repository, workers=1)
    try:
        _refuse_malformed_body_while_full(server)
    finally:
        server.stop()


def _refuse_malformed_body_while_full(server: RunningServer) -> None:
    slow = {"inputs": [{"name": "ms", "shape": [1], "datatype": "FP32", "data": [1500]}]}
    gauge = 'mlscale_inflight_requests{model="slow"}'

    def inflight() -> float:
        for line in httpx.get(server.url + "/metrics").text.splitlines():
            if line.startswith(gauge):
                return float(line.split()[-1])
        return 0.0

    def call(_):
        return httpx.post(server.url + "/v2/models/slow/infer", json=slow, timeout=30)

    with ThreadPoolExecutor(3) as pool:
        running = [pool.submit(call, i) for i in range(3)]  # one runs, two fill the queue of 2
        for _ in range(500):
            if inflight() >= 3:
                break
        assert inflight() >= 3
        response = httpx.post(server.url + "/v2/models/slow/infer", content=b"{not json", timeout=30)
        statuses = [f.result().status_code for f in running]
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) >= 1
    assert statuses.count(200) >= 1
    metrics = httpx.get(server.url + "/metrics").text
    assert 'mlscale_shed_requests_total{model="slow"' in metrics


def test_a_light_tenant_is_admitted_and_rides_the_next_batch_past_a_heavy_tenants_backlog():
    """Tenant A floods the queue past the delay target; tenant B's one request is still admitted
    (A's next one is refused), and the next batch holds B's request beside A's oldest ones."""
    model = SteppedModel()
    now = [0.0]

    def submit(batcher: AdaptiveBatcher, value: float, tenant: str) -> asyncio.Future:
        return asyncio.ensure_future(batcher.submit({"x": np.full((1, 1), value)}, tenant=tenant))

    async def scenario():
        admission = QueueDelayAdmission(target=0.05, interval=10.0)
        batcher = AdaptiveBatcher(model, max_batch_size=4, admission=admission, clock=lambda: now[0])
        first = submit(batcher, 0, "a")
        await model.wait_entered()
        backlog = [submit(batcher, v, "a") for v in range(1, 13)]  # 12 rows of A queued
        await asyncio.sleep(0)
        admission.drain_rate = 100.0  # 12 rows = 120 ms of waiting: past the 50 ms target
        with pytest.raises(Overloaded):
            batcher.admit("a")
        with pytest.raises(Overloaded):
            batcher.admit(None)  # a caller without a tenant is judged on the whole queue
        batcher.admit("b")  # B holds nothing: under its share
        light = submit(batcher, 100, "b")
        await asyncio.sleep(0)
        model.go.release()  # the first call returns; the next batch forms
        await model.wait_entered()
        second = list(model.seen[1:])
        for _ in range(3):  # A's other 9 rows: batches of 4, 4 and 1
            model.go.release()
            await model.wait_entered()
        model.go.release()
        await asyncio.gather(first, light, *backlog)
        await batcher.close()
        return second

    second = asyncio.run(scenario())
    assert second == [1, 2, 100, 3]  # A capped at 2 of 4 rows until B was in, then filled in order
    assert sorted(model.seen) == [0, *range(1, 13), 100]


def test_one_tenant_alone_is_batched_in_arrival_order_as_before():
    model = SteppedModel()

    async def scenario():
        batcher = AdaptiveBatcher(model, max_batch_size=4)
        first = asyncio.ensure_future(batcher.submit({"x": np.full((1, 1), 0.0)}, tenant="a"))
        await model.wait_entered()
        rest = [
            asyncio.ensure_future(batcher.submit({"x": np.full((1, 1), float(v))}, tenant="a")) for v in range(1, 9)
        ]
        await asyncio.sleep(0)
        for _ in range(2):  # two batches of 4
            model.go.release()
            await model.wait_entered()
        model.go.release()
        await asyncio.gather(first, *rest)
        await batcher.close()

    asyncio.run(scenario())
    assert model.seen == [float(v) for v in range(9)]

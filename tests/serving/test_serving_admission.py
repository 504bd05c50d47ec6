"""Overload control: wait at the door for room in the queue, newest first once the door is old.

The batcher takes a clock, so these tests step time by hand: no sleeps, no timing figures.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from serving_support import RunningServer

from mlscale.errors import DeadlineExceeded, Overloaded
from mlscale.serving.admission import QueueDelayAdmission
from mlscale.serving.batching import AdaptiveBatcher


def test_the_queue_holds_what_drains_within_the_target():
    admission = QueueDelayAdmission(target=0.05)
    assert admission.room(8) == 8  # no drain rate measured yet: one full batch
    admission.on_drained(0, 0.0)
    admission.on_drained(1_000, 1.0)  # 1,000 rows/s
    assert admission.drain_rate == pytest.approx(1_000)
    assert admission.room(8) == pytest.approx(50)  # 50 ms worth
    assert admission.room(64) == 64  # never less than one full batch
    assert admission.expected_wait(500) == pytest.approx(0.5)
    assert admission.retry_after(4_500) == 5  # scaled to the backlog's drain time
    assert admission.retry_after(10) == 1


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


def test_requests_wait_at_the_door_and_the_newest_goes_first_once_the_oldest_waited_past_the_target():
    model = SteppedModel()
    now = [0.0]

    def submit(batcher: AdaptiveBatcher, value: float) -> asyncio.Future:
        return asyncio.ensure_future(batcher.submit({"x": np.full((1, 1), value)}))

    async def step(to: float) -> None:
        """Let the running call return at time ``to`` and wait for the next call to start."""
        now[0] = to
        model.go.release()
        await model.wait_entered()

    async def settle() -> None:
        for _ in range(5):  # submit() reaches the queue or the door within a few loop turns
            await asyncio.sleep(0)

    async def scenario():
        batcher = AdaptiveBatcher(
            model,
            max_batch_size=1,
            admission=QueueDelayAdmission(target=0.05, max_wait=30),
            clock=lambda: now[0],
        )
        first = submit(batcher, 0)
        await model.wait_entered()
        now[0] = 0.46
        early = [submit(batcher, v) for v in (1, 2, 3)]  # 1 fills the queue, 2 and 3 wait at the door
        await settle()
        assert batcher.queued == 1 and len(batcher._door) == 2
        now[0] = 0.48
        late = [submit(batcher, v) for v in (4, 5)]  # at the door too, behind 2 and 3
        await settle()
        await step(0.5)  # 1 runs (2 rows/s: room for one); the door's oldest waited 40 ms: 2 goes in
        await settle()
        await step(1.0)  # 2 runs; the oldest (3) waited 540 ms: overload, the newest (5) goes in
        await settle()
        await step(1.0)  # 5 runs; then 4, then 3
        await settle()
        await step(1.0)
        await settle()
        await step(1.0)
        model.go.release()
        results = await asyncio.gather(first, *early, *late)
        await batcher.close()
        return results

    results = asyncio.run(scenario())
    assert model.seen == [0, 1, 2, 5, 4, 3]
    assert [float(r["y"][0, 0]) for r in results] == [0, 1, 2, 3, 4, 5]


def test_a_request_without_room_within_max_wait_is_refused_and_one_past_its_deadline_answers_504():
    model = SteppedModel()

    async def scenario():
        batcher = AdaptiveBatcher(model, max_batch_size=1, admission=QueueDelayAdmission(max_wait=0.05))
        first = asyncio.ensure_future(batcher.submit({"x": np.zeros((1, 1))}))
        await model.wait_entered()
        queued = asyncio.ensure_future(batcher.submit({"x": np.ones((1, 1))}))  # fills the queue
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match=r"no room in its queue within 0\.05 s") as refused:
            await batcher.admit()
        with pytest.raises(DeadlineExceeded):
            await batcher.admit(deadline=time.monotonic() + 0.01)
        model.go.release()
        await model.wait_entered()
        model.go.release()
        await asyncio.gather(first, queued)
        await batcher.close()
        return refused.value

    assert asyncio.run(scenario()).retry_after >= 1


def test_admission_refuses_before_the_body_is_read(model_repository):
    """A malformed body to an overloaded model answers 503, not 400: the refusal came first."""
    server = RunningServer(model_repository, workers=1)
    try:
        _refuse_malformed_body_while_full(server)
    finally:
        server.stop()


def _refuse_malformed_body_while_full(server: RunningServer) -> None:
    slow = {"inputs": [{"name": "ms", "shape": [1], "datatype": "FP32", "data": [3000]}]}
    gauge = 'mlscale_inflight_requests{model="slow"}'

    def inflight() -> float:
        for line in httpx.get(server.url + "/metrics").text.splitlines():
            if line.startswith(gauge):
                return float(line.split()[-1])
        return 0.0

    def call(_):
        return httpx.post(server.url + "/v2/models/slow/infer", json=slow, timeout=30)

    with ThreadPoolExecutor(2) as pool:
        running = [pool.submit(call, i) for i in range(2)]  # one runs, one fills the queue
        for _ in range(100):
            if inflight() >= 2:
                break
        assert inflight() >= 2
        # No room for 3 s, more than max_queue_wait (1 s): refused at the door, body never decoded.
        response = httpx.post(server.url + "/v2/models/slow/infer", content=b"{not json", timeout=30)
        statuses = [f.result().status_code for f in running]
    assert response.status_code == 503, response.text
    assert "no room in its queue" in response.json()["error"]
    assert int(response.headers["retry-after"]) >= 1
    assert statuses == [200, 200]
    metrics = httpx.get(server.url + "/metrics").text
    assert 'mlscale_shed_requests_total{model="slow",reason="admission",version="1"}' in metrics


def test_a_light_tenant_rides_the_next_batch_past_a_heavy_tenants_queued_backlog():
    """Tenant A queued 12 rows before tenant B's one: the next batch of 4 takes at most an equal
    share (2) from A until B's request is in, then fills up in arrival order."""
    model = SteppedModel()
    now = [0.0]

    def submit(batcher: AdaptiveBatcher, value: float, tenant: str) -> asyncio.Future:
        return asyncio.ensure_future(batcher.submit({"x": np.full((1, 1), value)}, tenant=tenant))

    async def scenario():
        admission = QueueDelayAdmission(target=0.05, max_wait=30)
        batcher = AdaptiveBatcher(model, max_batch_size=4, admission=admission, clock=lambda: now[0])
        first = submit(batcher, 0, "a")
        await model.wait_entered()
        admission.drain_rate = 1_000.0  # room for 50 rows: everything below queues, nothing waits at the door
        backlog = [submit(batcher, v, "a") for v in range(1, 13)]
        light = submit(batcher, 100, "b")
        for _ in range(5):
            await asyncio.sleep(0)
        assert batcher.queued == 13 and not batcher._door
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
    assert second == [1, 2, 100, 3]  # in arrival order it would be [1, 2, 3, 4]
    assert sorted(model.seen) == [0, *range(1, 13), 100]


def test_at_the_door_a_tenant_under_its_share_gets_room_before_a_heavy_tenants_older_waiters():
    """One row of room per take; A's requests wait at the door before B's two. Room alternates
    between the tenants instead of going to all of A's first."""
    model = SteppedModel()

    def submit(batcher: AdaptiveBatcher, value: float, tenant: str) -> asyncio.Future:
        return asyncio.ensure_future(batcher.submit({"x": np.full((1, 1), value)}, tenant=tenant))

    async def settle() -> None:
        for _ in range(5):
            await asyncio.sleep(0)

    async def scenario():
        admission = QueueDelayAdmission(target=0.05, max_wait=30)
        # The clock stands still: no door waiter is ever stale, so without tenants the door is FIFO.
        batcher = AdaptiveBatcher(model, max_batch_size=1, admission=admission, clock=lambda: 0.0)
        first = submit(batcher, 0, "a")
        await model.wait_entered()
        heavy = [submit(batcher, v, "a") for v in (1, 2, 3, 4)]  # 1 queues, 2, 3 and 4 wait at the door
        await settle()
        light = [submit(batcher, v, "b") for v in (100, 101)]
        await settle()
        assert batcher.queued == 1 and len(batcher._door) == 5
        for _ in range(6):
            model.go.release()
            await model.wait_entered()
        model.go.release()
        await asyncio.gather(first, *heavy, *light)
        await batcher.close()

    asyncio.run(scenario())
    # FIFO would be [0, 1, 2, 3, 4, 100, 101].
    assert model.seen == [0, 1, 2, 100, 3, 101, 4]


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

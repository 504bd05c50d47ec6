"""Adaptive batching: joined requests give exactly the unbatched answers; a bad one fails alone."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from mlscale.errors import DeadlineExceeded, InvalidInput, Overloaded
from mlscale.serving.admission import QueueDelayAdmission
from mlscale.serving.batching import AdaptiveBatcher, InferenceFailed


class RecordingModel:
    """Doubles its input after a short pause, remembering the batch sizes it saw."""

    def __init__(self, pause: float = 0.005) -> None:
        self.batches: list[int] = []
        self.pause = pause

    def __call__(self, inputs, outputs=None):
        x = inputs["x"]
        self.batches.append(len(x))
        if (x < 0).any():
            raise ValueError("negative values are not allowed")
        time.sleep(self.pause)
        return {"y": x * 2.0 + 1.0, "rows": np.arange(len(x))}


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_are_joined_and_split_back_exactly():
    model = RecordingModel()

    async def scenario():
        batcher = AdaptiveBatcher(model, max_batch_size=64, max_delay=0.01)
        rng = np.random.default_rng(1)
        requests = [rng.uniform(0, 10, size=(int(rng.integers(1, 4)), 3)) for _ in range(40)]
        results = await asyncio.gather(*(batcher.submit({"x": r}) for r in requests))
        await batcher.close()
        return requests, results

    requests, results = run(scenario())
    for request, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result["y"], request * 2.0 + 1.0)
        assert len(result["rows"]) == len(request)
    assert max(model.batches) > 1, "no requests were joined"
    assert sum(model.batches) == sum(len(r) for r in requests)
    assert all(size <= 64 for size in model.batches)


def test_one_bad_request_fails_alone():
    model = RecordingModel()

    async def scenario():
        batcher = AdaptiveBatcher(model, max_batch_size=64, max_delay=0.02)
        inputs = [np.full((1, 2), float(i)) for i in range(10)]
        inputs[4] = -inputs[4] - 1
        results = await asyncio.gather(*(batcher.submit({"x": x}) for x in inputs), return_exceptions=True)
        await batcher.close()
        return inputs, results

    inputs, results = run(scenario())
    assert isinstance(results[4], InferenceFailed)
    assert "negative values" in str(results[4])
    for i, result in enumerate(results):
        if i != 4:
            np.testing.assert_array_equal(result["y"], inputs[i] * 2.0 + 1.0)


def test_requests_with_different_feature_shapes_never_share_a_batch():
    model = RecordingModel(pause=0)

    async def scenario():
        batcher = AdaptiveBatcher(model, max_batch_size=64, max_delay=0.01, inline=True)
        a = batcher.submit({"x": np.ones((1, 2))})
        b = batcher.submit({"x": np.ones((1, 5))})
        results = await asyncio.gather(a, b)
        await batcher.close()
        return results

    first, second = run(scenario())
    assert first["y"].shape == (1, 2)
    assert second["y"].shape == (1, 5)


class BlockedModel:
    """Holds every call until ``release`` is set; ``entered`` tells a call has started."""

    def __init__(self) -> None:
        self.release, self.entered = threading.Event(), threading.Event()

    def __call__(self, inputs, outputs=None):
        self.entered.set()
        self.release.wait(5)
        return {"y": inputs["x"]}

    async def running(self, batcher: AdaptiveBatcher) -> asyncio.Future:
        """A first request, once it is in the model (so the queue is empty again)."""
        first = asyncio.ensure_future(batcher.submit({"x": np.ones((1, 1))}))
        while not self.entered.is_set():
            await asyncio.sleep(0.001)
        return first


def test_a_burst_far_past_the_queue_bound_waits_at_the_door_and_is_all_served():
    """A request refused at once is sent again at once by a client in a closed loop: past the
    queue's bound, requests wait at the door (up to max_queue_wait) instead of being refused."""
    blocked = BlockedModel()

    async def scenario():
        admission = QueueDelayAdmission(max_wait=30)
        batcher = AdaptiveBatcher(blocked, max_batch_size=1, max_queue_size=2, admission=admission)
        running = await blocked.running(batcher)
        burst = [asyncio.ensure_future(batcher.submit({"x": np.full((1, 1), i)})) for i in range(50)]
        await asyncio.sleep(0)
        assert not any(b.done() for b in burst)  # none refused: 1 queued, 49 at the door
        blocked.release.set()
        answers = await asyncio.gather(running, *burst)
        await batcher.close()
        return answers

    answers = run(scenario())
    assert sorted(float(a["y"][0, 0]) for a in answers[1:]) == [float(i) for i in range(50)]


def test_past_the_door_bound_a_request_is_refused_at_once_and_the_waiting_ones_are_served():
    blocked = BlockedModel()

    async def scenario():
        admission = QueueDelayAdmission(max_wait=30)
        batcher = AdaptiveBatcher(blocked, max_batch_size=1, max_queue_size=2, max_waiting=2, admission=admission)
        running = await blocked.running(batcher)
        waiting = [asyncio.ensure_future(batcher.submit({"x": np.ones((1, 1))})) for _ in range(3)]
        await asyncio.sleep(0)  # one queued (room for one batch), two at the door: its bound
        with pytest.raises(Overloaded, match="already wait for room"):
            await batcher.submit({"x": np.ones((1, 1))})
        blocked.release.set()
        await asyncio.gather(running, *waiting)
        await batcher.close()

    run(scenario())


def test_deadline_passing_while_queued_answers_deadline_exceeded():
    release = threading.Event()

    def blocked(inputs, outputs=None):
        release.wait(5)
        return {"y": inputs["x"]}

    async def scenario():
        batcher = AdaptiveBatcher(blocked, max_batch_size=1)
        first = asyncio.ensure_future(batcher.submit({"x": np.ones((1, 1))}))
        with pytest.raises(DeadlineExceeded):
            await batcher.submit({"x": np.ones((1, 1))}, deadline=time.monotonic() + 0.05)
        release.set()
        await first
        await batcher.close()

    run(scenario())


def test_close_finishes_queued_requests():
    model = RecordingModel()

    async def scenario():
        batcher = AdaptiveBatcher(model, max_batch_size=1)
        pending = [asyncio.ensure_future(batcher.submit({"x": np.full((1, 1), i)})) for i in range(5)]
        await asyncio.sleep(0)
        await batcher.close()
        return await asyncio.gather(*pending)

    results = run(scenario())
    assert [float(r["y"][0, 0]) for r in results] == [i * 2.0 + 1.0 for i in range(5)]


def test_a_request_still_reading_its_body_when_the_version_starts_unloading_is_served():
    """A request let in while another's batch ran, whose body arrives after the queue emptied and
    the version began to close (an alias moved), is still answered: its room was not forgotten."""
    model = RecordingModel(pause=0)

    async def scenario():
        batcher = AdaptiveBatcher(model, max_batch_size=4)
        await batcher.admit()  # A
        await batcher.admit()  # B, still reading its body
        first = await batcher.submit({"x": np.full((1, 1), 1.0)}, admitted=True)
        for _ in range(5):  # the runner goes round on the empty queue
            await asyncio.sleep(0)
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.sleep(0)
        second = await batcher.submit({"x": np.full((1, 1), 2.0)}, admitted=True)
        await closing
        return first, second

    first, second = run(scenario())
    assert float(first["y"][0, 0]) == 3.0 and float(second["y"][0, 0]) == 5.0


def test_a_request_cancelled_after_being_let_in_gives_its_room_back():
    """A client that leaves just as it is let in through the door must not keep a place for good."""
    model = RecordingModel(pause=0)

    async def scenario():
        batcher = AdaptiveBatcher(model, max_batch_size=1, admission=QueueDelayAdmission(max_wait=5))
        await batcher.admit()  # takes the one place
        waiting = asyncio.ensure_future(batcher.admit())
        await asyncio.sleep(0)
        batcher.release()  # the place frees: the waiter is let in ...
        waiting.cancel()  # ... and cancelled before it runs again
        with pytest.raises(asyncio.CancelledError):
            await waiting
        # The place is free again: a new request gets in at once.
        await asyncio.wait_for(batcher.admit(), 1)
        batcher.release()
        await batcher.close()

    run(scenario())


def test_a_request_let_in_whose_inputs_are_malformed_hands_its_room_to_a_waiter():
    model = RecordingModel(pause=0)

    async def scenario():
        batcher = AdaptiveBatcher(model, max_batch_size=1, admission=QueueDelayAdmission(max_wait=30))
        await batcher.admit()  # the one place
        waiter = asyncio.ensure_future(batcher.admit())
        await asyncio.sleep(0)
        assert not waiter.done()
        with pytest.raises(InvalidInput, match="batch axis"):
            await batcher.submit({"x": np.ones((2, 1)), "z": np.ones((3, 1))}, admitted=True)
        await asyncio.wait_for(waiter, 1)  # let in at once, not after max_wait
        batcher.release()
        await batcher.close()

    run(scenario())

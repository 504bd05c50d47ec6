"""Token buckets: the in-process and the Redis (Lua) bucket both match a plain reference bucket,
and the Redis one never grants a token twice under concurrent callers."""

from __future__ import annotations

import asyncio
import random
import time
import uuid

import pytest

from mlscale.auth.quotas import LocalBuckets, Quotas, RedisBuckets, retry_after
from mlscale.errors import RateLimited


def reference(events: list[float], rate: float, burst: float) -> list[bool]:
    """The textbook bucket, tick by tick: which requests at these times are allowed."""
    tokens, last, out = burst, events[0], []
    for t in events:
        tokens = min(burst, tokens + (t - last) * rate)
        last = t
        out.append(tokens >= 1)
        if tokens >= 1:
            tokens -= 1
    return out


def _arrivals(seed: int, count: int = 600) -> list[float]:
    rng = random.Random(seed)
    t, times = 1000.0, []
    for _ in range(count):  # bursts and pauses
        t += rng.choice([0.0, 0.001, 0.004, 0.02, 0.3]) * rng.random()
        times.append(round(t, 6))
    return times


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_local_bucket_matches_the_reference(seed):
    times = _arrivals(seed)
    buckets = LocalBuckets()
    got = [buckets.take("t", 50.0, 10.0, now=t) == 0.0 for t in times]
    assert got == reference(times, 50.0, 10.0)
    assert 0 < sum(got) < len(got)


@pytest.mark.parametrize("seed", [4, 5])
async def test_redis_bucket_matches_the_reference(redis_url, seed):
    times = _arrivals(seed)
    buckets = RedisBuckets(redis_url, prefix=f"test-quota-{uuid.uuid4().hex}:")
    try:
        got = [await buckets.atake("t", 50.0, 10.0, now_us=round(t * 1e6)) == 0.0 for t in times]
    finally:
        await buckets.aclose()
    assert got == reference(times, 50.0, 10.0)


async def test_redis_bucket_grants_each_token_once_under_concurrency(redis_url):
    """200 concurrent callers at one instant on a bucket of 37: exactly 37 get through."""
    prefix = f"test-quota-{uuid.uuid4().hex}:"
    # A generous pool timeout: 200 callers queue for 32 connections, and a busy test machine is slow.
    clients = [RedisBuckets(redis_url, prefix=prefix, timeout=10.0) for _ in range(4)]
    try:
        waits = await asyncio.gather(*(clients[i % 4].atake("t", 1.0, 37.0, now_us=5_000_000) for i in range(200)))
    finally:
        for c in clients:
            await c.aclose()
    assert sum(w == 0.0 for w in waits) == 37
    assert all(w == pytest.approx(1.0) for w in waits if w)


async def test_redis_bucket_uses_the_servers_clock_and_refills(redis_url):
    buckets = RedisBuckets(redis_url, prefix=f"test-quota-{uuid.uuid4().hex}:")
    try:
        started = time.monotonic()
        first = [await buckets.atake("t", 10.0, 5.0) for _ in range(5)]
        assert first == [0.0] * 5
        wait = await buckets.atake("t", 10.0, 5.0)
        assert 0 < wait <= 0.1
        await asyncio.sleep(0.25)  # 2.5 tokens' worth of refill
        granted = sum([await buckets.atake("t", 10.0, 5.0) == 0.0 for _ in range(5)])
        elapsed = time.monotonic() - started
        assert 2 <= granted <= min(5, int(elapsed * 10) + 1)
    finally:
        await buckets.aclose()


async def test_quota_refusal_is_429_with_whole_second_retry_after():
    quotas = Quotas(LocalBuckets(), rate=0.5, burst=1)
    await quotas.check("a")
    with pytest.raises(RateLimited) as refused:
        await quotas.check("a")
    assert refused.value.status == 429 and refused.value.retry_after == 2
    await quotas.check("b")  # another tenant has its own bucket
    for _ in range(5):  # a key's own limits override the defaults
        await quotas.check("c", rate=0.5, burst=5)
    with pytest.raises(RateLimited):
        await quotas.check("c", rate=0.5, burst=5)
    assert retry_after(0.001) == 1


async def test_unreachable_redis_fails_open_or_closed_as_configured():
    from mlscale.errors import ServiceUnavailable
    from mlscale.storage.localredis import free_port

    dead = f"redis://127.0.0.1:{free_port()}/0"
    await Quotas(RedisBuckets(dead, timeout=0.2), 1.0, 1.0, fail_open=True).check("a")
    with pytest.raises(ServiceUnavailable):
        await Quotas(RedisBuckets(dead, timeout=0.2), 1.0, 1.0, fail_open=False).check("a")

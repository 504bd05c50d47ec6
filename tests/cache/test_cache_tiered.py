"""The two-tier prediction cache: single-flight, L2 fills L1, TTLs, purges, and surviving a dead Redis
(a single server or one node of a Redis Cluster)."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from mlscale.cache import PredictionCache, TieredCache, prediction_key
from mlscale.storage.redis_store import RedisClusterKeyValue, RedisKeyValue
from mlscale.storage.sqlite import SQLiteKeyValue


def unique() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


class Model:
    """A stand-in for a model call that counts how often it ran."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls = 0
        self.delay = delay

    def __call__(self, answer: bytes):
        async def compute() -> bytes:
            self.calls += 1
            if self.delay:
                await asyncio.sleep(self.delay)
            return answer

        return compute


@pytest.fixture(params=["redis", "redis-cluster"])
def redis_l2(request, prefix: bytes):
    if request.param == "redis":
        store = RedisKeyValue(request.getfixturevalue("redis_url"), prefix=prefix)
    else:
        store = RedisClusterKeyValue(request.getfixturevalue("redis_cluster_url"), prefix=prefix)
    yield store
    store.delete(list(store.scan()))
    store.close()


def key(model: str, version: str, x: float) -> bytes:
    return prediction_key(model, version, {"x": np.array([x], dtype=np.float32)})


def test_hundred_identical_concurrent_requests_make_one_model_call() -> None:
    async def scenario() -> tuple[int, list[str]]:
        cache = PredictionCache(l1_max_bytes=1 << 20, ttl=60, name=unique())
        release = asyncio.Event()
        calls = 0

        async def compute() -> bytes:
            nonlocal calls
            calls += 1
            await release.wait()
            return b"answer"

        tasks = [asyncio.create_task(cache.get_or_compute(key("m", "1", 1.0), compute)) for _ in range(100)]
        while len(cache._flight) == 0:  # the leader has registered its computation
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        release.set()
        results = await asyncio.gather(*tasks)
        assert {value for value, _ in results} == {b"answer"}
        return calls, [source for _, source in results]

    calls, sources = asyncio.run(scenario())
    assert calls == 1
    assert sources.count("computed") == 1 and sources.count("shared") == 99


def test_a_failed_computation_reaches_every_waiter_and_is_not_cached() -> None:
    async def scenario() -> None:
        cache = TieredCache(l1_max_bytes=1 << 20, name=unique())
        calls = 0

        async def broken() -> bytes:
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.01)
            raise RuntimeError("model crashed")

        results = await asyncio.gather(*(cache.get_or_compute(b"k", broken) for _ in range(5)), return_exceptions=True)
        assert calls == 1 and all(isinstance(r, RuntimeError) for r in results)
        assert await cache.get_or_compute(b"k", Model()(b"ok")) == (b"ok", "computed")

    asyncio.run(scenario())


def test_a_cancelled_leader_does_not_cancel_the_shared_computation() -> None:
    async def scenario() -> None:
        cache = TieredCache(l1_max_bytes=1 << 20, name=unique())
        model = Model(delay=0.05)
        leader = asyncio.create_task(cache.get_or_compute(b"k", model(b"v")))
        await asyncio.sleep(0.01)
        follower = asyncio.create_task(cache.get_or_compute(b"k", model(b"v")))
        await asyncio.sleep(0.01)
        leader.cancel()
        assert await follower == (b"v", "shared")
        assert model.calls == 1

    asyncio.run(scenario())


def test_l2_hit_fills_l1_of_another_worker(redis_l2: RedisKeyValue) -> None:
    async def scenario() -> list[str]:
        name = unique()
        worker_a = PredictionCache(l1_max_bytes=1 << 20, ttl=60, l2=redis_l2, name=name)
        worker_b = PredictionCache(l1_max_bytes=1 << 20, ttl=60, l2=redis_l2, name=name)
        model = Model()
        k = key("iris", "1", 0.5)
        sources = [(await worker_a.get_or_compute(k, model(b"setosa")))[1]]
        await worker_a.drain()
        sources.append((await worker_b.get_or_compute(k, model(b"setosa")))[1])
        sources.append((await worker_b.get_or_compute(k, model(b"setosa")))[1])
        assert model.calls == 1
        hits = REGISTRY.get_sample_value("mlscale_cache_requests_total", {"cache": name, "tier": "l2", "result": "hit"})
        assert hits == 1
        await redis_l2.aclose()
        return sources

    assert asyncio.run(scenario()) == ["computed", "l2", "l1"]


def test_entries_expire_from_both_tiers_after_the_ttl(redis_l2: RedisKeyValue) -> None:
    async def scenario() -> None:
        cache = PredictionCache(l1_max_bytes=1 << 20, ttl=0.3, l2=redis_l2, name=unique())
        model = Model()
        k = key("m", "1", 1.0)
        await cache.get_or_compute(k, model(b"v"))
        await cache.drain()
        assert redis_l2.get(k) == b"v"
        assert (await cache.get_or_compute(k, model(b"v")))[1] == "l1"
        deadline = time.monotonic() + 5
        while redis_l2.get(k) is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert redis_l2.get(k) is None
        assert (await cache.get_or_compute(k, model(b"v")))[1] == "computed"
        assert model.calls == 2
        await redis_l2.aclose()

    asyncio.run(scenario())


def test_a_new_model_version_never_gets_the_old_versions_answer() -> None:
    async def scenario() -> None:
        cache = PredictionCache(l1_max_bytes=1 << 20, ttl=60, name=unique())
        assert await cache.get_or_compute(key("m", "1", 1.0), Model()(b"old")) == (b"old", "computed")
        assert await cache.get_or_compute(key("m", "2", 1.0), Model()(b"new")) == (b"new", "computed")
        assert await cache.get_or_compute(key("m", "1", 1.0), Model()(b"x")) == (b"old", "l1")

    asyncio.run(scenario())


def test_purge_removes_one_models_entries_from_both_tiers_and_other_workers(redis_l2: RedisKeyValue) -> None:
    async def scenario() -> None:
        name = unique()
        a = PredictionCache(l1_max_bytes=1 << 20, ttl=60, l2=redis_l2, name=name, purge_sync_interval=0.05)
        b = PredictionCache(l1_max_bytes=1 << 20, ttl=60, l2=redis_l2, name=name, purge_sync_interval=0.05)
        for i in range(3):
            await a.get_or_compute(key("iris", str(i), 1.0), Model()(b"v"))
        await a.get_or_compute(key("wine", "1", 1.0), Model()(b"w"))
        await a.drain()
        assert (await b.get_or_compute(key("iris", "0", 1.0), Model()(b"v")))[1] == "l2"
        assert await a.apurge("iris") == 6  # three in a's L1, three in L2
        assert (await a.get_or_compute(key("iris", "1", 1.0), Model()(b"v2")))[1] == "computed"
        assert (await a.get_or_compute(key("wine", "1", 1.0), Model()(b"w")))[1] == "l1"
        # Worker b drops its L1 copy once it sees the purge mark.
        deadline = time.monotonic() + 5
        source = "l1"
        while source == "l1" and time.monotonic() < deadline:
            await asyncio.sleep(0.06)
            value, source = await b.get_or_compute(key("iris", "0", 1.0), Model()(b"fresh"))
        assert (value, source) == (b"fresh", "computed")
        await a.drain()
        await b.drain()
        await redis_l2.aclose()

    asyncio.run(scenario())


def test_a_purge_during_a_computation_keeps_its_stale_answer_out() -> None:
    async def scenario() -> None:
        cache = PredictionCache(l1_max_bytes=1 << 20, ttl=60, name=unique())
        k = key("m", "1", 1.0)
        pending = asyncio.create_task(cache.get_or_compute(k, Model(delay=0.05)(b"stale")))
        await asyncio.sleep(0.01)
        cache.purge("m")
        assert await pending == (b"stale", "computed")
        assert (await cache.get_or_compute(k, Model()(b"fresh")))[1] == "computed"

    asyncio.run(scenario())


def test_sqlite_l2_is_shared_between_caches(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = SQLiteKeyValue(tmp_path / "cache.db")
        a = PredictionCache(l1_max_bytes=1 << 20, ttl=60, l2=store, name=unique())
        b = PredictionCache(l1_max_bytes=1 << 20, ttl=60, l2=SQLiteKeyValue(tmp_path / "cache.db"), name=unique())
        await a.get_or_compute(b"m\x001\x00k", Model()(b"v"))
        await a.drain()
        assert await b.get_or_compute(b"m\x001\x00k", Model()(b"other")) == (b"v", "l2")

    asyncio.run(scenario())


def serve_while_l2_dies(l2: RedisKeyValue, kill, name: str) -> None:
    """400 requests over 150 inputs, 32 at a time; ``kill`` breaks the L2 after the first 100 answers."""

    async def scenario() -> tuple[list[str], float, int]:
        cache = PredictionCache(l1_max_bytes=1 << 20, ttl=60, l2=l2, name=name, l2_timeout=0.3, l2_retry_after=30)
        model = Model(delay=0.002)
        sources: list[str] = []
        completed = asyncio.Event()
        killed = asyncio.Event()

        async def request(i: int) -> None:
            if i >= 150:
                await killed.wait()  # the rest of the traffic certainly meets a dead L2
            value, source = await cache.get_or_compute(key("m", "1", float(i % 150)), model(b"%d" % (i % 150)))
            assert value == b"%d" % (i % 150)
            sources.append(source)
            if len(sources) == 100:
                completed.set()

        async def killer() -> None:
            await completed.wait()
            await asyncio.to_thread(kill)  # the L2 dies while requests are in flight
            killed.set()

        started = time.monotonic()
        clients = [request(i) for i in range(400)]
        sem = asyncio.Semaphore(32)

        async def limited(coro) -> None:
            async with sem:
                await coro

        await asyncio.gather(killer(), *(limited(c) for c in clients))
        await cache.drain()
        await l2.aclose()
        return sources, time.monotonic() - started, model.calls

    sources, elapsed, calls = asyncio.run(scenario())
    assert len(sources) == 400  # every request answered, none failed
    assert set(sources) <= {"l1", "l2", "computed", "shared"}
    assert calls == 150  # L1 and single-flight keep working: each distinct input computed once
    assert elapsed < 5
    errors = REGISTRY.get_sample_value("mlscale_cache_requests_total", {"cache": name, "tier": "l2", "result": "error"})
    assert errors and errors >= 1


def test_requests_keep_being_answered_when_redis_dies_mid_traffic(start_redis) -> None:
    server = start_redis()
    serve_while_l2_dies(RedisKeyValue(server.url, timeout=0.2), server.stop, unique())


def test_requests_keep_being_answered_when_a_cluster_node_dies_mid_traffic(start_redis_cluster) -> None:
    cluster = start_redis_cluster()
    serve_while_l2_dies(RedisClusterKeyValue(cluster.url, timeout=0.2), cluster.nodes[1].stop, unique())


def test_l2_is_used_again_once_redis_comes_back(start_redis) -> None:
    server = start_redis()

    async def scenario() -> list[str]:
        l2 = RedisKeyValue(server.url, timeout=0.2)
        writer = PredictionCache(l1_max_bytes=1 << 20, ttl=60, l2=l2, name=unique(), l2_retry_after=0.2)
        server.stop()
        assert (await writer.get_or_compute(b"m\x001\x00a", Model()(b"a")))[1] == "computed"
        await writer.drain()
        assert not writer.l2.available
        server.start()  # same port, empty
        while not writer.l2.available:
            await asyncio.sleep(0.02)
        await writer.get_or_compute(b"m\x001\x00b", Model()(b"b"))
        await writer.drain()
        reader = PredictionCache(l1_max_bytes=1 << 20, ttl=60, l2=l2, name=unique())
        got = [(await reader.get_or_compute(b"m\x001\x00b", Model()(b"x")))[1]]
        await l2.aclose()
        return got

    assert asyncio.run(scenario()) == ["l2"]

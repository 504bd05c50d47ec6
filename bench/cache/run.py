"""Storage and cache micro-benchmark: the sharded store against one backend alone, and cache overheads.

Part 1, one run on the same data: get_many of 100 keys (100-byte values, 20,000 keys loaded) on
one SQLite file vs 4 SQLite shards, and on one Redis vs 4 Redis instances (private redis-servers
started here on free ports): blocking with the shards asked in turn, blocking with the shards asked
from a thread pool (the default), and asyncio (shards asked concurrently). Part 2: the prediction
cache's own cost per call: an L1 hit, an L2 hit over Redis
through redis.asyncio vs through asyncio.to_thread, and an L2 hit over SQLite, next to a bare
``await compute()``.
Run: `.venv/bin/python bench/cache/run.py` (add --quick for a short check on a busy machine).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from mlscale.cache import PredictionCache  # noqa: E402
from mlscale.storage import KeyValue  # noqa: E402
from mlscale.storage.base import KeyValue as BaseKeyValue  # noqa: E402
from mlscale.storage.localredis import LocalRedis  # noqa: E402
from mlscale.storage.redis_store import RedisKeyValue  # noqa: E402
from mlscale.storage.sharded import ShardedKeyValue  # noqa: E402
from mlscale.storage.sqlite import SQLiteKeyValue  # noqa: E402


class ThreadedRedis(RedisKeyValue):
    """RedisKeyValue whose async calls go through asyncio.to_thread (the base KeyValue default)."""

    aget_many = BaseKeyValue.aget_many
    aset_many = BaseKeyValue.aset_many


def timed(call: Callable[[], object], repeats: int) -> list[float]:
    """Microseconds per call."""
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        out.append((time.perf_counter() - started) * 1e6)
    return out


async def atimed(call: Callable[[], Awaitable[object]], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        await call()
        out.append((time.perf_counter() - started) * 1e6)
    return out


def summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def load(store: KeyValue, keys: list[bytes]) -> None:
    value = os.urandom(100)
    for start in range(0, len(keys), 1000):
        store.set_many({k: value for k in keys[start : start + 1000]})


def bench_stores(args: argparse.Namespace, folder: Path, servers: list[LocalRedis]) -> list[tuple]:
    keys = [f"user:{i}".encode() for i in range(args.keys)]
    batches = [keys[i * 100 % (len(keys) - 100) :][:100] for i in range(args.repeats)]
    one_sqlite = SQLiteKeyValue(folder / "one.db")
    four_sqlite = ShardedKeyValue({f"s{i}": SQLiteKeyValue(folder / f"s{i}.db") for i in range(4)})
    one_redis = RedisKeyValue(servers[0].url)
    four_redis = ShardedKeyValue({f"r{i}": RedisKeyValue(s.url) for i, s in enumerate(servers)})
    rows = []
    for label, store in (
        ("SQLite, 1 file", one_sqlite),
        ("SQLite, 4 shards", four_sqlite),
        ("Redis, 1 server", one_redis),
        ("Redis, 4 shards", four_redis),
    ):
        load(store, keys)
        it = iter(batches * 4)
        store.get_many(next(it))  # warm connections
        if isinstance(store, ShardedKeyValue):
            store.parallel = False
        blocking = summary(timed(lambda s=store, it=it: s.get_many(next(it)), args.repeats))
        threads = (float("nan"), float("nan"))
        if isinstance(store, ShardedKeyValue):
            store.parallel = True
            threads = summary(timed(lambda s=store, it=it: s.get_many(next(it)), args.repeats))

        async def run_async(s: KeyValue = store) -> tuple[float, float]:
            it2 = iter(batches * 2)
            await s.aget_many(next(it2))
            return summary(await atimed(lambda: s.aget_many(next(it2)), args.repeats))

        rows.append((label, *blocking, *threads, *asyncio.run(run_async())))
        store.close()
    return rows


async def bench_cache(args: argparse.Namespace, folder: Path, server: LocalRedis) -> list[tuple]:
    value = os.urandom(200)
    key = b"iris\x001\x00" + os.urandom(16)

    async def compute() -> bytes:
        return value

    rows = []
    bare = summary(await atimed(compute, args.repeats * 10))
    rows.append(("bare `await compute()`", *bare))
    cache = PredictionCache(l1_max_bytes=1 << 20, ttl=600, name="bench")
    await cache.get_or_compute(key, compute)
    rows.append(("L1 hit", *summary(await atimed(lambda: cache.get_or_compute(key, compute), args.repeats * 10))))
    for label, store in (
        ("L2 hit, Redis via redis.asyncio", RedisKeyValue(server.url)),
        ("L2 hit, Redis via asyncio.to_thread", ThreadedRedis(server.url)),
        ("L2 hit, SQLite via asyncio.to_thread", SQLiteKeyValue(folder / "l2.db")),
    ):
        store.set_many({key: value}, ttl=600)
        # l1_max_bytes=0 keeps L1 empty, so every call is an L1 miss answered by L2.
        l2_only = PredictionCache(l1_max_bytes=0, ttl=600, l2=store, name="bench")
        await l2_only.get_or_compute(key, compute)
        rows.append((label, *summary(await atimed(lambda c=l2_only: c.get_or_compute(key, compute), args.repeats))))
        if isinstance(store, RedisKeyValue):
            await store.aclose()
        store.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data, few repeats")
    args = parser.parse_args()
    args.keys = 2_000 if args.quick else 20_000
    args.repeats = 200 if args.quick else 5_000
    servers = [LocalRedis().start() for _ in range(4)]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            stores = bench_stores(args, Path(tmp), servers)
            cache = asyncio.run(bench_cache(args, Path(tmp), servers[0]))
    finally:
        for server in servers:
            server.stop()
    print(f"\n### get_many of 100 keys ({args.keys} keys loaded, {args.repeats} calls; microseconds)\n")
    print("| store | in turn p50 | in turn p99 | threads p50 | threads p99 | asyncio p50 | asyncio p99 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, *cells in stores:
        print(f"| {label} | " + " | ".join("-" if c != c else f"{c:.0f}" for c in cells) + " |")
    for kind, one, four in (("SQLite", stores[0], stores[1]), ("Redis", stores[2], stores[3])):
        print(
            f"\n{kind}: 4 shards / 1 backend, p50 ratio: shards in turn {four[1] / one[1]:.2f}x, "
            f"from threads {four[3] / one[1]:.2f}x, asyncio {four[5] / one[5]:.2f}x"
        )
    print("\n### Prediction cache cost per call (microseconds)\n")
    print("| path | p50 | p99 |")
    print("|---|---:|---:|")
    for label, p50, p99 in cache:
        print(f"| {label} | {p50:.1f} | {p99:.1f} |")
    bare, l1 = cache[0][1], cache[1][1]
    print(f"\nL1 hit adds {l1 - bare:.1f} us over a bare await (goal: under 10 us).")
    native, threaded = cache[2][1], cache[3][1]
    print(f"redis.asyncio vs asyncio.to_thread on the L1-miss path: {threaded / native:.2f}x (>1: native faster)")


if __name__ == "__main__":
    main()

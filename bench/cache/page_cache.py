"""What a smaller SQLite page cache costs the prediction cache's shared tier: inserts and reads.

A cache-shaped file per setting (300,000 keys of 200-byte answers), then alternating rounds of
20,000 inserts at new random keys (one per call, as answers arrive) and 20,000 single-key reads of
stored keys, each through one connection with the page cache under test. Medians of the rounds.
Why: the shared tier's page cache bounds a long-running server's memory (docs/operations.md), so
its size is chosen by what it costs per call, measured here.

    .venv/bin/python bench/cache/page_cache.py                 # 8 MiB against 2 MiB
    .venv/bin/python bench/cache/page_cache.py --kib 65536 2048 --rounds 5
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from mlscale.storage.sqlite import SQLiteKeyValue  # noqa: E402


def fill(path: Path, kib: int, rng: random.Random, keys: int) -> list[bytes]:
    """A file holding ``keys`` answers, written in batches as a warm cache would have them."""
    store = SQLiteKeyValue(path, page_cache_kib=kib)
    stored = [rng.randbytes(16) for _ in range(keys)]
    for i in range(0, keys, 5000):
        store.set_many({k: rng.randbytes(200) for k in stored[i : i + 5000]}, ttl=3600)
    store.close()
    return stored


def one_round(path: Path, kib: int, stored: list[bytes], rng: random.Random, calls: int) -> tuple[float, float]:
    """Microseconds per insert of a new key and per read of a stored key, on a fresh connection."""
    store = SQLiteKeyValue(path, page_cache_kib=kib)
    new = [rng.randbytes(16) for _ in range(calls)]
    start = time.perf_counter()
    for key in new:
        store.set_many({key: b"x" * 200}, ttl=3600)
    insert = (time.perf_counter() - start) / calls * 1e6
    stored.extend(new)
    sample = rng.sample(stored, calls)
    start = time.perf_counter()
    for key in sample:
        store.get_many([key])
    read = (time.perf_counter() - start) / calls * 1e6
    store.close()
    return insert, read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kib", type=int, nargs="+", default=[8192, 2048], help="page cache sizes to compare")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keys", type=int, default=300_000)
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    rng = random.Random(1)
    with tempfile.TemporaryDirectory(prefix="mlscale-page-cache-") as tmp:
        files = {kib: (Path(tmp) / f"cache-{kib}.db") for kib in args.kib}
        stored = {kib: fill(path, kib, rng, args.keys) for kib, path in files.items()}
        results: dict[int, list[tuple[float, float]]] = {kib: [] for kib in args.kib}
        for n in range(args.rounds):
            order = args.kib if n % 2 == 0 else list(reversed(args.kib))  # alternate: no order effect
            for kib in order:
                results[kib].append(one_round(files[kib], kib, stored[kib], rng, args.calls))
    for kib, rows in results.items():
        inserts, reads = [r[0] for r in rows], [r[1] for r in rows]
        print(
            f"page cache {kib / 1024:g} MiB: insert {statistics.median(inserts):.1f} us, "
            f"read {statistics.median(reads):.1f} us (median of {len(rows)} rounds of {args.calls:,})"
        )


if __name__ == "__main__":
    main()

"""A stream backfill on DuckDB and on Spark (local), and what the Python driver holds.

Data: E order events of U users over a day, one in twenty a client retry of an earlier event (same
id, same time), amounts as floats; the feature is 1-minute tumbling windows of count, sum and last
amount with ``dedup_key = "id"``, written offline (Parquet) and online (a SQLite file).

Each way runs in its own process, so its peak RSS is its own (Spark's JVM is a child process and
is not counted: the figure is the Python driver's):
- ``duckdb``: ``mlscale.streams.batch.backfill`` without Spark;
- ``spark-collect``: the windows computed by Spark and collected to the driver as Arrow, then
  written there (what the Spark backfill did before the executors wrote it);
- ``spark``: ``backfill(..., spark=...)``: the executors write the Parquet and the online store.
The offline rows of the three are compared.

Run: `.venv/bin/python bench/streams/backfill_spark.py` (2,000,000 events) or `--events N`.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SPARK_CONFIG = {
    "spark.sql.shuffle.partitions": "4",
    "spark.ui.enabled": "false",
    "spark.driver.memory": "2g",
}


def generate(path: Path, events: int, users: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    ids = np.arange(events, dtype=np.int64)
    retried = rng.random(events) < 0.05
    ids[retried] = rng.integers(0, events, int(retried.sum()))  # a retry repeats an earlier event
    ts = 1_700_000_000 + rng.integers(0, 86_400_000, events) / 1000.0
    user = rng.integers(0, users, events)
    ts = np.where(retried, ts[ids], ts)
    user = np.where(retried, user[ids], user)
    table = pa.table(
        {
            "id": ids,
            "user": pa.array([f"u{u}" for u in user]),
            "ts": ts,
            "amount": rng.gamma(2.0, 20.0, events).round(2),
        }
    )
    pq.write_table(table, path, row_group_size=500_000)


def feature():
    from mlscale.streams.definitions import WindowedFeature

    return WindowedFeature(
        name="spend",
        source="orders",
        entity_key="user",
        size="1m",
        dedup_key="id",
        aggregations=["count", "sum(amount)", "last(amount)"],
    )


def run_one(way: str, events: Path, out: Path) -> dict:
    """One way in this process: wall time, the Python driver's peak RSS, the number of windows."""
    import pyarrow.parquet as pq

    from mlscale.features.online import OnlineTarget
    from mlscale.streams import batch, batch_spark

    target = OnlineTarget(f"sqlite:///{out}/online.db", str(out))
    spark = None
    started_spark = 0.0
    if way != "duckdb":
        from mlscale.features.spark import spark_session

        began = time.perf_counter()
        spark = spark_session("local[2]", SPARK_CONFIG)
        spark.sparkContext.setLogLevel("ERROR")
        started_spark = time.perf_counter() - began
    began = time.perf_counter()
    if way == "spark-collect":
        f = feature().compile()
        table = batch_spark.compute(f, events, spark)
        path = out / "offline" / f.name / "backfill.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.rename_columns([f.entity_key, *table.column_names[1:]]), path)
        kv = target.open_kv()
        kv.set_many(dict(batch.online_items(f, table.to_pylist())), ttl=f.ttl_s)
        kv.close()
    else:
        path = batch.backfill(feature(), events, out / "offline", online=target, spark=spark)
    seconds = time.perf_counter() - began
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = pq.read_table(path)
    digest = {"windows": rows.num_rows, "count": int(rows["count"].to_numpy().sum())}
    if spark is not None:
        spark.stop()
    return {"way": way, "seconds": seconds, "spark_start": started_spark, "driver_rss_mib": rss, **digest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--one", nargs=3, metavar=("WAY", "EVENTS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        way, events, out = args.one
        print(json.dumps(run_one(way, Path(events), Path(out))))
        return
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        events = folder / "events.parquet"
        generate(events, args.events, args.users)
        results = []
        for way in ("duckdb", "spark-collect", "spark"):
            out = folder / way
            out.mkdir()
            ran = subprocess.run(
                [sys.executable, __file__, "--one", way, str(events), str(out)],
                capture_output=True,
                text=True,
                cwd=ROOT,
                timeout=1800,
            )
            if ran.returncode != 0:
                sys.exit(f"{way} failed: {ran.stderr[-2000:]}")
            results.append(json.loads(ran.stdout.strip().splitlines()[-1]))
    print(f"{args.events:,} events, {args.users:,} users, 1-minute windows with dedup, offline + online (SQLite)")
    print("| way | backfill s | Spark start s | Python driver peak RSS MiB | windows | events counted |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['way']} | {r['seconds']:.1f} | {r['spark_start']:.1f} | {r['driver_rss_mib']:.0f} "
            f"| {r['windows']:,} | {r['count']:,} |"
        )
    same = len({(r["windows"], r["count"]) for r in results}) == 1
    print("same windows and counts on every way:", same)


if __name__ == "__main__":
    main()

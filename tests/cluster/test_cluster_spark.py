"""The Spark engine on a real standalone Spark cluster (`spark_master = "spark://..."`), not local mode:
the master on one namespace host with the driver, the worker (and so the executors) on another. The
executors read the Parquet source, materialize into the Redis Cluster of the namespace cluster and
compute a stream backfill of an archived topic with client retries, all driven by the CLI's commands;
the answers equal DuckDB's on the same data."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from mlscale.testing.netcluster import Host, NetCluster

pytestmark = pytest.mark.timeout(420)

MASTER_PORT = 7077
PROJECT = """
[features]
offline_engine = "{engine}"
online_store = "{online}"
{spark}
[[features.entities]]
name = "driver"
join_key = "driver_id"

[[features.views]]
name = "{view}"
entities = ["driver"]
source = "data/stats.parquet"
created_timestamp_field = "created"
features = {{ trips = "int64", rate = "float64" }}

[streams]
broker = "embedded:log.db"
partitions = 3
offline_dir = "offline"

[[streams.features]]
name = "spend"
source = "orders"
entity_key = "user"
size = "10s"
dedup_key = "id"
allowed_lateness = "1h"
aggregations = ["count", "sum(amount)", "last(amount)"]
"""


def _stats() -> pd.DataFrame:
    """Rows with same-time corrections (a later created time wins), 60 drivers."""
    rng = np.random.default_rng(5)
    n = 2_000
    times = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 48, n) * 3600, unit="s")
    created = times + pd.to_timedelta(rng.integers(0, 5, n) * 60, unit="s")
    return pd.DataFrame(
        {
            "driver_id": rng.integers(0, 60, n),
            "event_timestamp": times,
            "created": created,
            "trips": rng.integers(0, 100, n),
            "rate": rng.random(n).round(3),
        }
    )


def _spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


def _spark_class(host: Host, work: Path, *args: str) -> list[str]:
    """A Spark daemon in the foreground, bound to the host's address (the pip package ships them),
    its executors' files under ``work`` (by default they would go into the installed package)."""
    home = _spark_home()
    env = [f"SPARK_HOME={home}", f"SPARK_LOCAL_IP={host.address}", f"SPARK_WORKER_DIR={work}"]
    return ["env", *env, str(home / "bin" / "spark-class"), *args]


def _wait_for(path: Path, text: str, timeout: float = 90.0) -> None:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in {path} within {timeout:g} s:\n{path.read_text(errors='replace')[-2000:]}")


def _mlscale(host: Host | None, folder: Path, *commands: str, stdin: bytes = b"") -> list[str]:
    """Run ``mlscale`` commands in one process on ``host`` (one Spark driver for all); their outputs."""
    prefix = ["ip", "netns", "exec", host.namespace] if host is not None else []
    command = [*prefix, sys.executable, str(Path(__file__).parent / "spark_driver.py"), *commands]
    ran = subprocess.run(command, cwd=folder, input=stdin, capture_output=True, timeout=300)
    ran.stdout, ran.stderr = ran.stdout.decode(), ran.stderr.decode()
    if ran.returncode != 0:  # Spark's Java stack traces bury the Python error: show it first
        python = [line for line in ran.stderr.splitlines() if "Error" in line and not line.startswith("\tat ")]
        raise AssertionError("\n".join([*python[:20], ran.stderr[-1500:]]))
    return [part.split("\n", 1)[1] for part in ran.stdout.split("=== ")[1:]]


def test_a_standalone_spark_cluster_materializes_and_backfills_as_duckdb(net_cluster: NetCluster, tmp_path):
    driver, worker = net_cluster.add_host(), net_cluster.add_host()
    work = tmp_path / "spark"
    master = ["org.apache.spark.deploy.master.Master", "--host", driver.address, "--port", str(MASTER_PORT)]
    executors = ["org.apache.spark.deploy.worker.Worker", "--cores", "1", "--memory", "1g"]
    try:
        net_cluster.spawn(driver, "spark-master", _spark_class(driver, work, *master, "--webui-port", "8080"))
        master_log = net_cluster.workdir / f"h{driver.index}-spark-master.log"
        _wait_for(master_log, "I have been elected leader")
        url = f"spark://{driver.address}:{MASTER_PORT}"
        net_cluster.spawn(worker, "spark-worker", _spark_class(worker, work, *executors, "--webui-port", "8081", url))
        _wait_for(master_log, "Registering worker")
        _run_both_engines(net_cluster, driver, tmp_path)
    finally:
        for host in (worker, driver):
            net_cluster.remove_host(host)


def _run_both_engines(cluster: NetCluster, driver: Host, tmp_path: Path) -> None:
    view = f"stats_{uuid.uuid4().hex[:8]}"  # the Redis Cluster is shared by the session's tests
    spark_settings = {
        "spark.driver.host": driver.address,
        "spark.driver.bindAddress": driver.address,
        "spark.pyspark.python": sys.executable,  # the executors' Python: one with mlscale installed
        "spark.executor.memory": "512m",
        "spark.cores.max": "1",
        "spark.sql.shuffle.partitions": "2",
        "spark.ui.enabled": "false",
    }
    engines = {
        "duckdb": ("", "sqlite:///online.db", None),
        "spark": (
            f'spark_master = "spark://{driver.address}:{MASTER_PORT}"\n'
            "spark_config = { " + ", ".join(f'"{k}" = "{v}"' for k, v in spark_settings.items()) + " }\n",
            cluster.redis_url,
            driver,
        ),
    }
    stats = _stats()
    orders = [
        {"id": i % 150, "user": f"u{i % 150 % 7}", "ts": 1_700_000_000 + (i % 150) * 0.3, "amount": float(i)}
        for i in range(200)
    ]  # 50 client retries
    answers, backfills = {}, {}
    for engine, (spark, online, host) in engines.items():
        folder = tmp_path / engine
        (folder / "data").mkdir(parents=True)
        stats.to_parquet(folder / "data" / "stats.parquet")
        (folder / "mlscale.toml").write_text(PROJECT.format(engine=engine, online=online, spark=spark, view=view))
        ids = ",".join(str(i) for i in range(0, 64, 3))  # 60 and 63 have no rows
        outputs = _mlscale(
            host,
            folder,
            "features apply",
            "features materialize --end 2024-01-03T00:00:00",
            f"features get --feature {view}:* --entity driver_id={ids}",
            # The topic archived to Parquet: records carry their partition and offset, and among
            # retries at one time the first in the log is kept, on both engines.
            "stream produce orders",
            "stream archive orders --out history",
            "stream backfill --events history",
            stdin=b"\n".join(msgspec.json.encode(e) for e in orders),
        )
        answers[engine] = json.loads(outputs[2])
        backfills[engine] = pq.read_table(folder / "offline" / "spend" / "backfill.parquet").to_pylist()
    assert answers["spark"] == answers["duckdb"]
    assert answers["spark"]["results"][1]["values"][-1] is None  # an unknown driver
    assert backfills["spark"] == backfills["duckdb"] and sum(r["count"] for r in backfills["spark"]) == 150

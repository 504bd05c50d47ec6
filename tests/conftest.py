"""Shared fixtures: real services (the test command starts them) and small local models."""

from __future__ import annotations

import shutil
import socket
import uuid
from collections.abc import Callable, Iterator

import pytest

from mlscale.storage.localredis import LocalRedis, LocalRedisCluster


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the real local Redis; `make test` starts one when none runs."""
    if not _listening(6379):
        pytest.skip("Redis is not running on 127.0.0.1:6379 (make test starts it)")
    return "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def nats_url() -> str:
    """URL of the real local NATS server with JetStream."""
    if not _listening(4222):
        pytest.skip("NATS is not running on 127.0.0.1:4222 (make test starts it)")
    return "nats://127.0.0.1:4222"


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """DSN of the real local PostgreSQL (trust auth, database test)."""
    if not _listening(5432):
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    return "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def start_redis() -> Iterator[Callable[[], LocalRedis]]:
    """Start private redis-servers on free ports (tests may kill them); all stop when the test ends."""
    servers: list[LocalRedis] = []

    def start() -> LocalRedis:
        server = LocalRedis().start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def _skip_without_redis_cluster_tools() -> None:
    missing = [tool for tool in ("redis-server", "redis-cli") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed: no Redis Cluster (make test installs redis-server)")


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """URL (redis+cluster://) of a private 3-master Redis Cluster shared by the session; never kill its nodes."""
    _skip_without_redis_cluster_tools()
    with LocalRedisCluster() as cluster:
        yield cluster.url


@pytest.fixture
def start_redis_cluster() -> Iterator[Callable[[], LocalRedisCluster]]:
    """Start private Redis Clusters that a test may break; all stop when the test ends."""
    _skip_without_redis_cluster_tools()
    clusters: list[LocalRedisCluster] = []

    def start() -> LocalRedisCluster:
        cluster = LocalRedisCluster().start()
        clusters.append(cluster)
        return cluster

    yield start
    for cluster in clusters:
        cluster.stop()


@pytest.fixture
def prefix() -> bytes:
    """A key prefix no other test (or engineer) uses on the shared Redis."""
    return f"t-{uuid.uuid4().hex[:12]}:".encode()


# A small local Spark: two cores' worth of partitions, no UI, no adaptive plans (steadier timings).
SPARK_TEST_CONFIG = {
    "spark.sql.shuffle.partitions": "2",
    "spark.default.parallelism": "2",
    "spark.ui.enabled": "false",
    "spark.driver.memory": "1g",
    "spark.sql.adaptive.enabled": "false",
}


@pytest.fixture(scope="session")
def spark():
    """One local SparkSession for the whole run (starting one takes seconds)."""
    from mlscale.features.spark import spark_session

    session = spark_session("local[2]", SPARK_TEST_CONFIG)
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()

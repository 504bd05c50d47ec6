"""A Redis Cluster primary dies under load: its replica is promoted, acknowledged writes survive.

Through mlscale's own Redis Cluster backend. Redis replicates asynchronously: a plain write is
acknowledged by the primary alone and can be lost when it dies before the copy leaves. With
``?wait=1`` every write batch ends in WAIT 1, so a batch acknowledged to the caller is held by the
replica that the failover promotes: that is the guarantee these tests pin down.
"""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from mlscale.errors import ServiceUnavailable
from mlscale.storage.redis_store import RedisClusterKeyValue
from mlscale.testing.netcluster import REDIS_PRIMARY_PORT, REDIS_REPLICA_PORT, NetCluster

VICTIM = 1  # the primary on host 1 (not the seed node the client was given)
BATCH = 20
MAX_BATCHES = 4000
MAX_SECONDS = 25.0


def _role(host: str, port: int) -> str:
    with redis.Redis(host=host, port=port, socket_timeout=1, socket_connect_timeout=0.5) as client:
        return client.info("replication")["role"]


def _heal(cluster: NetCluster) -> None:
    """Bring the killed primary back and make it primary again, so later tests see the first layout."""
    victim = cluster.hosts[VICTIM]
    if victim.processes["redis-primary"].poll() is not None:
        cluster.restart_redis(VICTIM, "redis-primary")
    cluster.wait_redis_ok(time.monotonic() + 20)
    with redis.Redis(host=victim.address, port=REDIS_PRIMARY_PORT, socket_timeout=2) as node:
        node.execute_command("CLUSTER", "FAILOVER")  # a coordinated switch: no write is lost
    deadline = time.monotonic() + 15
    while _role(victim.address, REDIS_PRIMARY_PORT) != "master":
        assert time.monotonic() < deadline, "the healed node did not take its slots back"
        time.sleep(0.05)
    cluster.wait_redis_ok(time.monotonic() + 20)


def test_primary_killed_under_load_replica_promoted_and_no_acknowledged_write_lost(net_cluster: NetCluster) -> None:
    # wait=1: a batch counts once the replica holds it. After the failover the promoted replica has
    # no replica of its own, so its shard refuses writes until the dead node is back (restarted, as
    # an orchestrator would) and has synced as the new replica: safety first, then availability.
    prefix = f"failover-{uuid.uuid4().hex[:8]}:".encode()
    store = RedisClusterKeyValue(f"{net_cluster.redis_url}?wait=1", timeout=1.0, prefix=prefix)
    replica = net_cluster.redis_replica_host(VICTIM)
    acknowledged: dict[bytes, bytes] = {}
    failed = 0
    killed_at = promoted_at = recovered_at = None
    started = time.monotonic()
    try:
        for i in range(MAX_BATCHES):  # bounded in count and in time
            now = time.monotonic()
            if now - started > MAX_SECONDS or (recovered_at is not None and now - recovered_at > 1.0):
                break
            if killed_at is None and len(acknowledged) >= 100 * BATCH:
                net_cluster.kill(VICTIM, "redis-primary")
                killed_at = time.monotonic()
            items = {f"k{i}-{j}".encode(): f"v{i}".encode() for j in range(BATCH)}
            try:
                store.set_many(items)
            except ServiceUnavailable:
                failed += 1
                if promoted_at is None and _role(replica.address, REDIS_REPLICA_PORT) == "master":
                    promoted_at = time.monotonic()
                    net_cluster.restart_redis(VICTIM, "redis-primary")  # comes back as the replica
                time.sleep(0.05)  # a client backs off a little while the cluster elects
                continue
            acknowledged.update(items)
            if promoted_at is not None and recovered_at is None:
                recovered_at = time.monotonic()

        assert killed_at is not None, "the load never reached the kill"
        assert promoted_at is not None, f"the replica was not promoted within {MAX_SECONDS}s"
        assert recovered_at is not None, f"writes did not come back within {MAX_SECONDS}s"
        keys = list(acknowledged)
        values = []
        for start in range(0, len(keys), 500):
            values += store.get_many(keys[start : start + 500])
        lost = [k for k, v in zip(keys, values, strict=True) if v != acknowledged[k]]
        print(
            f"\nredis failover: {len(acknowledged) // BATCH} batches acknowledged, {failed} refused, "
            f"{len(lost)} keys lost; replica promoted {promoted_at - killed_at:.2f}s after the kill, "
            f"writes back after {recovered_at - killed_at:.2f}s"
        )
        assert lost == []
        assert promoted_at - killed_at < 10.0
    finally:
        store.close()
        _heal(net_cluster)
        with RedisClusterKeyValue(net_cluster.redis_url, timeout=2.0, prefix=prefix) as cleanup:
            written = list(acknowledged)
            for start in range(0, len(written), 1000):
                cleanup.delete(written[start : start + 1000])


def test_write_that_no_replica_confirms_is_not_acknowledged(net_cluster: NetCluster) -> None:
    # The replica of host 0's primary dies: with wait=1 a write to that primary's slots raises
    # instead of pretending to be safe; without wait it is acknowledged by the primary alone.
    prefix = f"nowait-{uuid.uuid4().hex[:8]}:".encode()
    replica_host = net_cluster.redis_replica_host(0).index
    waiting = RedisClusterKeyValue(f"{net_cluster.redis_url}?wait=1", timeout=0.5, prefix=prefix)
    plain = RedisClusterKeyValue(net_cluster.redis_url, timeout=0.5, prefix=prefix)
    # A key of host 0's slots (0-5460): "a" hashes to slot 15495, so probe for one.
    key = next(k for k in (f"k{i}".encode() for i in range(1000)) if plain.client.keyslot(prefix + k) < 5000)
    try:
        waiting.set_many({key: b"1"})  # both copies alive: acknowledged
        net_cluster.kill(replica_host, "redis-replica")
        with pytest.raises(ServiceUnavailable, match="0 of the 1 replicas"):
            waiting.set_many({key: b"2"})
        plain.set_many({key: b"3"})  # the primary alone acknowledges: the copy a failover would lose
        assert plain.get(key) == b"3"
    finally:
        waiting.close()
        net_cluster.restart_redis(replica_host, "redis-replica")
        net_cluster.wait_redis_ok(time.monotonic() + 20)
        plain.delete([key])
        plain.close()


def test_wait_must_be_a_number_of_replicas(net_cluster: NetCluster) -> None:
    from mlscale.errors import ConfigError

    with pytest.raises(ConfigError, match="wait= must be a number"):
        RedisClusterKeyValue(f"{net_cluster.redis_url}?wait=all")

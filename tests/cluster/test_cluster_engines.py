"""The namespace cluster itself: separate hosts, each engine reachable and replicated as promised."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import nats
import psycopg
import pytest
import redis

from mlscale.testing.netcluster import POSTGRES_PORT, NetCluster, check_supported


def _namespaces(prefix: str) -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in listed.splitlines() if line.startswith(prefix)]


def test_hosts_have_their_own_addresses_and_reach_each_other(net_cluster: NetCluster) -> None:
    first, last = net_cluster.hosts[0], net_cluster.hosts[-1]
    shown = subprocess.run(
        ["ip", "netns", "exec", first.namespace, "ip", "-4", "-o", "addr", "show", "eth0"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert f"{first.address}/24" in shown
    probe = (
        "import socket, sys\n"
        "def reach(host, port):\n"
        "    with socket.socket() as s:\n"
        "        s.settimeout(1)\n"
        "        return s.connect_ex((host, port)) == 0\n"
        "print(reach(sys.argv[1], int(sys.argv[2])), reach('127.0.0.1', int(sys.argv[2])))\n"
    )
    seen = subprocess.run(
        ["ip", "netns", "exec", first.namespace, sys.executable, "-c", probe, last.address, str(POSTGRES_PORT)],
        capture_output=True, text=True, check=True, timeout=20,
    ).stdout.split()  # fmt: skip
    # The other host's PostgreSQL over the bridge, and nothing on this host's own loopback.
    assert seen == ["True", "False"]


def test_redis_cluster_has_three_primaries_each_with_a_replica_on_another_host(net_cluster: NetCluster) -> None:
    nodes = net_cluster.redis_nodes()
    primaries = [n for n in nodes if "master" in n["flags"]]
    replicas = [n for n in nodes if "slave" in n["flags"]]
    assert len(primaries) == 3 and len(replicas) == 3
    by_id = {n["id"]: n for n in nodes}
    for replica in replicas:
        primary = by_id[replica["primary"]]
        assert replica["address"].split(":")[0] != primary["address"].split(":")[0]
    host, port = primaries[0]["address"].split(":")
    with redis.Redis(host=host, port=int(port), socket_timeout=2) as client:
        assert client.cluster("INFO")["cluster_state"] == "ok"


def test_nats_is_a_three_server_jetstream_cluster_with_r3_streams(net_cluster: NetCluster) -> None:
    async def go() -> tuple[int, list[str]]:
        nc = await nats.connect(net_cluster.nats_urls, connect_timeout=2, max_reconnect_attempts=0)
        try:
            js = nc.jetstream(timeout=5)
            info = await js.add_stream(name="engines_r3", subjects=["engines_r3.>"], num_replicas=3)
            await js.publish("engines_r3.a", b"x")
            info = await js.stream_info("engines_r3")
            await js.delete_stream("engines_r3")
            peers = [info.cluster.leader] + [r.name for r in info.cluster.replicas or []]
            return info.config.num_replicas, peers
        finally:
            await nc.close()

    replicas, peers = asyncio.run(go())
    assert replicas == 3
    assert sorted(peers) == ["h0", "h1", "h2"]


def test_postgres_runs_on_its_own_host(net_cluster: NetCluster) -> None:
    with psycopg.connect(net_cluster.postgres_dsn, connect_timeout=2) as conn:
        address = conn.execute("SELECT host(inet_server_addr())").fetchone()[0]
    assert address == net_cluster.postgres_host.address


def test_cleanup_removes_namespaces_and_bridge_even_of_a_crashed_run() -> None:
    reason = check_supported()
    if reason:
        pytest.skip(reason)
    crashed = NetCluster(3, tag="cz", net=7, nats=False, redis=False, postgres=False).start()
    # as if the process that built it had died: its engines are unknown and its lock released (the
    # kernel does that for a dead process; kept, it blocked this test in every other session until
    # this one ended)
    crashed.hosts[0].processes.clear()
    crashed._release()
    assert len(_namespaces("mlsccz-")) == 3
    NetCluster(3, tag="cz", net=7).cleanup()  # what the next run (or cluster.sh down) does
    assert _namespaces("mlsccz-") == []
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    assert "mlsccz-" not in links

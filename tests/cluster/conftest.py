"""One cluster of namespace hosts for every test under tests/cluster (started once per session).

Tests that break it (kill a node, cut a link) must leave it whole again or use ``fresh_cluster``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mlscale.testing.netcluster import ClusterBusy, NetCluster, check_supported, missing_engines


def _skip_reason() -> str | None:
    reason = check_supported()
    if reason:
        return f"no network namespaces here ({reason}): the cluster tests need root and iproute2"
    missing = missing_engines()
    if missing:
        return f"engine binaries missing: {', '.join(missing)} (make test installs them)"
    return None


@pytest.fixture(scope="session")
def net_cluster(request: pytest.FixtureRequest) -> Iterator[NetCluster]:
    """4 hosts: NATS on 3 (clustered), Redis Cluster 3 primaries + a replica each, PostgreSQL on the 4th."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    # Slot i: names mlsct<i>-*, subnet 10.213.(10 + i).0/24; a slot another session holds is skipped,
    # so test runs side by side do not collide.
    for slot in range(10):
        cluster = NetCluster(4, tag=f"t{slot}", net=10 + slot)
        try:
            cluster.start()
            break
        except ClusterBusy:
            continue
    else:
        pytest.skip("every cluster slot is taken by other test sessions")
    try:
        terminal = request.config.pluginmanager.get_plugin("terminalreporter")
        if terminal is not None:
            terminal.write_line(f"\nnamespace cluster started in {cluster.startup_seconds} s")
        yield cluster
    finally:
        cluster.stop()

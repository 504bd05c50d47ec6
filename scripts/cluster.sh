#!/usr/bin/env bash
# Hosts as Linux network namespaces on this machine, with NATS JetStream (3 servers), Redis Cluster
# (3 primaries, a replica each) and PostgreSQL inside: `scripts/cluster.sh up` prints where they are,
# `scripts/cluster.sh down` kills them and removes the namespaces. Needs root. Extra options:
# --hosts N (default 4), --tag T (names mlsc<T>-*, default dev), --net N (subnet 10.213.N.0/24, default 1).
set -eu
here="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$here/.venv/bin/python}"
[ -x "$python" ] || python=python3
PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}" exec "$python" -m mlscale.testing.netcluster "$@"

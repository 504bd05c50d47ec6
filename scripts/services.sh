#!/usr/bin/env bash
# Starts the services the integration tests talk to (Redis, NATS JetStream, PostgreSQL) when they are
# not already listening. A fresh machine may have none running; this never stops one that runs.
set -u
here="$(cd "$(dirname "$0")/.." && pwd)"
state="$here/.cache/services"
mkdir -p "$state"

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 50); do listening "$1" && return 0; sleep 0.1; done
  return 1
}

install_debian() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null 2>&1 || true
  fi
}

if ! listening 6379; then
  command -v redis-server >/dev/null || install_debian redis-server
  if command -v redis-server >/dev/null; then
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir "$state" --logfile "$state/redis.log"
    wait_port 6379 && echo "services: started Redis on 6379" || echo "services: Redis did not start" >&2
  else
    echo "services: redis-server is not installed; Redis tests will be skipped" >&2
  fi
fi

# The Redis Cluster tests start their own nodes on free ports; they need redis-cli (Debian: redis-tools,
# which redis-server depends on) even when a Redis already listens on 6379.
if command -v redis-server >/dev/null && ! command -v redis-cli >/dev/null; then
  install_debian redis-tools
fi

if ! listening 4222; then
  command -v nats-server >/dev/null || install_debian nats-server
  if command -v nats-server >/dev/null; then
    mkdir -p "$state/nats"
    nohup nats-server -a 127.0.0.1 -p 4222 -js -sd "$state/nats" >"$state/nats.log" 2>&1 &
    wait_port 4222 && echo "services: started NATS on 4222" || echo "services: NATS did not start" >&2
  else
    echo "services: nats-server is not installed; NATS tests will be skipped" >&2
  fi
fi

if ! listening 5432; then
  if command -v pg_ctlcluster >/dev/null && ls /etc/postgresql >/dev/null 2>&1; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start 2>/dev/null || true
    wait_port 5432 && echo "services: started PostgreSQL on 5432" || echo "services: PostgreSQL did not start" >&2
  else
    echo "services: PostgreSQL is not installed; PostgreSQL tests will be skipped" >&2
  fi
fi
exit 0

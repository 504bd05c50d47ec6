"""Start throw-away redis-servers on free ports (tests and benchmarks; never for production).

No persistence (``--save ''``), bound to 127.0.0.1, stopped by ``stop()`` or the context manager.
``LocalRedisCluster`` joins several such servers into a real Redis Cluster.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import redis

from mlscale.errors import ServiceUnavailable


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalRedis:
    """``with LocalRedis() as server: server.url``: a private Redis for as long as the block runs.

    ``args`` are extra redis-server options; ``workdir`` is where it may write files (cluster nodes
    write their nodes.conf there).
    """

    def __init__(
        self,
        port: int | None = None,
        binary: str = "redis-server",
        *,
        args: Sequence[str] = (),
        workdir: Path | str | None = None,
    ) -> None:
        self.port = port or free_port()
        self.binary = shutil.which(binary) or binary
        self.args = list(args)
        self.workdir = workdir
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> LocalRedis:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        if self.workdir is not None:
            command += ["--dir", str(self.workdir)]
        self.process = subprocess.Popen(
            command + self.args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=0.5)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServiceUnavailable(f"redis-server on port {self.port} exited at start")
            try:
                if client.ping():
                    client.close()
                    return self
            except redis.RedisError:
                time.sleep(0.02)
        self.stop()
        raise ServiceUnavailable(f"redis-server on port {self.port} did not answer within {timeout}s")

    def stop(self) -> None:
        """Kill the server at once (like a crash) and wait for it to go."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class LocalRedisCluster:
    """``with LocalRedisCluster() as cluster: cluster.url``: a private Redis Cluster of ``masters`` nodes.

    No replicas, so killing a node (``cluster.nodes[i].stop()``) loses its slots: what a client must
    survive is that failure, as a clear error within its timeout. The cluster bus port of each node is
    chosen freely too (``--cluster-port``), because port + 10000 may be taken or beyond 65535.
    """

    def __init__(self, masters: int = 3, *, binary: str = "redis-server", cli: str = "redis-cli") -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        self.masters = masters
        self.binary = binary
        self.cli = shutil.which(cli) or cli
        self.nodes: list[LocalRedis] = []
        self._tmp: tempfile.TemporaryDirectory | None = None

    @property
    def url(self) -> str:
        """mlscale's URL of the cluster (the client discovers the other nodes from this one)."""
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self, timeout: float = 30.0) -> LocalRedisCluster:
        self._tmp = tempfile.TemporaryDirectory(prefix="mlscale-redis-cluster-")
        try:
            for _ in range(self.masters):
                port = free_port()
                args = [
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", f"nodes-{port}.conf",
                    "--cluster-port", str(free_port()),
                    "--daemonize", "no",
                ]  # fmt: skip
                self.nodes.append(LocalRedis(port, self.binary, args=args, workdir=self._tmp.name).start(timeout))
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            create = [self.cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"]
            done = subprocess.run(create, capture_output=True, text=True, timeout=timeout, check=False)
            if done.returncode != 0:
                raise ServiceUnavailable(f"redis-cli --cluster create failed: {done.stdout[-500:]}{done.stderr[-500:]}")
            self.wait_ok(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Return once every node says cluster_state:ok (slots assigned and gossip converged)."""
        deadline = time.monotonic() + timeout
        pending = list(self.nodes)
        while pending:
            node = pending[0]
            try:
                with redis.Redis(port=node.port, socket_connect_timeout=0.5, socket_timeout=0.5) as client:
                    ok = client.cluster("INFO").get("cluster_state") == "ok"
            except redis.RedisError:
                ok = False
            if ok:
                pending.pop(0)
            elif time.monotonic() > deadline:
                raise ServiceUnavailable(f"Redis Cluster node on port {node.port} not ok within {timeout}s")
            else:
                time.sleep(0.05)

    def stop(self) -> None:
        """Kill every node and remove their files."""
        for node in self.nodes:
            node.stop()
        self.nodes.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> LocalRedisCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

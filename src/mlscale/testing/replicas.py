"""Server replicas on namespace hosts and a gateway in front of them, as real processes.

For tests/cluster/test_cluster_serving.py and bench/cluster/run.py: ``start_replica`` runs
``mlscale serve`` inside a host of a ``NetCluster`` (listening on the host's own address, so the
only way to it is over the bridge, and cutting the host's link cuts it off), and ``GatewayProcess``
runs ``mlscale gateway`` in the calling process's namespace, which reaches every host.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from mlscale.errors import ServiceUnavailable
from mlscale.testing.netcluster import Host, NetCluster

SERVE_PORT = 8000


def _python_mlscale(*args: str) -> list[str]:
    # The interpreter running the caller (its PYTHONPATH goes along), not whatever `mlscale` is on PATH.
    return [sys.executable, "-m", "mlscale", *args]


def wait_ready(url: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Until ``url``/v2/health/ready answers 200; raises if ``process`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise ServiceUnavailable(f"the server for {url} exited at start (code {process.returncode})")
        try:
            if httpx.get(url + "/v2/health/ready", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise ServiceUnavailable(f"{url} was not ready within {timeout:.0f}s")
        time.sleep(0.1)


def start_replica(
    cluster: NetCluster, host: Host, repository: Path, config: Path, *, workers: int = 1, name: str = "serve"
) -> str:
    """Start ``mlscale serve`` in ``host`` (not waiting for it); returns its base URL.

    gRPC is off (nothing here uses it, and it would only add start-up time)."""
    cluster.spawn(
        host,
        name,
        _python_mlscale(
            "serve", "--model-repository", str(repository), "--config", str(config), "--host", host.address,
            "--port", str(SERVE_PORT), "--grpc-port", "0", "--workers", str(workers),
        ),
    )  # fmt: skip
    return f"http://{host.address}:{SERVE_PORT}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class GatewayProcess:
    """``mlscale gateway`` on 127.0.0.1 over ``backends``; its output goes to ``log``."""

    def __init__(self, backends: list[str], config: Path, log: Path, *, strategy: str = "p2c") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = _python_mlscale("gateway", "--config", str(config), "--port", str(self.port), "--strategy", strategy)
        for backend in backends:
            command += ["--backend", backend]
        with open(log, "ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise ServiceUnavailable(f"the gateway exited at start (code {self.process.returncode})")
            try:
                httpx.get(self.url + "/gateway/backends", timeout=1.0)
                return
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise ServiceUnavailable(f"the gateway was not up within {timeout:.0f}s") from None
                time.sleep(0.1)

    def backends(self) -> dict[str, dict]:
        """The gateway's view: url -> {healthy, inflight, served, failures}."""
        listed = httpx.get(self.url + "/gateway/backends", timeout=2.0).json()
        return {b["url"]: b for b in listed}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)

"""A small model repository, an in-process server (build_app) and trace-context helpers for the tracing tests."""

from __future__ import annotations

import contextlib
import secrets
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from mlscale.config import ServerSettings, Settings

DOUBLE_MODEL = '''
class Model:
    """Doubles its input."""
    def predict(self, inputs):
        return {"y": inputs["x"] * 2}
'''

TOML = """max_batch_size = 64
max_delay = {delay}
execution = "thread"
{cache}
[[inputs]]
name = "x"
datatype = "FP32"
shape = [-1, 2]
[[outputs]]
name = "y"
datatype = "FP32"
shape = [-1, 2]
"""


def build_repository(root: Path) -> Path:
    """Models: ``double`` (batches requests arriving within 50 ms) and ``double-cached`` (prediction cache on)."""
    for name, delay, cache in (("double", 0.05, ""), ("double-cached", 0.0, "[cache]\nenabled = true\n")):
        folder = root / name / "1"
        folder.mkdir(parents=True)
        (folder / "model.py").write_text(DOUBLE_MODEL)
        (folder / "model.toml").write_text(TOML.format(delay=delay, cache=cache))
    return root


FEATURE_PROJECT = """[features]
registry = "features/registry.db"
online_store = "sqlite:///features/online.db"

[[features.entities]]
name = "driver"
join_key = "driver_id"

[[features.views]]
name = "driver_rates"
entities = ["driver"]
source = "data/drivers.parquet"
ttl = "3650d"
features = { conv_rate = "float32", acc_rate = "float32" }

[[features.services]]
name = "driver_model"
features = ["driver_rates:conv_rate", "driver_rates:acc_rate"]
"""

# The materialized rates of drivers 1, 2 and 3: conv_rate, acc_rate.
DRIVER_RATES = {1: (0.1, 0.5), 2: (0.2, 0.6), 3: (0.3, 0.7)}


def build_feature_project(root: Path) -> Settings:
    """A project in ``root`` whose online store holds ``DRIVER_RATES`` (feature service ``driver_model``)."""
    from datetime import UTC, datetime, timedelta

    import numpy as np
    import pandas as pd

    from mlscale.config import load_settings
    from mlscale.features.store import FeatureStore

    rates = pd.DataFrame(
        {
            "driver_id": np.array(list(DRIVER_RATES), dtype="int64"),
            "event_timestamp": [datetime.now(UTC) - timedelta(hours=1)] * len(DRIVER_RATES),
            "conv_rate": np.array([c for c, _ in DRIVER_RATES.values()], dtype="float32"),
            "acc_rate": np.array([a for _, a in DRIVER_RATES.values()], dtype="float32"),
        }
    )
    (root / "data").mkdir(parents=True)
    rates.to_parquet(root / "data" / "drivers.parquet")
    (root / "mlscale.toml").write_text(FEATURE_PROJECT)
    project = load_settings(root / "mlscale.toml")
    with FeatureStore(project) as store:
        store.apply()
        store.materialize()
    return project


def body(rows: list[list[float]]) -> dict:
    flat = [v for row in rows for v in row]
    return {"inputs": [{"name": "x", "shape": [len(rows), 2], "datatype": "FP32", "data": flat}]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def new_parent(sampled: bool = True) -> tuple[int, int, str]:
    """A caller's trace id, span id and the ``traceparent`` header carrying them."""
    trace_id, span_id = int(secrets.token_hex(16), 16), int(secrets.token_hex(8), 16)
    return trace_id, span_id, f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"


def settings_for(repository: Path, grpc_port: int = 0) -> Settings:
    server = ServerSettings(model_repository=str(repository), grpc_port=grpc_port, poll_interval=0, dashboard=False)
    return Settings(root=str(repository.parent), server=server)


@contextlib.asynccontextmanager
async def running_app(
    repository: Path, grpc_port: int = 0, project: Settings | None = None
) -> AsyncIterator[tuple[object, httpx.AsyncClient]]:
    """The server's app in this event loop (models loaded, gRPC listening when a port is given) and
    an HTTP client calling it in-process. ``project``: the other sections (features, cache...)."""
    import msgspec

    from mlscale.serving.server import build_app

    settings = settings_for(repository, grpc_port)
    if project is not None:
        settings = msgspec.structs.replace(project, server=settings.server)
    app = build_app(settings)
    await app.startup()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://replica") as client:
            yield app, client
    finally:
        await app.shutdown()


def by_name(spans, name: str) -> list:
    return [s for s in spans if s.name == name]


def one(spans, name: str, trace_id: int | None = None):
    found = [s for s in by_name(spans, name) if trace_id is None or s.context.trace_id == trace_id]
    assert len(found) == 1, f"expected one {name!r} span, got {[(s.name, s.context.trace_id) for s in spans]}"
    return found[0]


class OtlpReceiver:
    """A tiny OTLP/HTTP traces receiver (what a collector does first): decodes each POST to
    /v1/traces (protobuf ExportTraceServiceRequest) into (service name, span) pairs."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        self.spans: list[tuple[str, object]] = []
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                payload = self.rfile.read(int(self.headers["content-length"]))
                status = 404
                if self.path == "/v1/traces" and self.headers["content-type"] == "application/x-protobuf":
                    request = ExportTraceServiceRequest.FromString(payload)
                    with receiver.arrived:
                        for resource_spans in request.resource_spans:
                            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                            for scope_spans in resource_spans.scope_spans:
                                receiver.spans.extend((attributes["service.name"], s) for s in scope_spans.spans)
                        receiver.arrived.notify_all()
                    status = 200
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(status)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, predicate, timeout: float = 20.0) -> list[tuple[str, object]]:
        """The spans received once ``predicate(spans)`` holds; fails after ``timeout`` seconds."""
        with self.arrived:
            if not self.arrived.wait_for(lambda: predicate(self.spans), timeout):
                raise AssertionError(f"the expected spans never arrived; got {[s.name for _, s in self.spans]}")
            return list(self.spans)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class GatewayProcess:
    """``mlscale gateway --config`` as a process in front of one replica."""

    def __init__(self, config: Path, backend: str, env: dict[str, str]) -> None:
        import os
        import subprocess
        import sys
        import time

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [str(Path(sys.executable).parent / "mlscale"), "gateway", "--config", str(config)]
        command += ["--port", str(self.port), "--backend", backend]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **env}
        )
        until = time.monotonic() + 30
        while time.monotonic() < until:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.process.stdout.read().decode()}")
            try:
                httpx.get(self.url + "/gateway/backends", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("gateway did not start")

    def stop(self) -> int:
        import subprocess

        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

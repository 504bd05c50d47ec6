"""Running the server: uvicorn with N worker processes on one port, metrics summed over them.

The parent process prepares what workers share (the metrics folder, the control folder, the
settings) through environment variables before any worker starts, because prometheus_client
chooses its multiprocess mode when it is first imported.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import msgspec

from mlscale import tracing
from mlscale.config import Settings

SETTINGS_ENV = "MLSCALE_SERVER_SETTINGS"
STATE_ENV = "MLSCALE_STATE_DIR"
WORKERS_ENV = "MLSCALE_WORKERS"


def build_app(settings: Settings, *, control_dir: Path | None = None, workers: int = 1):
    """The ASGI app for one worker process (also what tests embed)."""
    from mlscale.cache.factory import Caches
    from mlscale.serving.app import InferenceApp
    from mlscale.serving.control import WorkerControl
    from mlscale.serving.mlflow_registry import registry_from_settings
    from mlscale.serving.repository import ModelRepository

    caches = Caches(settings.cache, root=settings.root)
    feature_store = LazyFeatureStore(settings, caches)
    repository = ModelRepository(
        settings.resolve(settings.server.model_repository),
        max_queue_size=settings.server.max_queue_size,
        max_waiting=settings.server.max_waiting,
        queue_delay=(settings.server.queue_delay_target, settings.server.max_queue_wait),
        caches=caches,
        features=feature_store.online,
        registry=registry_from_settings(settings.server, settings.resolve),
    )
    control = WorkerControl(control_dir, workers) if control_dir is not None else None
    events = LazyBroker(settings)
    json_routes = {
        ("POST", "/v1/features"): feature_store.handle_request,
        ("POST", "/v1/events/{topic}"): events.handle_request,
    }
    services = []
    if settings.server.grpc_port:
        from mlscale.serving.grpc_v2.service import GrpcListener

        server = settings.server
        tls = settings.tls
        services.append(
            GrpcListener(
                server.host,
                server.grpc_port,
                server.max_body_bytes,
                grace=server.graceful_timeout,
                tls=(str(settings.resolve(tls.certfile)), str(settings.resolve(tls.keyfile))) if tls.enabled else None,
            )
        )
    payload_log = None
    if settings.monitoring.payload_log.enabled:
        from mlscale.monitoring.payload_log import payload_log_from_settings

        payload_log = payload_log_from_settings(settings.monitoring.payload_log, settings.resolve)
    from mlscale.auth.guard import guard_from_settings

    shutdown = [events.close]
    if tracing.configure(settings.tracing, "mlscale-server"):
        shutdown.append(tracing.shutdown)  # exports the spans still buffered
    app = InferenceApp(
        repository,
        settings.server,
        control=control,
        json_routes=json_routes,
        payload_log=payload_log,
        on_shutdown=shutdown,
        guard=guard_from_settings(settings, workers),
        services=services,
    )
    if not settings.server.dashboard:
        return app
    from mlscale.serving.dashboard import with_dashboard

    return with_dashboard(app, repository, settings)


class LazyBroker:
    """The project's stream broker (``[streams] broker``), opened on the first event posted."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._broker = None

    def _append(self, topic: str, body) -> dict:
        from mlscale.streams.connect import broker_from_settings
        from mlscale.streams.ingest import ingest_events

        if self._broker is None:
            self._broker = broker_from_settings(self.settings)
        return ingest_events(self._broker, topic, body)

    async def handle_request(self, body, topic):
        """``POST /v1/events/{topic}``: a JSON list of events (or {"events": [...]}), all or nothing."""
        import asyncio

        return await asyncio.to_thread(self._append, topic, body)

    def close(self) -> None:
        if self._broker is not None:
            self._broker.close()


class LazyFeatureStore:
    """The project's online feature store behind the feature cache, opened on first use: a server
    without features never imports DuckDB or opens the registry."""

    def __init__(self, settings: Settings, caches) -> None:
        self.settings = settings
        self.caches = caches
        self._online = None

    def online(self):
        if self._online is None:
            from mlscale.errors import ConfigError
            from mlscale.features.store import FeatureStore, open_online_kv

            store = FeatureStore(self.settings, kv=self.caches.features(open_online_kv(self.settings)))
            online = store.online
            if not online.repo.views:
                raise ConfigError("no feature definitions are applied: run `mlscale features apply`")
            self._online = online
        return self._online

    async def handle_request(self, body, _tail):
        """``POST /v1/features``: online feature values for entity keys."""
        import asyncio

        from mlscale.features.serving import afeatures_request

        online = self._online or await asyncio.to_thread(self.online)
        return await afeatures_request(online, body)


def app_from_environment():
    """uvicorn's factory in each worker: rebuild the app from what the parent put in the environment."""
    settings = msgspec.json.decode(os.environ[SETTINGS_ENV], type=Settings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return build_app(settings, control_dir=Path(os.environ[STATE_ENV]), workers=int(os.environ[WORKERS_ENV]))


def check_grpc_port(host: str, http_port: int, grpc_port: int) -> None:
    """Refuse a gRPC port that is taken, before any worker starts. Workers bind it with SO_REUSEPORT
    (to share it between themselves), which would also let them share it silently with another
    server of the same user; a plain bind here fails instead, with a clear message."""
    import socket

    from mlscale.errors import ConfigError

    if grpc_port == http_port:
        raise ConfigError(f"--grpc-port {grpc_port} is also the HTTP --port: choose another, or 0 to turn gRPC off")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR, as the workers' sockets: a restart binds despite old connections in TIME_WAIT,
        # yet any socket listening on the port still makes this bind fail.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, grpc_port))
        except OSError as exc:
            raise ConfigError(
                f"cannot listen for gRPC on {host}:{grpc_port} ({exc.strerror}): choose another --grpc-port, "
                "or 0 to turn gRPC off"
            ) from None


def run_server(project: Settings) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests are drained before workers exit."""
    import uvicorn

    from mlscale.auth.tls import uvicorn_ssl_options
    from mlscale.errors import ConfigError
    from mlscale.serving.mlflow_registry import registry_from_settings
    from mlscale.serving.slow_clients import HEADER_TIMEOUT_ENV

    settings = project.server
    ssl_options = uvicorn_ssl_options(project.tls, project.resolve)
    repository = project.resolve(settings.model_repository)
    registry = registry_from_settings(settings, project.resolve)
    if registry is None and not repository.is_dir():
        raise ConfigError(f"{repository}: the model repository folder does not exist")
    if settings.workers < 1:
        raise ConfigError("--workers must be at least 1")
    if settings.grpc_port:
        check_grpc_port(settings.host, settings.port, settings.grpc_port)
    if registry is not None:  # before any worker: one clear error, and one download of each version
        registry.check()
    scratch = Path(tempfile.mkdtemp(prefix="mlscale-serve-"))
    (scratch / "metrics").mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(scratch / "metrics")
    os.environ[STATE_ENV] = str(scratch / "control")
    os.environ[WORKERS_ENV] = str(settings.workers)
    os.environ[SETTINGS_ENV] = msgspec.json.encode(project).decode()
    os.environ[HEADER_TIMEOUT_ENV] = str(settings.header_timeout)
    # One process per core already; BLAS threads on top would oversubscribe the cores.
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        uvicorn.run(
            "mlscale.serving.server:app_from_environment",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            loop="uvloop",
            # httptools plus a deadline on request headers (slow clients, silent connections).
            http="mlscale.serving.slow_clients:HeaderTimeoutProtocol",
            lifespan="on",
            access_log=False,
            # uvicorn's X-Forwarded-* rewriting: mlscale reads neither the client address nor the
            # scheme, and the middleware cost tens of microseconds per POST (bench/features, one-
            # entity POST /v1/features with the lean client: p50 0.193 -> 0.152 ms, medians of 3 runs).
            proxy_headers=False,
            log_level="warning",
            backlog=4096,
            timeout_keep_alive=30,
            timeout_graceful_shutdown=int(settings.graceful_timeout),
            **ssl_options,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

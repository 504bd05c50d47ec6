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

from mlscale.config import Settings

SETTINGS_ENV = "MLSCALE_SERVER_SETTINGS"
STATE_ENV = "MLSCALE_STATE_DIR"
WORKERS_ENV = "MLSCALE_WORKERS"


def build_app(settings: Settings, *, control_dir: Path | None = None, workers: int = 1):
    """The ASGI app for one worker process (also what tests embed)."""
    from mlscale.cache.factory import Caches
    from mlscale.serving.app import InferenceApp
    from mlscale.serving.control import WorkerControl
    from mlscale.serving.repository import ModelRepository

    caches = Caches(settings.cache, root=settings.root)
    repository = ModelRepository(settings.resolve(settings.server.model_repository),
                                 max_queue_size=settings.server.max_queue_size, caches=caches)
    control = WorkerControl(control_dir, workers) if control_dir is not None else None
    return InferenceApp(repository, settings.server, control=control)


def app_from_environment():
    """uvicorn's factory in each worker: rebuild the app from what the parent put in the environment."""
    settings = msgspec.json.decode(os.environ[SETTINGS_ENV], type=Settings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return build_app(settings, control_dir=Path(os.environ[STATE_ENV]), workers=int(os.environ[WORKERS_ENV]))


def run_server(project: Settings) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests are drained before workers exit."""
    import uvicorn

    from mlscale.errors import ConfigError

    settings = project.server
    repository = project.resolve(settings.model_repository)
    if not repository.is_dir():
        raise ConfigError(f"{repository}: the model repository folder does not exist")
    if settings.workers < 1:
        raise ConfigError("--workers must be at least 1")
    scratch = Path(tempfile.mkdtemp(prefix="mlscale-serve-"))
    (scratch / "metrics").mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(scratch / "metrics")
    os.environ[STATE_ENV] = str(scratch / "control")
    os.environ[WORKERS_ENV] = str(settings.workers)
    os.environ[SETTINGS_ENV] = msgspec.json.encode(project).decode()
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
            http="httptools",
            lifespan="on",
            access_log=False,
            log_level="warning",
            backlog=4096,
            timeout_keep_alive=30,
            timeout_graceful_shutdown=int(settings.graceful_timeout),
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

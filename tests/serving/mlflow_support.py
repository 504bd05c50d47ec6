"""A real MLflow tracking/registry server for tests, and registering models in it.

The server runs from its own venv (scripts/ensure-mlflow-server.sh builds it; the project venv holds
only mlflow-skinny, the client) on a fresh PostgreSQL database with served artifacts in a folder.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from serving_support import REPO_ROOT, free_port

# Its own venv's Python with ``-m mlflow``, not the ``mlflow`` script: a script's shebang names the
# folder the venv was built in, so a moved or re-linked checkout would find no interpreter.
MLFLOW_SERVER = REPO_ROOT / ".cache" / "mlflow-server-venv" / "bin" / "python"
MLFLOW_COMMAND = [str(MLFLOW_SERVER), "-m", "mlflow"]
# No job runner (a huey consumer process and a queue folder in /dev/shm it never removes): the tests
# use the registry and artifacts only.
SERVER_ENVIRONMENT = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


class MlflowServer:
    """``mlflow server`` with a PostgreSQL backend store (a database of its own, dropped on stop)."""

    def __init__(self, postgres_dsn: str, artifacts: Path, log_file: Path) -> None:
        import psycopg

        if not MLFLOW_SERVER.exists():
            pytest.skip("no MLflow server venv in .cache: run scripts/ensure-mlflow-server.sh (make test does)")
        self.postgres_dsn = postgres_dsn
        self.database = f"mlflow_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(postgres_dsn, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{self.database}"')
        base = postgres_dsn.rsplit("/", 1)[0]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_file = log_file
        self._log = log_file.open("wb")
        self.process = subprocess.Popen(
            [
                *MLFLOW_COMMAND,
                "server",
                "--backend-store-uri",
                f"{base.replace('postgresql://', 'postgresql+psycopg2://')}/{self.database}",
                "--serve-artifacts",
                "--artifacts-destination",
                str(artifacts),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **SERVER_ENVIRONMENT},
        )
        try:
            self._wait_ready(180.0)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.log_file.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"mlflow server not ready after {timeout}s: {self.log_file.read_text()[-3000:]}")

    def stop(self) -> None:
        import psycopg

        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        with psycopg.connect(self.postgres_dsn, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')


def register_constant_model(client, name: str, value: float, alias: str | None = None) -> str:
    """Register a scikit-learn model that answers ``value`` for every iris row; returns its version.

    Through the client only (mlflow-skinny): save the model, log it as a run's artifacts (the
    server stores them), create the model version from them, optionally point an alias at it.
    """
    import mlflow.sklearn
    from mlflow.exceptions import MlflowException
    from mlflow.models import infer_signature
    from sklearn.datasets import load_iris
    from sklearn.dummy import DummyRegressor

    x, y = load_iris(return_X_y=True)
    model = DummyRegressor(strategy="constant", constant=value).fit(x, y)
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "model"
        signature = infer_signature(x, np.asarray(model.predict(x)))
        mlflow.sklearn.save_model(
            model, str(folder), signature=signature, serialization_format="cloudpickle", pip_requirements=["mlflow"]
        )
        run = client.create_run(experiment_id="0")
        client.log_artifacts(run.info.run_id, str(folder), "model")
        client.set_terminated(run.info.run_id)
    version = client.create_model_version(name, f"{run.info.artifact_uri}/model", run.info.run_id)
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return str(version.version)


def register_broken_version(client, name: str) -> str:
    """Register a version whose MLmodel file no MLflow can read (it fails to load in the server)."""
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "model"
        folder.mkdir()
        (folder / "MLmodel").write_text("flavors: [this is: not an MLmodel\n")
        run = client.create_run(experiment_id="0")
        client.log_artifacts(run.info.run_id, str(folder), "model")
        client.set_terminated(run.info.run_id)
    return str(client.create_model_version(name, f"{run.info.artifact_uri}/model", run.info.run_id).version)

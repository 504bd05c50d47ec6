"""Optional runtimes: a missing extra is named in the error, bad model files are config errors, and
threads are shared out among the workers. Missing packages are simulated for real, with an import
blocker on sys.meta_path in a separate interpreter (no mocks)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from serving_support import PICKY_MODEL, REPO_ROOT, RunningServer, write_python_model

from mlscale.errors import ConfigError
from mlscale.serving.model_config import ModelConfig
from mlscale.serving.runtimes import load_runtime
from mlscale.serving.runtimes.base import WORKERS_ENV, worker_threads

BLOCKER = """
import os
import sys

BLOCKED = set(os.environ["BLOCKED_PACKAGES"].split(","))


class Blocker:
    '''Behaves as if the packages were not installed.'''

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None


sys.meta_path.insert(0, Blocker())
"""

PICKY_TOML = (
    '[[inputs]]\nname = "x"\ndatatype = "FP64"\nshape = [-1, 2]\n'
    '[[outputs]]\nname = "y"\ndatatype = "FP64"\nshape = [-1, 2]\n'
)

LOAD = """
from pathlib import Path
from mlscale.errors import ConfigError
from mlscale.serving.model_config import model_config
from mlscale.serving.runtimes import load_runtime

folder = Path(sys.argv[1])
try:
    load_runtime(folder, model_config(folder.parent, folder))
except ConfigError as exc:
    print(exc)
    raise SystemExit(3)
"""


@pytest.mark.parametrize(
    ("marker", "blocked", "extra"),
    [
        ("model.pt", "torch", "torch"),
        ("model.pt2", "torch", "torch"),
        ("model.json", "xgboost", "xgboost"),
        ("model.txt", "lightgbm", "lightgbm"),
        ("MLmodel", "mlflow", "mlflow"),
        ("modules.json", "sentence_transformers", "text"),
    ],
)
def test_missing_package_names_the_extra_to_install(tmp_path, marker, blocked, extra):
    folder = tmp_path / "model" / "1"
    folder.mkdir(parents=True)
    (folder / marker).write_text("{}")
    result = subprocess.run(
        [sys.executable, "-c", BLOCKER + LOAD, str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "BLOCKED_PACKAGES": blocked},
    )
    assert result.returncode == 3, result.stderr
    assert f"pip install 'mlscale[{extra}]'" in result.stdout
    assert repr(blocked) in result.stdout


def test_server_reports_the_missing_extra_in_the_repository_index(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), str(REPO_ROOT / "src")]))
    monkeypatch.setenv("BLOCKED_PACKAGES", "xgboost")
    repository = tmp_path / "models"
    # Version 1 loads (the server becomes ready); version 2 needs the blocked package.
    write_python_model(repository, "boosted", PICKY_MODEL, PICKY_TOML)
    (repository / "boosted" / "2").mkdir(parents=True)
    (repository / "boosted" / "2" / "model.json").write_text("{}")
    server = RunningServer(repository, workers=1)
    try:
        index = httpx.get(server.url + "/v2/repository/index", timeout=10).json()
        row = next(r for r in index if r.get("version") == "2")
        assert row["state"] == "UNAVAILABLE"
        assert "pip install 'mlscale[xgboost]'" in row["reason"]
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("marker", "library"), [("model.json", "XGBoost"), ("model.txt", "LightGBM"), ("model.pt2", "torch.export")]
)
def test_a_file_that_is_not_a_model_is_a_config_error(tmp_path, marker, library):
    (tmp_path / marker).write_text("not a model")
    with pytest.raises(ConfigError, match=f"cannot load the {library}"):
        load_runtime(tmp_path, ModelConfig())


def test_declared_classes_must_match_the_model(tmp_path):
    import lightgbm as lgb
    import numpy as np

    x = np.random.default_rng(0).normal(size=(200, 3))
    booster = lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(x, (x[:, 0] > 0).astype(int)), 3)
    booster.save_model(str(tmp_path / "model.txt"))
    with pytest.raises(ConfigError, match="2 class labels"):
        load_runtime(tmp_path, ModelConfig(parameters={"classes": ["a", "b", "c"]}))


def test_threads_are_the_cores_shared_among_workers(monkeypatch):
    cores = os.cpu_count() or 1
    monkeypatch.setenv(WORKERS_ENV, "1")
    assert worker_threads(ModelConfig()) == cores
    monkeypatch.setenv(WORKERS_ENV, str(cores * 4))
    assert worker_threads(ModelConfig()) == 1
    assert worker_threads(ModelConfig(parameters={"threads": 3})) == 3
    with pytest.raises(ConfigError, match="threads"):
        worker_threads(ModelConfig(parameters={"threads": 0}))


def test_unknown_runtime_name_lists_the_known_ones(tmp_path: Path):
    (tmp_path / "model.toml").write_text('runtime = "tensorflow"\n')
    from mlscale.serving.model_config import model_config

    with pytest.raises(ConfigError, match="xgboost"):
        model_config(tmp_path)

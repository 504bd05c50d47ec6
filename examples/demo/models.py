"""Demo models trained locally in seconds (no downloads): the datasets ship with scikit-learn.

- ``iris``: a random-forest classifier (scikit-learn, model.joblib), two versions with aliases
  ``production`` and ``canary`` and a 90/10 traffic split.
- ``iris-onnx``: a logistic regression exported to ONNX (model.onnx).
- ``diabetes``: a gradient-boosting regressor on the diabetes dataset (a second kind of tabular model).
- ``mlp-onnx``: a small multi-layer perceptron on 16 features exported to ONNX.
"""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
from sklearn.datasets import load_diabetes, load_iris
from sklearn.ensemble import GradientBoostingRegressor, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier


def _version_dir(repository: Path, model: str, version: str) -> Path:
    folder = repository / model / version
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _to_onnx(model, features: int) -> bytes:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    onnx_model = to_onnx(
        model,
        initial_types=[("input", FloatTensorType([None, features]))],
        options={id(model): {"zipmap": False}},
        target_opset=17,
    )
    return onnx_model.SerializeToString()


def train_iris(repository: Path, versions: tuple[str, ...] = ("1",), trees: int = 20) -> None:
    x, y = load_iris(return_X_y=True)
    for i, version in enumerate(versions):
        model = RandomForestClassifier(n_estimators=trees + 10 * i, random_state=i).fit(x, y)
        joblib.dump(model, _version_dir(repository, "iris", version) / "model.joblib")


def train_iris_onnx(repository: Path) -> None:
    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500).fit(x.astype(np.float32), y)
    (_version_dir(repository, "iris-onnx", "1") / "model.onnx").write_bytes(_to_onnx(model, 4))


def train_diabetes(repository: Path) -> None:
    x, y = load_diabetes(return_X_y=True)
    model = GradientBoostingRegressor(n_estimators=50, random_state=0).fit(x, y)
    joblib.dump(model, _version_dir(repository, "diabetes", "1") / "model.joblib")


def train_mlp_onnx(repository: Path, features: int = 16) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, features)).astype(np.float32)
    y = (x[:, :4].sum(axis=1) > 0).astype(int)
    model = MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=200, random_state=0).fit(x, y)
    (_version_dir(repository, "mlp-onnx", "1") / "model.onnx").write_bytes(_to_onnx(model, features))


def build_repository(repository: Path) -> Path:
    """Train every demo model into ``repository`` and write the iris aliases and traffic split."""
    repository.mkdir(parents=True, exist_ok=True)
    train_iris(repository, versions=("1", "2"))
    (repository / "iris" / "model.toml").write_text(
        "# version 1 serves 90% of unversioned calls, version 2 (canary) 10%\n"
        'aliases = { production = "1", canary = "2" }\n'
        "traffic = { production = 90, canary = 10 }\n"
    )
    train_iris_onnx(repository)
    train_diabetes(repository)
    train_mlp_onnx(repository)
    return repository


def write_iris_reference(path: Path) -> None:
    """The iris training inputs as the drift reference, named as the payload log names them."""
    import pandas as pd

    x, _ = load_iris(return_X_y=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({f"input_{j}": x[:, j] for j in range(x.shape[1])}).to_parquet(path)

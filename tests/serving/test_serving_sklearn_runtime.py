"""The scikit-learn runtime answers exactly as scikit-learn does, with or without its ONNX twin."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_diabetes, load_iris
from sklearn.ensemble import GradientBoostingRegressor, RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from mlscale.errors import ConfigError
from mlscale.serving.model_config import ModelConfig
from mlscale.serving.runtimes.sklearn import SklearnRuntime


def _load(tmp_path: Path, model, **parameters) -> SklearnRuntime:
    joblib.dump(model, tmp_path / "model.joblib")
    runtime = SklearnRuntime()
    runtime.load(tmp_path, ModelConfig(parameters=parameters))
    return runtime


def test_linear_model_runs_on_its_exact_onnx_twin(tmp_path):
    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500).fit(x, y)
    runtime = _load(tmp_path, model)
    assert runtime.twin is not None
    out = runtime.predict({"input": x})
    np.testing.assert_array_equal(out["label"], model.predict(x))
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(x), rtol=0, atol=1e-12)
    assert set(runtime.predict({"input": x}, ("label",))) == {"label"}


def test_model_whose_twin_differs_keeps_scikit_learn(tmp_path):
    x, y = load_iris(return_X_y=True)
    model = RandomForestClassifier(n_estimators=5, random_state=0).fit(x, y)
    runtime = _load(tmp_path, model)
    assert runtime.twin is None  # float32 thresholds in ONNX trees differ beyond 1e-12
    np.testing.assert_array_equal(runtime.predict({"input": x})["probabilities"], model.predict_proba(x))


def test_regressor_reports_prediction_and_accelerate_off_is_respected(tmp_path):
    x, y = load_diabetes(return_X_y=True)
    model = GradientBoostingRegressor(n_estimators=10, random_state=0).fit(x, y)
    runtime = _load(tmp_path, model, accelerate="off")
    assert runtime.twin is None
    assert [o.name for o in runtime.outputs] == ["prediction"]
    np.testing.assert_array_equal(runtime.predict({"input": x})["prediction"], model.predict(x))


def test_unknown_accelerate_value_is_a_config_error(tmp_path):
    x, y = load_iris(return_X_y=True)
    with pytest.raises(ConfigError, match="accelerate"):
        _load(tmp_path, LogisticRegression(max_iter=300).fit(x, y), accelerate="gpu")


def test_file_that_is_not_a_model_is_a_config_error(tmp_path):
    (tmp_path / "model.joblib").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="cannot load"):
        SklearnRuntime().load(tmp_path, ModelConfig())

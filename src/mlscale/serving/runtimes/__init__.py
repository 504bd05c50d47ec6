"""Runtimes: how a model file on disk becomes ``predict(dict of arrays) -> dict of arrays``."""

from __future__ import annotations

from pathlib import Path

from mlscale.errors import ConfigError
from mlscale.serving.model_config import RUNTIME_NAMES, ModelConfig
from mlscale.serving.runtimes.base import Runtime, TensorSpec

# runtime name -> (module, class, the files that identify it in a version folder). Order matters
# when guessing: an MLflow folder also holds a booster file, so MLmodel is looked for first, and
# the boosters' generic names (model.json, model.txt) come last, after model.py.
_RUNTIMES = {
    "mlflow": ("mlscale.serving.runtimes.mlflow_model", "MlflowRuntime", ("MLmodel",)),
    "onnx": ("mlscale.serving.runtimes.onnx", "OnnxRuntime", ("model.onnx",)),
    "sklearn": ("mlscale.serving.runtimes.sklearn", "SklearnRuntime", ("model.joblib",)),
    "torchscript": ("mlscale.serving.runtimes.pytorch", "TorchScriptRuntime", ("model.pt",)),
    "torch_export": ("mlscale.serving.runtimes.pytorch", "TorchExportRuntime", ("model.pt2",)),
    "python": ("mlscale.serving.runtimes.python", "PythonRuntime", ("model.py",)),
    "sentence_transformers": ("mlscale.serving.runtimes.text", "SentenceEmbeddingRuntime", ("modules.json",)),
    "xgboost": ("mlscale.serving.runtimes.xgboost_booster", "XGBoostRuntime", ("model.json", "model.ubj")),
    "lightgbm": ("mlscale.serving.runtimes.lightgbm_booster", "LightGBMRuntime", ("model.txt",)),
}
assert set(_RUNTIMES) == set(RUNTIME_NAMES), "model_config.RUNTIME_NAMES and the runtime table disagree"


def runtime_name(version_dir: Path, config: ModelConfig) -> str:
    """The runtime named in the config, or the one whose model file is in the folder."""
    if config.runtime:
        return config.runtime
    for name, (_, _, markers) in _RUNTIMES.items():
        if any((version_dir / marker).is_file() for marker in markers):
            return name
    every = ", ".join(m for _, _, markers in _RUNTIMES.values() for m in markers)
    raise ConfigError(f"{version_dir}: no model file ({every}) and no runtime in model.toml")


def load_runtime(version_dir: Path, config: ModelConfig) -> Runtime:
    """Import the runtime's module lazily (torch, xgboost, mlflow... are optional extras) and load."""
    import importlib

    module_name, class_name, _ = _RUNTIMES[runtime_name(version_dir, config)]
    runtime: Runtime = getattr(importlib.import_module(module_name), class_name)()
    runtime.load(version_dir, config)
    return runtime


__all__ = ["Runtime", "TensorSpec", "load_runtime", "runtime_name"]

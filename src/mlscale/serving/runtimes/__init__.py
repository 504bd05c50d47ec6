"""Runtimes: how a model file on disk becomes ``predict(dict of arrays) -> dict of arrays``."""

from __future__ import annotations

from pathlib import Path

from mlscale.errors import ConfigError
from mlscale.serving.model_config import ModelConfig
from mlscale.serving.runtimes.base import Runtime, TensorSpec

# runtime name -> (module, class, the file that identifies it in a version folder)
_RUNTIMES = {
    "onnx": ("mlscale.serving.runtimes.onnx", "OnnxRuntime", "model.onnx"),
    "sklearn": ("mlscale.serving.runtimes.sklearn", "SklearnRuntime", "model.joblib"),
    "torchscript": ("mlscale.serving.runtimes.torchscript", "TorchScriptRuntime", "model.pt"),
    "python": ("mlscale.serving.runtimes.python", "PythonRuntime", "model.py"),
}


def runtime_name(version_dir: Path, config: ModelConfig) -> str:
    """The runtime named in the config, or the one whose model file is in the folder."""
    if config.runtime:
        return config.runtime
    for name, (_, _, marker) in _RUNTIMES.items():
        if (version_dir / marker).is_file():
            return name
    markers = ", ".join(m for _, _, m in _RUNTIMES.values())
    raise ConfigError(f"{version_dir}: no model file ({markers}) and no runtime in model.toml")


def load_runtime(version_dir: Path, config: ModelConfig) -> Runtime:
    """Import the runtime's module lazily (torch is optional) and load the model with it."""
    import importlib

    module_name, class_name, _ = _RUNTIMES[runtime_name(version_dir, config)]
    runtime: Runtime = getattr(importlib.import_module(module_name), class_name)()
    runtime.load(version_dir, config)
    return runtime


__all__ = ["Runtime", "TensorSpec", "load_runtime", "runtime_name"]

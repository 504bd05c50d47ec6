"""The Runtime interface: load a model from a folder, predict on a dict of arrays (batch axis 0)."""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from mlscale.errors import ConfigError
from mlscale.serving.model_config import ModelConfig, TensorConfig

# Set by the server in each worker's environment: how many worker processes share the cores.
WORKERS_ENV = "MLSCALE_WORKERS"


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A model's input or output as metadata reports it; -1 in shape means any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def describe(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_config(cls, tensor: TensorConfig) -> TensorSpec:
        return cls(tensor.name, tensor.datatype, tuple(tensor.shape))


class Runtime(ABC):
    """One loaded model version. Subclasses fill ``inputs`` and ``outputs`` in ``load``."""

    platform: str = "unknown"

    def __init__(self) -> None:
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []

    @abstractmethod
    def load(self, path: Path, config: ModelConfig) -> None:
        """Load the model from its version folder; raise with a clear message when it cannot."""

    @abstractmethod
    def predict(self, inputs: dict[str, np.ndarray], outputs: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Outputs for a batch of inputs; every output keeps the inputs' batch axis 0. ``outputs``
        names the outputs the caller needs (None: all); a runtime may skip computing the others."""

    def unload(self) -> None:  # noqa: B027 - optional hook
        """Release what the model holds (sessions, memory)."""

    def apply_declared(self, config: ModelConfig) -> None:
        """Declared inputs/outputs in model.toml win over what the model itself reports."""
        if config.inputs:
            self.inputs = [TensorSpec.from_config(t) for t in config.inputs]
        if config.outputs:
            self.outputs = [TensorSpec.from_config(t) for t in config.outputs]


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import an optional dependency, or fail with the extra that installs it: the user sees
    ``pip install 'mlscale[xgboost]'`` instead of a bare ModuleNotFoundError from a worker."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"{what} need the Python package {module!r} ({exc}): pip install 'mlscale[{extra}]'"
        ) from None


def worker_threads(config: ModelConfig) -> int:
    """Threads one model may use inside one worker: ``parameters.threads`` when set, else the
    cores divided among the server's workers, so N workers never run N x cores threads."""
    declared = config.parameters.get("threads")
    if declared is not None:
        if not isinstance(declared, int) or declared < 1:
            raise ConfigError(f"parameters.threads must be a positive integer, got {declared!r}")
        return declared
    workers = max(1, int(os.environ.get(WORKERS_ENV, "1") or 1))
    return max(1, (os.cpu_count() or 1) // workers)


def model_file(path: Path, config: ModelConfig, candidates: tuple[str, ...]) -> Path:
    """The model file of a version folder: ``parameters.file`` or the first candidate present."""
    if "file" in config.parameters:
        file = path / str(config.parameters["file"])
        if not file.is_file():
            raise ConfigError(f"{file}: no such model file")
        return file
    for name in candidates:
        if (path / name).is_file():
            return path / name
    raise ConfigError(f"{path}: no model file ({', '.join(candidates)})")

"""The Runtime interface: load a model from a folder, predict on a dict of arrays (batch axis 0)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlscale.serving.model_config import ModelConfig, TensorConfig


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

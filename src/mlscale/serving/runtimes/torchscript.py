"""TorchScript models (``model.pt``); needs the optional ``torch`` extra."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlscale.errors import ConfigError
from mlscale.serving.model_config import ModelConfig
from mlscale.serving.runtimes.base import Runtime

MODEL_FILE = "model.pt"


class TorchScriptRuntime(Runtime):
    """Calls the scripted module with the declared inputs in order; outputs map to declared names."""

    platform = "pytorch_libtorch"

    def load(self, path: Path, config: ModelConfig) -> None:
        try:
            import torch
        except ImportError:
            raise ConfigError("TorchScript models need PyTorch: pip install 'mlscale[torch]'") from None
        self._torch = torch
        torch.set_num_threads(int(config.parameters.get("threads", 1)))
        file = path / config.parameters.get("file", MODEL_FILE)
        try:
            self.module = torch.jit.load(str(file), map_location="cpu").eval()
        except Exception as exc:
            raise ConfigError(f"{file}: cannot load the TorchScript model: {exc}") from None
        self.apply_declared(config)
        if not self.inputs or not self.outputs:
            raise ConfigError(f"{path}: TorchScript models need inputs and outputs in model.toml")

    def predict(self, inputs: dict[str, np.ndarray], outputs: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        tensors = [self._torch.from_numpy(np.ascontiguousarray(inputs[s.name])) for s in self.inputs]
        with self._torch.inference_mode():
            result = self.module(*tensors)
        values = result if isinstance(result, (tuple, list)) else (result,)
        return {spec.name: value.numpy() for spec, value in zip(self.outputs, values, strict=True)}

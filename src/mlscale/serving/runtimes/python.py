"""A plain Python class in ``model.py``: for pre/post-processing or models no runtime covers.

The class (``Model`` unless ``parameters.class`` says otherwise) may define ``load(path)`` and must
define ``predict(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]``. Its inputs and outputs
come from model.toml or from class attributes ``inputs`` / ``outputs`` (lists of dicts).
"""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import numpy as np

from mlscale.errors import ConfigError
from mlscale.serving.model_config import ModelConfig, TensorConfig
from mlscale.serving.runtimes.base import Runtime, TensorSpec

MODEL_FILE = "model.py"
_module_ids = itertools.count()


class PythonRuntime(Runtime):
    """Loads the user's class from its file under a unique module name, so versions never clash."""

    platform = "python"

    def load(self, path: Path, config: ModelConfig) -> None:
        file = path / config.parameters.get("file", MODEL_FILE)
        class_name = config.parameters.get("class", "Model")
        spec = importlib.util.spec_from_file_location(f"mlscale_user_model_{next(_module_ids)}", file)
        if spec is None or spec.loader is None or not file.is_file():
            raise ConfigError(f"{file}: no such Python model file")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
            cls = getattr(module, class_name)
        except AttributeError:
            raise ConfigError(f"{file}: no class named {class_name!r}") from None
        except Exception as exc:
            raise ConfigError(f"{file}: cannot import: {exc}") from None
        self.model = cls()
        if hasattr(self.model, "load"):
            self.model.load(path)
        for attribute in ("inputs", "outputs"):
            declared = getattr(self.model, attribute, None) or []
            specs = [TensorSpec.from_config(TensorConfig(**d)) for d in declared]
            setattr(self, attribute, specs)
        self.apply_declared(config)
        if not self.inputs or not self.outputs:
            raise ConfigError(f"{file}: declare inputs and outputs in model.toml or on the class")

    def predict(self, inputs: dict[str, np.ndarray], outputs: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        return {name: np.asarray(value) for name, value in self.model.predict(inputs).items()}

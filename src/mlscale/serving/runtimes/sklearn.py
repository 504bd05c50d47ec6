"""scikit-learn models saved with joblib (``model.joblib``)."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np

from mlscale.errors import ConfigError, InvalidInput
from mlscale.serving.datatypes import v2_datatype
from mlscale.serving.model_config import ModelConfig
from mlscale.serving.runtimes.base import Runtime, TensorSpec

MODEL_FILE = "model.joblib"


class SklearnRuntime(Runtime):
    """Serves ``predict`` (as ``label`` or ``prediction``) and ``predict_proba`` (as ``probabilities``)."""

    platform = "scikit-learn"

    def load(self, path: Path, config: ModelConfig) -> None:
        file = path / config.parameters.get("file", MODEL_FILE)
        try:
            self.model = joblib.load(file)
        except FileNotFoundError:
            raise ConfigError(f"{file}: no such model file") from None
        except Exception as exc:
            raise ConfigError(f"{file}: cannot load the scikit-learn model: {exc}") from None
        if not hasattr(self.model, "predict"):
            raise ConfigError(f"{file}: the object has no predict method")
        features = getattr(self.model, "n_features_in_", -1)
        self.inputs = [TensorSpec("input", "FP64", (-1, features))]
        self._has_proba = hasattr(self.model, "predict_proba")
        classes = getattr(self.model, "classes_", None)
        if classes is not None:
            self._label_name = "label"
            outputs = [TensorSpec("label", v2_datatype(np.asarray(classes).dtype), (-1,))]
            if self._has_proba:
                outputs.append(TensorSpec("probabilities", "FP64", (-1, len(classes))))
        else:
            self._label_name = "prediction"
            targets = getattr(self.model, "n_outputs_", 1)
            shape = (-1,) if targets == 1 else (-1, targets)
            outputs = [TensorSpec("prediction", "FP64", shape)]
            self._has_proba = False
        self.outputs = outputs
        self.apply_declared(config)
        self._input_name = self.inputs[0].name

    def predict(self, inputs: dict[str, np.ndarray], outputs: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        features = inputs[self._input_name]
        if features.ndim != 2:
            raise InvalidInput(f"input {self._input_name!r} must be 2-D [rows, features]")
        result = {}
        if outputs is None or self._label_name in outputs:
            result[self._label_name] = np.asarray(self.model.predict(features))
        if self._has_proba and (outputs is None or "probabilities" in outputs):
            result["probabilities"] = np.asarray(self.model.predict_proba(features), dtype=np.float64)
        return result

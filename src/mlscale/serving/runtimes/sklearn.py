"""scikit-learn models saved with joblib (``model.joblib``).

``parameters.accelerate`` in model.toml: "auto" (default) runs the model through an exact float64
ONNX twin when one exists and agrees with scikit-learn to 1e-12 on a probe sample; "onnx" accepts
a twin within 1e-6; "off" always calls scikit-learn.
"""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np

from mlscale.errors import ConfigError, InvalidInput
from mlscale.serving.datatypes import v2_datatype
from mlscale.serving.model_config import ModelConfig
from mlscale.serving.runtimes.base import Runtime, TensorSpec
from mlscale.serving.runtimes.sklearn_onnx import build_twin

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
        accelerate = config.parameters.get("accelerate", "auto")
        if accelerate not in ("auto", "onnx", "off"):
            raise ConfigError(f"{path}: parameters.accelerate must be auto, onnx or off")
        self.twin = None
        if accelerate != "off" and self.inputs[0].datatype == "FP64":
            tolerance = 1e-12 if accelerate == "auto" else 1e-6
            self.twin = build_twin(self.model, features, self._label_name, self._has_proba, tolerance)
        if self.twin is not None:
            self.platform = "scikit-learn (onnxruntime)"

    def predict(self, inputs: dict[str, np.ndarray], outputs: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        features = inputs[self._input_name]
        if features.ndim != 2:
            raise InvalidInput(f"input {self._input_name!r} must be 2-D [rows, features]")
        if self.twin is not None:
            wanted = list(outputs) if outputs else [o.name for o in self.outputs]
            result = self.twin.run(features, wanted)
            if self._label_name in result and self.outputs[0].shape == (-1,):
                result[self._label_name] = result[self._label_name].reshape(-1)
            return result
        result = {}
        if outputs is None or self._label_name in outputs:
            result[self._label_name] = np.asarray(self.model.predict(features))
        if self._has_proba and (outputs is None or "probabilities" in outputs):
            result["probabilities"] = np.asarray(self.model.predict_proba(features), dtype=np.float64)
        return result

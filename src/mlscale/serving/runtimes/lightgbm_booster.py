"""LightGBM boosters from their native text file (``model.txt``; MLflow's ``model.lgb``).

``binary`` and ``multiclass`` objectives answer ``label`` and ``probabilities`` (FP64, as
LightGBM computes them); every other objective answers ``prediction``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlscale.errors import ConfigError
from mlscale.serving.model_config import ModelConfig
from mlscale.serving.runtimes.base import Runtime, TensorSpec, model_file, require, worker_threads
from mlscale.serving.runtimes.boosters import (
    binary_to_two_columns,
    class_labels,
    classifier_outputs,
    classify,
    features_of,
)

MODEL_FILES = ("model.txt", "model.lgb")


class LightGBMRuntime(Runtime):
    platform = "lightgbm"

    def load(self, path: Path, config: ModelConfig) -> None:
        lgb = require("lightgbm", "lightgbm", "LightGBM models")
        file = model_file(path, config, MODEL_FILES)
        try:
            self.booster = lgb.Booster(model_file=str(file))
        except Exception as exc:
            raise ConfigError(f"{file}: cannot load the LightGBM model: {exc}") from None
        self.threads = worker_threads(config)
        self.objective = str(self.booster.params.get("objective", "regression")).split()[0]
        self.inputs = [TensorSpec("input", "FP64", (-1, self.booster.num_feature()))]
        if self.objective in ("binary", "multiclass", "softmax"):
            classes = 2 if self.objective == "binary" else self.booster.num_model_per_iteration()
            self.labels = class_labels(config, classes)
            self.outputs = classifier_outputs(self.labels, "FP64")
        else:
            self.labels = None
            self.outputs = [TensorSpec("prediction", "FP64", (-1,))]
        self.apply_declared(config)
        self._input_name = self.inputs[0].name

    def predict(self, inputs: dict[str, np.ndarray], outputs: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        scores = self.booster.predict(features_of(inputs, self._input_name), num_threads=self.threads)
        if self.labels is None:
            return {"prediction": np.asarray(scores)}
        if self.objective == "binary":
            scores = binary_to_two_columns(scores)
        return classify(np.asarray(scores), self.labels, outputs)

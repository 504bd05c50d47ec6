"""XGBoost boosters from their native files (``model.json``, ``model.ubj``; MLflow's ``model.xgb``).

Classifiers (``binary:logistic``, ``multi:softprob``) answer ``label`` and ``probabilities``;
``multi:softmax`` and ``binary:hinge`` answer ``label`` only; every other objective answers
``prediction``. ``inplace_predict`` runs without building a DMatrix per batch.
"""

from __future__ import annotations

import json
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

MODEL_FILES = ("model.json", "model.ubj", "model.xgb")


class XGBoostRuntime(Runtime):
    platform = "xgboost"

    def load(self, path: Path, config: ModelConfig) -> None:
        xgb = require("xgboost", "xgboost", "XGBoost models")
        file = model_file(path, config, MODEL_FILES)
        try:
            self.booster = xgb.Booster(model_file=str(file))
        except Exception as exc:
            raise ConfigError(f"{file}: cannot load the XGBoost model: {exc}") from None
        self.booster.set_param({"nthread": worker_threads(config)})
        learner = json.loads(self.booster.save_config())["learner"]
        self.objective = learner["objective"]["name"]
        parameters = learner["learner_model_param"]
        classes = max(2, int(parameters.get("num_class", "0")))
        targets = int(parameters.get("num_target", "1"))
        self.inputs = [TensorSpec("input", "FP32", (-1, self.booster.num_features()))]
        if self.objective in ("binary:logistic", "multi:softprob"):
            self.labels = class_labels(config, classes)
            self.outputs = classifier_outputs(self.labels, "FP32")
        elif self.objective in ("multi:softmax", "binary:hinge"):
            self.labels = class_labels(config, classes)
            self.outputs = classifier_outputs(self.labels, "FP32")[:1]
        else:
            self.labels = None
            self.outputs = [TensorSpec("prediction", "FP32", (-1,) if targets == 1 else (-1, targets))]
        self.apply_declared(config)
        self._input_name = self.inputs[0].name

    def predict(self, inputs: dict[str, np.ndarray], outputs: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        scores = self.booster.inplace_predict(features_of(inputs, self._input_name))
        if self.objective == "binary:logistic":
            return classify(binary_to_two_columns(scores), self.labels, outputs)
        if self.objective == "multi:softprob":
            return classify(scores, self.labels, outputs)
        if self.labels is not None:  # softmax / hinge: the class index itself
            return {"label": self.labels[scores.astype(np.int64)]}
        return {"prediction": scores}

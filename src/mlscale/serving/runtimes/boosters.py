"""What gradient-boosted classifiers share: turning scores into classes and probabilities.

Native booster files keep class indices, not the user's labels (the scikit-learn wrappers encode
labels to 0..k-1 before training), so labels are the indices unless ``parameters.classes`` in
model.toml lists them in index order.
"""

from __future__ import annotations

import numpy as np

from mlscale.errors import ConfigError, InvalidInput
from mlscale.serving.model_config import ModelConfig
from mlscale.serving.runtimes.base import TensorSpec


def class_labels(config: ModelConfig, count: int) -> np.ndarray:
    """The label of each class index: ``parameters.classes`` or 0..count-1."""
    declared = config.parameters.get("classes")
    if declared is None:
        return np.arange(count, dtype=np.int64)
    if not isinstance(declared, list) or len(declared) != count:
        raise ConfigError(f"parameters.classes must list the model's {count} class labels in index order")
    if all(isinstance(c, int) and not isinstance(c, bool) for c in declared):
        return np.asarray(declared, dtype=np.int64)
    return np.asarray([str(c).encode() for c in declared], dtype=object)


def classifier_outputs(labels: np.ndarray, probability_datatype: str) -> list[TensorSpec]:
    label_type = "INT64" if labels.dtype != object else "BYTES"
    return [
        TensorSpec("label", label_type, (-1,)),
        TensorSpec("probabilities", probability_datatype, (-1, len(labels))),
    ]


def binary_to_two_columns(positive: np.ndarray) -> np.ndarray:
    """A binary model's P(class 1) as the [P(0), P(1)] rows multi-class models return."""
    return np.stack([1 - positive, positive], axis=1)


def classify(probabilities: np.ndarray, labels: np.ndarray, outputs: tuple[str, ...] | None) -> dict:
    """Label = the most probable class (ties: the lower index, as scikit-learn's argmax)."""
    result = {}
    if outputs is None or "label" in outputs:
        result["label"] = labels[np.argmax(probabilities, axis=1)]
    if outputs is None or "probabilities" in outputs:
        result["probabilities"] = probabilities
    return result


def features_of(inputs: dict[str, np.ndarray], name: str) -> np.ndarray:
    features = inputs[name]
    if features.ndim != 2:
        raise InvalidInput(f"input {name!r} must be 2-D [rows, features]")
    return features

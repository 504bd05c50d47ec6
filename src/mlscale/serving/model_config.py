"""A model's settings: ``model.toml`` beside its versions and inside each version folder.

The model-level file holds what spans versions (aliases, traffic split, defaults); a version's own
file overrides the defaults for that version. Both are validated here, so a typo is reported with
the file and the field instead of surfacing as a strange runtime failure.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import msgspec

from mlscale.cache.settings import ModelCacheSettings
from mlscale.errors import ConfigError
from mlscale.serving.datatypes import V2_TO_NUMPY

CONFIG_FILE = "model.toml"
# The runtimes a model.toml may name (runtimes/__init__.py maps each to its implementation).
RUNTIME_NAMES = (
    "mlflow",
    "onnx",
    "sklearn",
    "torchscript",
    "torch_export",
    "xgboost",
    "lightgbm",
    "sentence_transformers",
    "python",
)


class TensorConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A declared input or output: name, v2 datatype, shape with -1 for any size."""

    name: str
    datatype: str
    shape: list[int]


class FeaturesConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Online features joined into the model's input: the request carries entity ids only."""

    # Feature service (or list of "view:feature") whose values, in order, make the model input.
    service: str | list[str]
    # The request input holding the entity ids (a 1-D INT64 or BYTES tensor), e.g. "driver_id".
    entity_key: str
    # The model input the features fill; defaults to the model's first input.
    input: str = ""
    # Missing or stale entities: None is an error (400); a number or {feature: number} fills them.
    defaults: float | dict[str, float] | None = None


class ModelConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Everything a user can set for a model or one of its versions."""

    # One of RUNTIME_NAMES; empty means: guess from the files in the version folder.
    runtime: str = ""
    inputs: list[TensorConfig] | None = None
    outputs: list[TensorConfig] | None = None
    # Adaptive batching: concurrent requests are joined on axis 0 up to this many rows (1 = off).
    max_batch_size: int = 64
    # Seconds to wait for a batch to fill; 0 takes whatever is queued at once (lowest latency).
    max_delay: float = 0.0
    # Hard bound of waiting requests (503 with Retry-After beyond it); defaults to the server's.
    max_queue_size: int | None = None
    # Requests that may wait at the door for room in the queue; defaults to the server's.
    max_waiting: int | None = None
    # Queue-delay admission (seconds): the queue holds what drains within the target, other
    # requests wait at the door up to max_queue_wait. Default: the server's settings.
    queue_delay_target: float | None = None
    max_queue_wait: float | None = None
    # Where predict runs: inline on the event loop, on a thread, or auto (inline when fast).
    execution: str = "auto"
    # Model-level only: alias -> version, and target (alias or version) -> weight for unversioned calls.
    aliases: dict[str, str] = msgspec.field(default_factory=dict)
    traffic: dict[str, float] = msgspec.field(default_factory=dict)
    # Prediction cache for this model (opt-in); unset fields inherit [cache] of mlscale.toml.
    cache: ModelCacheSettings | None = None
    features: FeaturesConfig | None = None
    # Free-form settings for the runtime (e.g. the Python class name, ONNX thread counts).
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.runtime and self.runtime not in RUNTIME_NAMES:
            raise ValueError(f"unknown runtime {self.runtime!r} ({', '.join(RUNTIME_NAMES)})")
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if self.max_delay < 0:
            raise ValueError("max_delay must not be negative")
        for name in ("max_queue_size", "max_waiting"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("queue_delay_target", "max_queue_wait"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds")
        if self.execution not in ("auto", "inline", "thread"):
            raise ValueError("execution must be auto, inline or thread")
        for tensor in [*(self.inputs or []), *(self.outputs or [])]:
            if tensor.datatype not in V2_TO_NUMPY:
                raise ValueError(f"tensor {tensor.name!r} has unknown datatype {tensor.datatype!r}")
        for target, weight in self.traffic.items():
            if weight < 0:
                raise ValueError(f"traffic weight of {target!r} must not be negative")
        if self.traffic and sum(self.traffic.values()) <= 0:
            raise ValueError("traffic weights must not all be zero")


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file as a dict ({} when absent), with the file named in any error."""
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def model_config(model_dir: Path, version_dir: Path | None = None) -> ModelConfig:
    """The effective config of a version: the model's file overridden by the version's file."""
    data = read_toml(model_dir / CONFIG_FILE)
    source = model_dir / CONFIG_FILE
    if version_dir is not None:
        own = read_toml(version_dir / CONFIG_FILE)
        if own:
            data = {**data, **own}
            source = version_dir / CONFIG_FILE
    try:
        return msgspec.convert(data, ModelConfig)
    except (msgspec.ValidationError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from None

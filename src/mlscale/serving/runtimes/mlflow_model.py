"""MLflow model folders (an ``MLmodel`` file): native XGBoost and LightGBM flavors run on mlscale's
own booster runtimes, everything else through ``mlflow.pyfunc``.

The model's signature becomes its v2 metadata. A tensor signature keeps its tensors (an unnamed
single tensor is called ``input``); a column signature makes each column a 1-D input named after
it, joined into a DataFrame for the model. Without a signature, declare inputs and outputs in
model.toml. ``parameters.flavor = "python_function"`` forces pyfunc for a native flavor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from mlscale.errors import ConfigError
from mlscale.serving.datatypes import v2_datatype
from mlscale.serving.model_config import ModelConfig
from mlscale.serving.runtimes.base import Runtime, TensorSpec, require

MODEL_FILE = "MLmodel"
_NATIVE_FILES = {"xgboost": (".json", ".ubj", ".xgb"), "lightgbm": (".lgb", ".txt")}


def _datatype(numpy_dtype: Any, where: str) -> str:
    dtype = np.dtype(numpy_dtype)
    if dtype.kind in ("U", "S", "O"):
        return "BYTES"
    if dtype.kind == "M":
        raise ConfigError(f"{where}: datetime columns have no v2 datatype; send them as strings")
    return v2_datatype(dtype)


def _specs(schema: Any, default: str, where: str) -> tuple[list[TensorSpec], bool]:
    """v2 specs of an MLflow schema, and whether it is column-based (a DataFrame)."""
    if schema is None:
        return [], False
    specs = []
    if schema.is_tensor_spec():
        entries = schema.inputs
        for index, entry in enumerate(entries):
            name = entry.name or (default if len(entries) == 1 else f"{default}_{index}")
            specs.append(TensorSpec(name, _datatype(entry.type, where), tuple(entry.shape)))
        return specs, False
    for index, column in enumerate(schema.inputs):
        name = column.name or (default if len(schema.inputs) == 1 else f"{default}_{index}")
        specs.append(TensorSpec(name, _datatype(column.type.to_numpy(), where), (-1,)))
    return specs, True


def _as_array(value: Any) -> np.ndarray:
    if hasattr(value, "to_numpy"):
        value = value.to_numpy()
    array = np.asarray(value)
    if array.dtype.kind == "U":
        array = array.astype(object)
    return array


class MlflowRuntime(Runtime):
    platform = "mlflow"

    def load(self, path: Path, config: ModelConfig) -> None:
        if not (path / MODEL_FILE).is_file():
            raise ConfigError(f"{path}: no {MODEL_FILE} file (an MLflow model folder)")
        require("mlflow", "mlflow", "MLflow models")
        from mlflow.models import Model

        try:
            meta = Model.load(str(path / MODEL_FILE))
        except Exception as exc:
            raise ConfigError(f"{path / MODEL_FILE}: cannot read the MLflow model: {exc}") from None
        where = str(path / MODEL_FILE)
        signature = meta.signature
        inputs, self._columns = _specs(signature.inputs if signature else None, "input", where)
        outputs, _ = _specs(signature.outputs if signature else None, "output", where)
        self.native = self._native(path, config, meta.flavors)
        if self.native is not None:
            self.platform = f"mlflow ({self.native.platform})"
            self.inputs, self.outputs = self.native.inputs, self.native.outputs
            # A tensor signature names and types the features; the booster accepts any numeric type.
            if len(inputs) == 1 and not self._columns and len(inputs[0].shape) == 2:
                self.inputs = inputs
                self._rename = {inputs[0].name: self.native.inputs[0].name}
            else:
                self._rename = {}
            self.apply_declared(config)
            return
        if "python_function" not in meta.flavors:
            raise ConfigError(f"{where}: no python_function flavor and no native flavor mlscale runs")
        import mlflow.pyfunc

        try:
            self.model = mlflow.pyfunc.load_model(str(path))
        except Exception as exc:
            raise ConfigError(f"{path}: cannot load the MLflow pyfunc model: {exc}") from None
        self.inputs, self.outputs = inputs, outputs or [TensorSpec("predictions", "FP64", (-1,))]
        self.apply_declared(config)
        if not self.inputs:
            raise ConfigError(f"{where}: the model has no signature; declare [[inputs]] in model.toml")
        # One tensor the signature leaves unnamed (or no signature): the model takes the bare array.
        unnamed = signature is None or signature.inputs is None or not signature.inputs.has_input_names()
        self._unnamed = len(self.inputs) == 1 and not self._columns and unnamed

    def _native(self, path: Path, config: ModelConfig, flavors: dict) -> Runtime | None:
        if config.parameters.get("flavor", "native") == "python_function":
            return None
        for flavor, suffixes in _NATIVE_FILES.items():
            data = (flavors.get(flavor) or {}).get("data")
            if data and Path(data).suffix in suffixes:
                if flavor == "xgboost":
                    from mlscale.serving.runtimes.xgboost_booster import XGBoostRuntime as Native
                else:
                    from mlscale.serving.runtimes.lightgbm_booster import LightGBMRuntime as Native
                runtime = Native()
                native_config = msgspec.structs.replace(
                    config, inputs=None, outputs=None, parameters={**config.parameters, "file": data}
                )
                runtime.load(path, native_config)
                return runtime
        return None

    def predict(self, inputs: dict[str, np.ndarray], outputs: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        if self.native is not None:
            renamed = {self._rename.get(name, name): value for name, value in inputs.items()}
            return self.native.predict(renamed, outputs)
        if self._columns:
            import pandas as pd

            frame = {}
            for spec in self.inputs:
                column = inputs[spec.name]
                if spec.datatype == "BYTES":
                    column = np.array([v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in column])
                frame[spec.name] = column
            data: Any = pd.DataFrame(frame)
        elif self._unnamed:
            data = inputs[self.inputs[0].name]
        else:
            data = {spec.name: inputs[spec.name] for spec in self.inputs}
        result = self.model.predict(data)
        if isinstance(result, dict):
            return {name: _as_array(value) for name, value in result.items()}
        if hasattr(result, "columns") and len(self.outputs) > 1:
            return {spec.name: _as_array(result[spec.name]) for spec in self.outputs}
        array = _as_array(result)
        if hasattr(result, "columns") and array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]
        return {self.outputs[0].name: array}

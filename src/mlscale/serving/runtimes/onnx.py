"""ONNX models (``model.onnx``) on ONNX Runtime's CPU provider."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from mlscale.errors import ConfigError
from mlscale.serving.model_config import ModelConfig
from mlscale.serving.runtimes.base import Runtime, TensorSpec

MODEL_FILE = "model.onnx"

_ONNX_TO_V2 = {
    "tensor(bool)": "BOOL",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def _spec(node: ort.NodeArg) -> TensorSpec | None:
    datatype = _ONNX_TO_V2.get(node.type)
    if datatype is None:
        return None
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (node.shape or []))
    return TensorSpec(node.name, datatype, shape)


class OnnxRuntime(Runtime):
    """One InferenceSession per worker process; threads per session default to 1 because the
    server already runs one process per core and batches requests."""

    platform = "onnxruntime_onnx"

    def load(self, path: Path, config: ModelConfig) -> None:
        file = path / config.parameters.get("file", MODEL_FILE)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(config.parameters.get("intra_op_threads", 1))
        options.inter_op_num_threads = int(config.parameters.get("inter_op_threads", 1))
        try:
            self.session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ConfigError(f"{file}: cannot load the ONNX model: {exc}") from None
        self.inputs = [s for s in map(_spec, self.session.get_inputs()) if s is not None]
        if len(self.inputs) != len(self.session.get_inputs()):
            raise ConfigError(f"{file}: only tensor inputs are supported")
        # Non-tensor outputs (e.g. scikit-learn's ZipMap) cannot travel in v2 tensors: skipped.
        self.outputs = [s for s in map(_spec, self.session.get_outputs()) if s is not None]
        if not self.outputs:
            raise ConfigError(f"{file}: the model has no tensor outputs")
        self.apply_declared(config)
        self._output_names = [o.name for o in self.outputs]

    def predict(self, inputs: dict[str, np.ndarray], outputs: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        feed = {name: (value.astype(str) if value.dtype == object else value) for name, value in inputs.items()}
        names = list(outputs) if outputs else self._output_names
        return dict(zip(names, self.session.run(names, feed), strict=True))

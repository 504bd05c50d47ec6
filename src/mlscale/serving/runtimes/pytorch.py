"""PyTorch models: TorchScript (``model.pt``) and ``torch.export`` programs (``model.pt2``).

Needs the optional ``torch`` extra. TorchScript files carry no tensor types, so their inputs and
outputs are declared in model.toml; an exported program records names, dtypes and which
dimensions are dynamic, so its metadata comes from the file itself (model.toml still wins).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from mlscale.errors import ConfigError
from mlscale.serving.model_config import ModelConfig
from mlscale.serving.runtimes.base import Runtime, TensorSpec, model_file, require, worker_threads

_TORCH_TO_V2 = {
    "torch.bool": "BOOL",
    "torch.int8": "INT8",
    "torch.int16": "INT16",
    "torch.int32": "INT32",
    "torch.int64": "INT64",
    "torch.uint8": "UINT8",
    "torch.float16": "FP16",
    "torch.float32": "FP32",
    "torch.float64": "FP64",
}


def _set_threads(torch: Any, config: ModelConfig) -> None:
    """Intra-op threads per worker; inter-op parallelism stays at one (batches are one call)."""
    torch.set_num_threads(worker_threads(config))
    with contextlib.suppress(RuntimeError):  # only settable before the process's first parallel op
        torch.set_num_interop_threads(1)


def _spec(name: str, value: Any) -> TensorSpec | None:
    """A placeholder's fake tensor as metadata: symbolic (dynamic) sizes become -1."""
    datatype = _TORCH_TO_V2.get(str(getattr(value, "dtype", None)))
    if datatype is None:
        return None
    shape = tuple(int(d) if isinstance(d, int) else -1 for d in value.shape)
    return TensorSpec(name, datatype, shape)


class _TorchRuntime(Runtime):
    """Calls the module with the inputs in declared order; outputs map to declared names."""

    def predict(self, inputs: dict[str, np.ndarray], outputs: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        torch = self._torch
        tensors = [torch.from_numpy(np.ascontiguousarray(inputs[s.name])) for s in self.inputs]
        with torch.inference_mode():
            result = self.module(*tensors)
        if isinstance(result, dict):
            values = [result[s.name] for s in self.outputs]
        else:
            values = list(result) if isinstance(result, (tuple, list)) else [result]
        if len(values) != len(self.outputs):
            raise ConfigError(f"the model returned {len(values)} outputs but declares {len(self.outputs)}")
        return {spec.name: value.detach().numpy() for spec, value in zip(self.outputs, values, strict=True)}


class TorchScriptRuntime(_TorchRuntime):
    """A scripted or traced module saved with ``torch.jit.save``."""

    platform = "pytorch_libtorch"

    def load(self, path: Path, config: ModelConfig) -> None:
        torch = self._torch = require("torch", "torch", "TorchScript models")
        _set_threads(torch, config)
        file = model_file(path, config, ("model.pt",))
        try:
            self.module = torch.jit.load(str(file), map_location="cpu").eval()
        except Exception as exc:
            raise ConfigError(f"{file}: cannot load the TorchScript model: {exc}") from None
        self.apply_declared(config)
        if not self.inputs or not self.outputs:
            raise ConfigError(f"{path}: TorchScript models need [[inputs]] and [[outputs]] in model.toml")


class TorchExportRuntime(_TorchRuntime):
    """A program saved with ``torch.export.save``; dynamic batch sizes need ``dynamic_shapes``
    at export time (metadata shows a fixed first dimension otherwise)."""

    platform = "pytorch_export"

    def load(self, path: Path, config: ModelConfig) -> None:
        torch = self._torch = require("torch", "torch", "torch.export programs")
        _set_threads(torch, config)
        file = model_file(path, config, ("model.pt2",))
        try:
            program = torch.export.load(str(file))
            self.module = program.module()
        except Exception as exc:
            raise ConfigError(f"{file}: cannot load the torch.export program: {exc}") from None
        placeholders = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
        for name in program.graph_signature.user_inputs:
            spec = _spec(name, placeholders[name].meta.get("val"))
            if spec is None:
                raise ConfigError(f"{file}: input {name!r} is not a tensor of a supported dtype")
            self.inputs.append(spec)
        produced = {node.name: node for node in program.graph.nodes}
        user_outputs = list(program.graph_signature.user_outputs)
        for index, name in enumerate(user_outputs):
            label = "output" if len(user_outputs) == 1 else f"output_{index}"
            node = produced.get(name)
            spec = _spec(label, node.meta.get("val")) if node is not None else None
            if spec is None:
                raise ConfigError(f"{file}: output {index} is not a tensor of a supported dtype")
            self.outputs.append(spec)
        self.apply_declared(config)

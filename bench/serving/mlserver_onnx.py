"""A minimal MLServer runtime for the ONNX MLP, so MLServer serves the very same ONNX file
(MLServer 1.7 ships no ONNX runtime). Loaded by MLServer from the bench's model folder."""

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxModel(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(
            await get_model_uri(self.settings), options, providers=["CPUExecutionProvider"]
        )
        self.output = self.session.get_outputs()[1].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32)
        (y,) = self.session.run([self.output], {"input": x})
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("probabilities", y)])

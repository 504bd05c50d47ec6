"""Model outputs packed to bytes for the prediction cache, and back, without loss.

msgpack (msgspec) of ``[name, dtype, shape, raw bytes]`` per output: compact, exact for every v2
datatype, and fast both ways; BYTES tensors carry their elements as a list of bytes.
"""

from __future__ import annotations

import msgspec
import numpy as np

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[tuple[str, str, list[int], bytes | list[bytes]]])


def pack_outputs(outputs: dict[str, np.ndarray]) -> bytes:
    rows = []
    for name, array in outputs.items():
        if array.dtype.kind in "OUS":
            values = [v if isinstance(v, bytes) else str(v).encode() for v in array.ravel()]
            rows.append((name, "O", list(array.shape), values))
        else:
            rows.append((name, array.dtype.str, list(array.shape), np.ascontiguousarray(array).tobytes()))
    return _encoder.encode(rows)


def unpack_outputs(packed: bytes) -> dict[str, np.ndarray]:
    outputs: dict[str, np.ndarray] = {}
    for name, dtype, shape, raw in _decoder.decode(packed):
        if dtype == "O":
            array = np.empty(len(raw), dtype=object)
            array[:] = raw
            outputs[name] = array.reshape(shape)
        else:
            outputs[name] = np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape)
    return outputs

"""Outputs (name -> NumPy array) to bytes and back, so a cache can hold model answers.

The server caches the model's outputs rather than its HTTP response (which carries a request id
and the client's chosen encoding). Numeric arrays go as raw little-endian bytes and come back as
zero-copy read-only views; BYTES tensors (object arrays) go element by element.
"""

from __future__ import annotations

import msgspec
import numpy as np

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[tuple[str, str, list[int], bytes | list[bytes]]])


def pack_arrays(arrays: dict[str, np.ndarray]) -> bytes:
    """One msgpack document: [(name, dtype, shape, data), ...]."""
    parts = []
    for name, value in arrays.items():
        array = np.asarray(value)
        if array.dtype.kind == "O":
            items = [v if isinstance(v, bytes) else str(v).encode() for v in array.ravel()]
            parts.append((name, "O", list(array.shape), items))
            continue
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        parts.append((name, array.dtype.str, list(array.shape), np.ascontiguousarray(array).tobytes()))
    return _encoder.encode(parts)


def unpack_arrays(payload: bytes) -> dict[str, np.ndarray]:
    """The arrays ``pack_arrays`` packed (numeric ones are read-only views of ``payload``)."""
    out: dict[str, np.ndarray] = {}
    for name, dtype, shape, data in _decoder.decode(payload):
        if dtype == "O":
            array = np.empty(len(data), dtype=object)
            array[:] = data
            out[name] = array.reshape(shape)
        else:
            out[name] = np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)
    return out

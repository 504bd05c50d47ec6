"""The Open Inference Protocol's tensor datatypes and their NumPy equivalents."""

from __future__ import annotations

import numpy as np

from mlscale.errors import InvalidInput

# v2 datatype name -> NumPy dtype. BYTES tensors are object arrays of ``bytes``.
V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}

_NUMPY_TO_V2: dict[np.dtype, str] = {dtype: name for name, dtype in V2_TO_NUMPY.items()}


def numpy_dtype(datatype: str) -> np.dtype:
    """The NumPy dtype of a v2 datatype name; an unknown name is the client's error."""
    try:
        return V2_TO_NUMPY[datatype]
    except KeyError:
        raise InvalidInput(f"unknown datatype {datatype!r}; expected one of {', '.join(V2_TO_NUMPY)}") from None


def v2_datatype(dtype: np.dtype) -> str:
    """The v2 datatype name of a NumPy dtype (strings and objects are BYTES)."""
    dtype = np.dtype(dtype)
    if dtype.kind in ("U", "S", "O"):
        return "BYTES"
    try:
        return _NUMPY_TO_V2[dtype.newbyteorder("=") if dtype.byteorder not in "=|" else dtype]
    except KeyError:
        raise InvalidInput(f"NumPy dtype {dtype} has no Open Inference Protocol datatype") from None


def element_size(datatype: str) -> int:
    """Bytes per element in the binary extension (BYTES elements are length-prefixed: 0 here)."""
    return 0 if datatype == "BYTES" else V2_TO_NUMPY[datatype].itemsize

"""Arrow columns as NumPy arrays without pandas.

``pyarrow.Array.to_numpy`` imports pandas on first use (about 0.3 s), a large share of a whole drift
report's run time. Numbers and booleans are read from the Arrow buffers directly; strings through
``to_pylist``; anything else (dates, dictionaries, nested) still goes through ``to_numpy``. The
arrays equal ``to_numpy(zero_copy_only=False)``'s: integers with nulls become float64 with NaN,
booleans with nulls and strings object arrays with None.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _bits(buffer: Any, offset: int, length: int) -> np.ndarray:
    raw = np.frombuffer(buffer, dtype=np.uint8)
    return np.unpackbits(raw, bitorder="little")[offset : offset + length].astype(bool)


def column_to_numpy(column: Any) -> np.ndarray:
    """One pyarrow Array or ChunkedArray as a 1-D NumPy array."""
    import pyarrow as pa

    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    kind = array.type
    n, offset = len(array), array.offset
    if pa.types.is_null(kind):
        return np.full(n, None, dtype=object)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        if pa.types.is_float16(kind):
            return array.to_numpy(zero_copy_only=False)
        code = "f" if pa.types.is_floating(kind) else ("u" if pa.types.is_unsigned_integer(kind) else "i")
        dtype = np.dtype(f"{code}{kind.bit_width // 8}")
        validity, data = array.buffers()[:2]
        values = np.frombuffer(data, dtype=dtype)[offset : offset + n]
        if array.null_count == 0:
            return values  # a read-only view of the Arrow buffer, as to_numpy's zero-copy result
        out = values.astype(dtype if pa.types.is_floating(kind) else np.float64)
        out[~_bits(validity, offset, n)] = np.nan
        return out
    if pa.types.is_boolean(kind):
        validity, data = array.buffers()[:2]
        values = _bits(data, offset, n)
        if array.null_count == 0:
            return values
        out = values.astype(object)
        out[~_bits(validity, offset, n)] = None
        return out
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        out = np.empty(n, dtype=object)
        out[:] = array.to_pylist()
        return out
    return array.to_numpy(zero_copy_only=False)

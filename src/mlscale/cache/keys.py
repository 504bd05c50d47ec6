"""Cache keys for predictions: the model, its resolved version, and a digest of the canonical inputs.

The key starts with ``model \\0 version \\0`` so a purge of one model is a prefix operation and a new
version can never be served an old version's answer. The digest covers each input's name, datatype,
shape and bytes (names sorted), so two requests hit the same entry exactly when the model would
see the same tensors.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

SEPARATOR = b"\x00"


def model_prefix(model: str) -> bytes:
    """The prefix shared by every cache key of ``model`` (all versions)."""
    return model.encode() + SEPARATOR


def model_of(key: bytes) -> bytes:
    """The model name (bytes) a key belongs to."""
    return key.partition(SEPARATOR)[0]


def _update_with_array(h: hashlib.blake2b, array: np.ndarray) -> None:
    if array.dtype.kind == "O":  # BYTES tensors: hash each element's bytes, length-prefixed
        h.update(b"O")
        h.update(np.asarray(array.shape, dtype="<i8").tobytes())
        for item in array.ravel():
            raw = item if isinstance(item, bytes) else str(item).encode()
            h.update(len(raw).to_bytes(8, "little"))
            h.update(raw)
        return
    # Same values in either byte order give the same key: normalize to little-endian.
    if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and np.little_endian is False):
        array = array.astype(array.dtype.newbyteorder("<"))
    h.update(array.dtype.str.encode())
    h.update(np.asarray(array.shape, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(array).data)


def inputs_digest(inputs: dict[str, np.ndarray], outputs: Sequence[str] | None = None) -> bytes:
    """16-byte blake2b digest of the canonical form of ``inputs`` (and the requested ``outputs``)."""
    h = hashlib.blake2b(digest_size=16)
    if outputs is not None:
        for name in sorted(outputs):
            raw = name.encode()
            h.update(b"o" + len(raw).to_bytes(4, "little") + raw)
        h.update(b"|")
    for name in sorted(inputs):
        raw = name.encode()
        h.update(len(raw).to_bytes(4, "little"))
        h.update(raw)
        _update_with_array(h, np.asarray(inputs[name]))
    return h.digest()


def prediction_key(
    model: str, version: str, inputs: dict[str, np.ndarray], outputs: Sequence[str] | None = None
) -> bytes:
    """``model \\0 version \\0 digest``: the cache key of one prediction.

    ``outputs`` (the output names a request asked for, None for all) is part of the digest, since
    two requests with the same inputs but different requested outputs get different answers.
    """
    if SEPARATOR in model.encode() or SEPARATOR in version.encode():
        raise ValueError("model and version names cannot contain NUL")
    digest = inputs_digest(inputs, outputs)
    return model_prefix(model) + version.encode() + SEPARATOR + digest

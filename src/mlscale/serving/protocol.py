"""The Open Inference Protocol (v2) codec: wire bytes <-> NumPy arrays, done once at the edge.

Requests arrive as JSON, or as JSON followed by raw tensor bytes (the binary tensor data
extension: ``Inference-Header-Content-Length`` tells where the JSON ends). Everything past this
module works on ``dict[str, np.ndarray]`` only.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import msgspec
import numpy as np

from mlscale.errors import InvalidInput
from mlscale.serving.datatypes import V2_TO_NUMPY, numpy_dtype, v2_datatype


class RequestInput(msgspec.Struct, omit_defaults=True):
    """One input tensor of an inference request, as it is on the wire."""

    name: str
    shape: list[int]
    datatype: str
    data: Any = msgspec.UNSET
    parameters: dict[str, Any] | None = None


class RequestOutput(msgspec.Struct, omit_defaults=True):
    """One output the client asks for, with its own parameters (e.g. ``binary_data``)."""

    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(msgspec.Struct, omit_defaults=True):
    """The body of ``POST .../infer``."""

    inputs: list[RequestInput]
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[RequestOutput] | None = None


_request_decoder = msgspec.json.Decoder(InferenceRequest)
_json_encoder = msgspec.json.Encoder()

# Which kinds of decoded JSON data may be cast to each kind of tensor without losing meaning.
_ACCEPTED_KINDS = {"b": "b", "i": "biu", "u": "biu", "f": "biuf"}


class DecodedRequest:
    """A request after decoding: NumPy inputs plus what shapes the answer."""

    __slots__ = ("binary_outputs", "id", "inputs", "outputs", "parameters")

    def __init__(
        self,
        inputs: dict[str, np.ndarray],
        request_id: str | None,
        parameters: dict[str, Any],
        outputs: list[RequestOutput] | None,
        binary_outputs: bool,
    ) -> None:
        self.inputs = inputs
        self.id = request_id
        self.parameters = parameters
        self.outputs = outputs
        self.binary_outputs = binary_outputs


def decode_request(body: bytes, header_length: int | None = None) -> DecodedRequest:
    """Parse an infer request body; ``header_length`` is the binary extension's JSON length."""
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length {header_length} is outside the body of {len(body)} bytes"
            )
        json_part, binary_part = body[:header_length], memoryview(body)[header_length:]
    else:
        json_part, binary_part = body, None
    try:
        request = _request_decoder.decode(json_part)
    except msgspec.ValidationError as exc:
        raise InvalidInput(f"invalid inference request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None
    if not request.inputs:
        raise InvalidInput("the request has no inputs")
    parameters = request.parameters or {}
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for item in request.inputs:
        if item.name in inputs:
            raise InvalidInput(f"input {item.name!r} appears twice")
        size = (item.parameters or {}).get("binary_data_size")
        if size is not None:
            if binary_part is None:
                raise InvalidInput(
                    f"input {item.name!r} has binary_data_size but the request has no binary part "
                    "(missing Inference-Header-Content-Length header)"
                )
            if not isinstance(size, int) or size < 0 or offset + size > len(binary_part):
                raise InvalidInput(f"input {item.name!r}: binary_data_size {size} exceeds the body")
            inputs[item.name] = _array_from_binary(item, binary_part[offset : offset + size])
            offset += size
        else:
            inputs[item.name] = _array_from_json(item)
    if binary_part is not None and offset != len(binary_part):
        raise InvalidInput(f"the binary part holds {len(binary_part)} bytes but the inputs declare {offset}")
    binary_outputs = bool(parameters.get("binary_data_output", False))
    return DecodedRequest(inputs, request.id, parameters, request.outputs, binary_outputs)


def _check_shape(item: RequestInput) -> int:
    if any(not isinstance(d, int) or d < 0 for d in item.shape):
        raise InvalidInput(f"input {item.name!r}: shape {item.shape} must hold non-negative integers")
    return math.prod(item.shape)


def _array_from_json(item: RequestInput) -> np.ndarray:
    count = _check_shape(item)
    dtype = numpy_dtype(item.datatype)
    if item.data is msgspec.UNSET:
        raise InvalidInput(f"input {item.name!r} has neither data nor binary_data_size")
    data = item.data
    if item.datatype == "BYTES":
        flat = _flatten(data, item.name)
        if len(flat) != count:
            raise _count_error(item, len(flat), count)
        array = np.empty(count, dtype=object)
        for i, value in enumerate(flat):
            if isinstance(value, str):
                array[i] = value.encode()
            elif isinstance(value, bytes):
                array[i] = value
            else:
                raise InvalidInput(f"input {item.name!r}: BYTES data must be strings, got {value!r}")
        return array.reshape(item.shape)
    try:
        array = np.array(data)
    except ValueError:
        raise InvalidInput(f"input {item.name!r}: nested data is ragged") from None
    if array.size != count:
        raise _count_error(item, array.size, count)
    if array.dtype.kind not in _ACCEPTED_KINDS[dtype.kind] and array.size:
        raise InvalidInput(
            f"input {item.name!r}: data of kind {array.dtype.name} does not match datatype {item.datatype}"
        )
    if dtype.kind in "iu" and array.size and array.dtype != dtype:
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise InvalidInput(f"input {item.name!r}: values are out of range for {item.datatype}")
    return array.astype(dtype, copy=False).reshape(item.shape)


def _flatten(data: Any, name: str) -> list:
    if not isinstance(data, list):
        return [data]
    if data and isinstance(data[0], list):
        out: list = []
        for row in data:
            out.extend(_flatten(row, name))
        return out
    return data


def _count_error(item: RequestInput, got: int, expected: int) -> InvalidInput:
    return InvalidInput(f"input {item.name!r}: shape {item.shape} needs {expected} elements but data holds {got}")


def _array_from_binary(item: RequestInput, raw: memoryview) -> np.ndarray:
    count = _check_shape(item)
    dtype = numpy_dtype(item.datatype)
    if item.datatype == "BYTES":
        values = _unpack_bytes(raw, item.name)
        if len(values) != count:
            raise _count_error(item, len(values), count)
        array = np.empty(count, dtype=object)
        array[:] = values
        return array.reshape(item.shape)
    if item.datatype == "BOOL":
        dtype = np.dtype(np.bool_)
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(
            f"input {item.name!r}: shape {item.shape} of {item.datatype} needs "
            f"{count * dtype.itemsize} bytes but binary_data_size is {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(item.shape)


def _unpack_bytes(raw: memoryview, name: str) -> list[bytes]:
    values: list[bytes] = []
    pos, end = 0, len(raw)
    while pos < end:
        if pos + 4 > end:
            raise InvalidInput(f"input {name!r}: truncated BYTES element length")
        (length,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + length > end:
            raise InvalidInput(f"input {name!r}: truncated BYTES element")
        values.append(bytes(raw[pos : pos + length]))
        pos += length
    return values


def _pack_bytes(array: np.ndarray) -> bytes:
    parts: list[bytes] = []
    for value in array.ravel():
        encoded = value if isinstance(value, bytes) else str(value).encode()
        parts.append(struct.pack("<I", len(encoded)))
        parts.append(encoded)
    return b"".join(parts)


def _json_data(array: np.ndarray) -> list:
    if array.dtype.kind in "OUS":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in array.ravel()]
    return array.ravel().tolist()


def encode_response(
    model_name: str,
    model_version: str,
    request: DecodedRequest,
    outputs: dict[str, np.ndarray],
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    """Serialize an answer; returns the body and the JSON header length when binary parts follow."""
    if request.outputs:
        wanted = [
            (o.name, bool((o.parameters or {}).get("binary_data", request.binary_outputs))) for o in request.outputs
        ]
    else:
        wanted = [(name, request.binary_outputs) for name in outputs]
    encoded_outputs: list[dict[str, Any]] = []
    binary_chunks: list[bytes] = []
    for name, as_binary in wanted:
        array = outputs[name]
        datatype = v2_datatype(array.dtype)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if as_binary:
            raw = raw_from_array(array, datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            binary_chunks.append(raw)
        else:
            entry["data"] = _json_data(array)
        encoded_outputs.append(entry)
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        response["id"] = request.id
    if parameters:
        response["parameters"] = parameters
    response["outputs"] = encoded_outputs
    header = _json_encoder.encode(response)
    if not binary_chunks:
        return header, None
    return b"".join([header, *binary_chunks]), len(header)


def array_from_raw(name: str, shape: list[int], datatype: str, raw: bytes | memoryview) -> np.ndarray:
    """A tensor from its raw little-endian bytes (BYTES: length-prefixed elements), as the binary
    extension and gRPC's ``raw_input_contents`` both carry it."""
    return _array_from_binary(RequestInput(name, shape, datatype), memoryview(raw))


def raw_from_array(array: np.ndarray, datatype: str) -> bytes:
    """The raw bytes of an output tensor, the inverse of ``array_from_raw``."""
    return _pack_bytes(array) if datatype == "BYTES" else np.ascontiguousarray(array).tobytes()


def encode_json(value: Any) -> bytes:
    """JSON bytes of any plain value (used for metadata and errors)."""
    return _json_encoder.encode(value)


__all__ = [
    "V2_TO_NUMPY",
    "DecodedRequest",
    "InferenceRequest",
    "array_from_raw",
    "decode_request",
    "encode_json",
    "encode_response",
    "raw_from_array",
]

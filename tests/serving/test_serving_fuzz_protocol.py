"""hypothesis fuzzing of the v2 codec, in process: bad input is InvalidInput, good input round-trips.

The oracle for round trips is an encoder written here from the protocol's text (JSON lists, little-
endian raw tensors, 4-byte length-prefixed BYTES), not the server's own encoder.
"""

from __future__ import annotations

import json
import struct
import zlib

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mlscale.errors import InvalidInput, PayloadTooLarge
from mlscale.serving.app import _decompress
from mlscale.serving.protocol import MAX_DIMS, decode_request, encode_response

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
NUMERIC = {
    "BOOL": np.bool_,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=30,
)
dims = st.integers(min_value=-3, max_value=6) | st.sampled_from([2**31, 2**62, 2**63 - 1, 2**64 - 1])
shapes = st.lists(dims, max_size=5) | st.lists(st.just(1), min_size=60, max_size=80)
datatypes = st.sampled_from([*NUMERIC, "BYTES"]) | st.text(max_size=6)


def _decode_or_invalid(body: bytes, header_length: int | None = None):
    """decode_request's answer or None for InvalidInput; anything else propagates and fails the test."""
    try:
        return decode_request(body, header_length)
    except InvalidInput as exc:
        assert str(exc), "an InvalidInput must say what is wrong"
        return None


@FUZZ
@given(body=st.binary(max_size=300), header_length=st.none() | st.integers(min_value=-5, max_value=400))
def test_arbitrary_bytes_are_refused_cleanly(body: bytes, header_length: int | None) -> None:
    _decode_or_invalid(body, header_length)


@FUZZ
@given(
    name=st.text(max_size=5),
    shape=shapes,
    datatype=datatypes,
    data=json_values,
    parameters=st.none() | st.dictionaries(st.text(max_size=5), json_values, max_size=3),
    item_parameters=st.none() | st.dictionaries(st.sampled_from(["binary_data_size", "x"]), json_values, max_size=2),
)
def test_fuzzed_json_requests_decode_to_their_declared_shape_or_400(
    name, shape, datatype, data, parameters, item_parameters
) -> None:
    item = {"name": name, "shape": shape, "datatype": datatype, "data": data}
    if item_parameters is not None:
        item["parameters"] = item_parameters
    request = {"inputs": [item], **({"parameters": parameters} if parameters is not None else {})}
    decoded = _decode_or_invalid(json.dumps(request).encode())
    if decoded is not None:
        array = decoded.inputs[name]
        assert list(array.shape) == shape
        expected = np.dtype(object) if datatype == "BYTES" else np.dtype(NUMERIC[datatype])
        assert array.dtype == expected


@FUZZ
@given(
    shape=shapes,
    datatype=datatypes,
    declared=st.integers(min_value=-2, max_value=64) | st.just(True),
    raw=st.binary(max_size=64),
)
def test_fuzzed_binary_requests_decode_or_400(shape, datatype, declared, raw) -> None:
    header = json.dumps(
        {"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "parameters": {"binary_data_size": declared}}]}
    ).encode()
    decoded = _decode_or_invalid(header + raw, len(header))
    if decoded is not None:
        assert list(decoded.inputs["x"].shape) == shape
        assert declared == len(raw) and declared is not True


def _tensors(finite: bool = False):
    """(datatype, array) pairs of every numeric datatype and BYTES (arbitrary, non-UTF-8 included);
    ``finite``: no infinities (JSON cannot carry them)."""
    shape = hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=4)
    numeric = st.sampled_from(sorted(NUMERIC)).flatmap(
        lambda dt: st.tuples(
            st.just(dt),
            hnp.arrays(
                NUMERIC[dt],
                shape,
                elements={"allow_nan": False, "allow_infinity": not finite} if dt[:2] == "FP" else None,
            ),
        )
    )
    strings = shape.flatmap(
        lambda s: st.lists(st.binary(max_size=6), min_size=int(np.prod(s)), max_size=int(np.prod(s))).map(
            lambda values: ("BYTES", np.array([*values, b""], dtype=object)[:-1].reshape(s))
        )
    )
    return numeric | strings


def _pack(datatype: str, array: np.ndarray) -> bytes:
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v for v in array.ravel())
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


@FUZZ
@given(tensor=_tensors())
def test_binary_tensors_round_trip(tensor) -> None:
    datatype, array = tensor
    raw = _pack(datatype, array)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "t",
                    "shape": list(array.shape),
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    decoded = decode_request(header + raw, len(header)).inputs["t"]
    assert decoded.shape == array.shape
    assert decoded.ravel().tolist() == array.ravel().tolist()


@FUZZ
@given(tensor=_tensors(finite=True))
def test_json_tensors_round_trip(tensor) -> None:
    datatype, array = tensor
    if datatype == "BYTES":  # JSON carries text: only UTF-8 values can travel this way
        array = np.array([v.decode("utf-8", "replace").encode() for v in array.ravel()] + [b""], dtype=object)[
            :-1
        ].reshape(array.shape)
        data = [v.decode() for v in array.ravel()]
    else:
        data = array.ravel().tolist()
    body = json.dumps({"inputs": [{"name": "t", "shape": list(array.shape), "datatype": datatype, "data": data}]})
    decoded = decode_request(body.encode()).inputs["t"]
    assert decoded.shape == array.shape
    assert decoded.ravel().tolist() == array.ravel().tolist()


@FUZZ
@given(tensor=_tensors(), binary=st.booleans(), request_id=st.none() | st.text(max_size=5))
def test_responses_parse_back_to_the_outputs(tensor, binary, request_id) -> None:
    datatype, array = tensor
    request = decode_request(
        json.dumps(
            {
                "inputs": [{"name": "i", "shape": [1], "datatype": "INT8", "data": [1]}],
                "parameters": {"binary_data_output": binary},
                **({"id": request_id} if request_id is not None else {}),
            }
        ).encode()
    )
    body, header_length = encode_response("m", "1", request, {"o": array})
    header = json.loads(body[:header_length] if header_length is not None else body)
    assert header.get("id") == request_id
    (output,) = header["outputs"]
    assert output["datatype"] == datatype and output["shape"] == list(array.shape)
    if binary:
        assert body[header_length:] == _pack(datatype, array)
        assert output["parameters"]["binary_data_size"] == len(body) - header_length
    elif datatype == "BYTES":  # non-UTF-8 BYTES come back as text with replacement characters
        assert output["data"] == [v.decode("utf-8", "replace") for v in array.ravel()]
    else:  # JSON has no infinity: a non-finite output is null there (binary outputs carry it exactly)
        expected = [v if not isinstance(v, float) or np.isfinite(v) else None for v in array.ravel().tolist()]
        assert output["data"] == expected


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ([1] * (MAX_DIMS + 1), "dimensions"),  # was ValueError from NumPy: 500
        ([2**62, 2**62, 0], "too large"),  # was ValueError from reshape: 500
        ([2**64 - 1, 0], "too large"),
    ],
)
def test_shapes_numpy_cannot_hold_are_400(shape: list[int], message: str) -> None:
    data = [] if 0 in shape else [1.0]
    for body, length in [
        (json.dumps({"inputs": [{"name": "a", "shape": shape, "datatype": "FP32", "data": data}]}).encode(), None),
    ]:
        with pytest.raises(InvalidInput, match=message):
            decode_request(body, length)
    header = json.dumps(
        {
            "inputs": [
                {"name": "a", "shape": shape, "datatype": "FP32", "parameters": {"binary_data_size": 4 * len(data)}}
            ]
        }
    ).encode()
    with pytest.raises(InvalidInput, match=message):
        decode_request(header + b"\0" * 4 * len(data), len(header))


@pytest.mark.parametrize("datatype", ["FP32", "BYTES"])
def test_json_nested_deeper_than_the_recursion_limit_is_400(datatype: str) -> None:
    """Was RecursionError out of msgspec: a 500."""
    deep = b"[" * 100_000 + b"]" * 100_000
    body = b'{"inputs":[{"name":"a","shape":[1],"datatype":"' + datatype.encode() + b'","data":' + deep + b"}]}"
    with pytest.raises(InvalidInput, match="nested too deeply"):
        decode_request(body)


def test_floats_beyond_the_datatype_range_are_400_not_inf() -> None:
    body = msgspec.json.encode({"inputs": [{"name": "a", "shape": [2], "datatype": "FP16", "data": [1.0, 1e300]}]})
    with pytest.raises(InvalidInput, match="out of range for FP16"):
        decode_request(body)
    body = msgspec.json.encode({"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1e300]}]})
    with pytest.raises(InvalidInput, match="out of range for FP32"):
        decode_request(body)


def test_boolean_binary_data_size_is_400() -> None:
    header = b'{"inputs":[{"name":"a","shape":[1],"datatype":"BOOL","parameters":{"binary_data_size":true}}]}'
    with pytest.raises(InvalidInput, match="binary_data_size"):
        decode_request(header + b"\x01", len(header))


@pytest.mark.parametrize("encoding", [b"gzip", b"deflate"])
def test_decompression_stops_at_the_limit(encoding: bytes) -> None:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS if encoding == b"gzip" else zlib.MAX_WBITS)
    bomb = compressor.compress(bytes(32 * 1024 * 1024)) + compressor.flush()
    with pytest.raises(PayloadTooLarge, match="decompressed body exceeds"):
        _decompress(bomb, encoding, 1024 * 1024)
    assert _decompress(bomb, encoding, 32 * 1024 * 1024) == bytes(32 * 1024 * 1024)


@FUZZ
@given(body=st.binary(max_size=200), encoding=st.sampled_from([b"gzip", b"deflate"]))
def test_corrupt_compressed_bodies_are_400(body: bytes, encoding: bytes) -> None:
    try:
        _decompress(body, encoding, 1 << 20)
    except InvalidInput as exc:
        assert encoding.decode() in str(exc)


@pytest.mark.parametrize("encoding", [b"gzip", b"deflate"])
def test_truncated_compressed_bodies_are_400(encoding: bytes) -> None:
    """Was accepted: a cut-off stream inflated to a prefix of the body and that prefix was decoded."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS if encoding == b"gzip" else zlib.MAX_WBITS)
    whole = compressor.compress(b'{"inputs": []}' * 100) + compressor.flush()
    with pytest.raises(InvalidInput, match="truncated"):
        _decompress(whole[: len(whole) // 2], encoding, 1 << 20)


def test_uint64_values_past_int64_keep_every_digit() -> None:
    """Was 400: NumPy inferred float64 for [2**64 - 1, 1] and the kind check refused it."""
    data = [[2**64 - 1, 1], [2**63, 0]]
    body = msgspec.json.encode({"inputs": [{"name": "a", "shape": [2, 2], "datatype": "UINT64", "data": data}]})
    array = decode_request(body).inputs["a"]
    assert array.dtype == np.uint64 and array.tolist() == data
    body = msgspec.json.encode({"inputs": [{"name": "a", "shape": [2], "datatype": "UINT64", "data": [2**63, -1]}]})
    with pytest.raises(InvalidInput, match="out of range"):
        decode_request(body)

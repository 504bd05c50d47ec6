"""Prediction keys identify exactly the tensors a model sees; L1 stays within its byte bound."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest
from prometheus_client import REGISTRY

from mlscale.cache import LRUCache, model_prefix, prediction_key
from mlscale.cache.l1 import ENTRY_OVERHEAD


def test_key_ignores_input_order_and_starts_with_the_model() -> None:
    a = {"x": np.arange(4, dtype=np.float32), "y": np.ones((2, 2))}
    b = {"y": np.ones((2, 2)), "x": np.arange(4, dtype=np.float32)}
    assert prediction_key("iris", "1", a) == prediction_key("iris", "1", b)
    assert prediction_key("iris", "1", a).startswith(model_prefix("iris") + b"1\x00")


def test_key_changes_with_version_dtype_shape_values_and_names() -> None:
    x = np.arange(6, dtype=np.int32)
    base = prediction_key("m", "1", {"x": x})
    variants = [
        prediction_key("m", "2", {"x": x}),
        prediction_key("m", "1", {"x": x.view(np.float32)}),  # same bytes, other datatype
        prediction_key("m", "1", {"x": x.reshape(2, 3)}),  # same bytes, other shape
        prediction_key("m", "1", {"x": x + 1}),
        prediction_key("m", "1", {"z": x}),
        prediction_key("other", "1", {"x": x}),
        prediction_key("m", "1", {"x": x}, outputs=["label"]),
        prediction_key("m", "1", {"x": x}, outputs=["proba"]),
    ]
    assert len({base, *variants}) == len(variants) + 1
    assert prediction_key("m", "1", {"x": x}, ["a", "b"]) == prediction_key("m", "1", {"x": x}, ["b", "a"])


def test_key_is_canonical_over_byte_order_and_memory_layout() -> None:
    little = np.arange(12, dtype="<f8").reshape(3, 4)
    assert prediction_key("m", "1", {"x": little}) == prediction_key("m", "1", {"x": little.astype(">f8")})
    assert prediction_key("m", "1", {"x": little.T}) == prediction_key("m", "1", {"x": np.ascontiguousarray(little.T)})


def test_key_of_bytes_tensors_hashes_the_contents() -> None:
    one = np.array([b"ab", b"c"], dtype=object)
    two = np.array([b"a", b"bc"], dtype=object)
    assert prediction_key("m", "1", {"s": one}) != prediction_key("m", "1", {"s": two})
    assert prediction_key("m", "1", {"s": one}) == prediction_key("m", "1", {"s": one.copy()})
    with pytest.raises(ValueError, match="NUL"):
        prediction_key("bad\x00name", "1", {"s": one})


def sample(name: str, metric: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(metric, {"cache": name, **labels}) or 0.0


def test_l1_evicts_least_recently_used_to_stay_within_bytes() -> None:
    name = f"t{uuid.uuid4().hex[:8]}"
    entry = 3 + 100 + ENTRY_OVERHEAD
    cache = LRUCache(10 * entry, name=name)
    for i in range(10):
        cache.put(b"k%02d" % i, bytes(100))
    assert cache.get(b"k00") is not None  # k0 becomes the most recently used
    for i in range(10, 15):
        cache.put(b"k%02d" % i, bytes(100))
    assert cache.bytes <= 10 * entry and len(cache) == 10
    assert cache.get(b"k00") is not None
    assert [cache.get(b"k%02d" % i) for i in (1, 2, 3, 4, 5)] == [None] * 5
    assert sample(name, "mlscale_cache_evictions_total", tier="l1") == 5
    assert sample(name, "mlscale_cache_bytes", tier="l1") == cache.bytes
    assert sample(name, "mlscale_cache_requests_total", tier="l1", result="hit") == 2
    assert sample(name, "mlscale_cache_requests_total", tier="l1", result="miss") == 5


@pytest.mark.parametrize("value_size", [40, 400])
def test_l1_bound_is_the_memory_it_really_holds(value_size: int) -> None:
    """The byte bound is what the process pays: a full cache of small predictions (a key of a model,
    a version and a digest; a value of a few dozen bytes) holds within 15% of its charged bytes in
    Python allocations. With a per-entry charge that is too low, the server's RSS outgrows the bound."""
    import tracemalloc

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        cache = LRUCache(4 * 1024 * 1024, name=f"t{uuid.uuid4().hex[:8]}")
        i = 0
        while cache.bytes < cache.max_bytes - 1000:
            key = prediction_key("model", "1", {"x": np.array([[i, i + 1]], dtype=np.float64)})
            cache.put(key, i.to_bytes(8, "little") * (value_size // 8))
            i += 1
        real = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(cache) == i
    assert 0.85 * cache.bytes <= real <= 1.15 * cache.bytes, (real, cache.bytes, i)


def test_l1_refuses_a_value_larger_than_itself_and_replaces_in_place() -> None:
    cache = LRUCache(1000)
    assert cache.put(b"big", bytes(2000)) is False and cache.get(b"big") is None
    cache.put(b"k", bytes(10))
    cache.put(b"k", bytes(20))
    assert cache.bytes == 1 + 20 + ENTRY_OVERHEAD
    assert cache.purge_prefix(b"k") == 1 and cache.bytes == 0


def test_l1_entries_expire_after_their_ttl() -> None:
    cache = LRUCache(10_000, ttl=0.1)
    cache.put(b"a", b"1")
    cache.put(b"b", b"2", ttl=60)
    assert cache.get(b"a") == b"1"
    deadline = time.monotonic() + 5
    while cache.get(b"a") is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cache.get(b"a") is None and cache.get(b"b") == b"2"
    assert cache.bytes == 1 + 1 + ENTRY_OVERHEAD


def test_l1_get_many_answers_counts_refreshes_and_expires_like_get() -> None:
    name = f"t{uuid.uuid4().hex[:8]}"
    entry = 1 + 1 + ENTRY_OVERHEAD
    cache = LRUCache(3 * entry, ttl=0.1, name=name)
    cache.put(b"a", b"1")
    cache.put(b"b", b"2", ttl=60)
    cache.put(b"c", b"3", ttl=60)
    assert cache.get_many([b"b", b"x", b"c"]) == [b"2", None, b"3"]
    assert sample(name, "mlscale_cache_requests_total", tier="l1", result="hit") == 2
    assert sample(name, "mlscale_cache_requests_total", tier="l1", result="miss") == 1
    deadline = time.monotonic() + 5
    while cache.get_many([b"a"]) != [None] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(cache) == 2 and cache.bytes == 2 * entry  # the expired entry was dropped, not kept
    cache.get_many([b"b"])  # b is now the most recently used: a new entry evicts c first
    cache.put(b"d", b"4")
    cache.put(b"e", b"5")
    assert cache.get_many([b"b", b"c", b"d", b"e"]) == [b"2", None, b"4", b"5"]


def test_packed_outputs_come_back_equal_in_dtype_shape_and_values() -> None:
    from mlscale.cache import pack_arrays, unpack_arrays

    outputs = {
        "probabilities": np.random.default_rng(0).random((3, 4)).astype(np.float32),
        "label": np.array([2, 0, 1], dtype=">i8"),
        "names": np.array([[b"setosa"], [b"virginica"]], dtype=object),
        "scalar": np.float64(1.5),
    }
    back = unpack_arrays(pack_arrays(outputs))
    assert list(back) == list(outputs)
    for name, value in outputs.items():
        expected = np.asarray(value)
        assert back[name].shape == expected.shape
        assert back[name].dtype == (expected.dtype if expected.dtype.kind == "O" else expected.dtype.newbyteorder("<"))
        assert (back[name] == expected).all()

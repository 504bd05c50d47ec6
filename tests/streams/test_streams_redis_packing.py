"""Redis Streams with many records per stream entry, against the real Redis: offsets that grow and never
overlap (also with two writers and with plain entries written by other tools in between), reads that
stop and resume anywhere inside an entry, and lag / end offsets that count records, not entries."""

from __future__ import annotations

import random
import threading
import uuid

import pytest

from mlscale.errors import InvalidInput
from mlscale.streams.packing import MAX_RECORDS


@pytest.fixture
def make(redis_url):
    from mlscale.streams.redis_streams import RedisStreamsBroker

    prefix = f"test:pack{uuid.uuid4().hex[:8]}:"
    made = []

    def factory(**kw):
        b = RedisStreamsBroker(redis_url, prefix=prefix, partitions=kw.pop("partitions", 1), **kw)
        made.append(b)
        return b

    yield factory
    made[0].delete_namespace()
    for b in made:
        b.close()


def _records(n: int, tag: str = "r") -> list[bytes]:
    rng = random.Random(n)
    return [f"{tag}{i}:".encode() + b"x" * rng.randrange(0, 40) for i in range(n)]


def _drain(broker, after: int, step: int, partition: int = 0, limit: int = 100_000) -> list[tuple[int, bytes]]:
    got: list[tuple[int, bytes]] = []
    for _ in range(limit // max(1, step) + 10):
        batch = broker.fetch("t", {partition: after}, step)
        if not batch:
            return got
        assert len(batch) <= step
        got += [(m.offset, m.value) for m in batch]
        after = batch[-1].offset
    raise AssertionError("fetch never ran dry")


def test_many_records_in_one_call_come_back_in_order_in_few_entries_and_are_counted(make):
    broker = make()
    records = _records(5000)
    offsets = broker.append("t", records)
    assert offsets == sorted(set(offsets)) and len(offsets) == 5000  # strictly increasing, unique
    assert broker._r.xlen(broker._stream("t", 0)) == 3  # packed: 2048 + 2048 + 904
    assert _drain(broker, -1, 100_000) == list(zip(offsets, records, strict=True))
    assert broker.end_offsets("t") == {0: offsets[-1]}
    assert broker.lag("t", "g") == 5000
    broker.commit("t", "g", {0: offsets[1234]})  # inside the first entry
    assert broker.lag("t", "g") == 5000 - 1235
    broker.commit("t", "g", {0: offsets[2048]})  # the first record of the second entry
    assert broker.lag("t", "g") == 5000 - 2049
    broker.commit("t", "g", {0: offsets[-1]})
    assert broker.lag("t", "g") == 0


@pytest.mark.parametrize("step", [1, 7, 500, MAX_RECORDS - 1, MAX_RECORDS + 1])
def test_a_fetch_that_stops_mid_entry_resumes_with_exactly_the_rest(make, step):
    broker = make()
    records = _records(4500)
    offsets = broker.append("t", records)
    want = list(zip(offsets, records, strict=True))
    assert _drain(broker, -1, step) == want
    # Asking again from a position the reader did not just hand out starts over from there.
    assert _drain(broker, offsets[10], step) == want[11:]


def test_resuming_from_any_offset_inside_an_entry_with_a_fresh_broker(make):
    writer = make()
    records = _records(5000)
    offsets = writer.append("t", records)
    want = list(zip(offsets, records, strict=True))
    for k in [0, 1, 2046, 2047, 2048, 2049, 4095, 4096, 4998, 4999, *random.Random(3).sample(range(5000), 5)]:
        reader = make()  # no buffer, no cursor: only the offset
        assert _drain(reader, offsets[k], 1000) == want[k + 1 :], k
        reader.close()


def test_a_plain_entry_by_another_tool_is_one_record_between_packed_ones(make):
    broker = make()
    first = broker.append("t", _records(300, "a"))
    plain_id = broker._r.xadd(broker._stream("t", 0), {"v": b"plain"})
    second = broker.append("t", _records(300, "b"))
    got = _drain(broker, -1, 64)
    assert [v for _, v in got] == [*_records(300, "a"), b"plain", *_records(300, "b")]
    offsets = [o for o, _ in got]
    assert offsets == sorted(set(offsets))
    assert offsets[:300] == first and offsets[301:] == second
    from mlscale.streams.redis_streams import id_to_offset

    assert offsets[300] == id_to_offset(plain_id)
    assert broker.lag("t", "g") == 601
    assert broker.end_offsets("t") == {0: second[-1]}
    broker.commit("t", "g", {0: first[150]})
    assert broker.lag("t", "g") == 601 - 151
    broker._r.xadd(broker._stream("t", 0), {"v": b"last"})
    assert broker.lag("t", "g") == 601 - 151 + 1  # the last entry is not ours: counted entry by entry
    tail = _drain(broker, second[-1], 10)
    assert [v for _, v in tail] == [b"last"] and tail[0][0] > second[-1]


def test_two_brokers_appending_to_one_partition_never_share_an_offset(make):
    brokers = [make(), make()]
    written: list[dict[int, bytes]] = [{}, {}]
    errors: list[BaseException] = []

    def produce(k: int) -> None:
        try:
            for call in range(15):
                records = [f"w{k}c{call}r{i}".encode() for i in range(700)]
                offsets = brokers[k].append("t", records)
                assert offsets == sorted(set(offsets))
                written[k].update(zip(offsets, records, strict=True))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and not any(t.is_alive() for t in threads)
    assert not set(written[0]) & set(written[1])
    got = _drain(make(), -1, 3000)
    assert dict(got) == written[0] | written[1]
    assert len(got) == 2 * 15 * 700


def test_a_hot_partition_fills_the_batch(make):
    broker = make(partitions=4)
    broker.append("t", _records(5000), keys=["hot"] * 5000)
    broker.append("t", _records(3), keys=["a", "b", "c"])
    got = broker.fetch_columns("t", dict.fromkeys(range(4), -1), 3000)
    assert sum(len(offsets) for _, offsets, _ in got) == 3000


def test_a_record_larger_than_an_entry_is_refused_whole(make):
    broker = make()
    with pytest.raises(InvalidInput, match=r"record 1 is 300000 bytes; at most \d+ fit a Redis stream entry"):
        broker.append("t", [b"small", b"x" * 300_000])
    small = make(max_bytes=1024)
    with pytest.raises(InvalidInput, match="record 0 is 2000 bytes"):
        small.append("t", [b"y" * 2000])
    assert broker.end_offsets("t") == {}  # nothing of a refused call is written


def test_entries_from_before_packing_keep_their_offsets_and_are_counted(make):
    from mlscale.streams.redis_streams import id_to_offset

    broker = make()
    old_ids = [broker._r.xadd(broker._stream("t", 0), {"v": f"old{i}".encode()}) for i in range(50)]
    new = broker.append("t", _records(100))
    got = _drain(broker, -1, 1000)
    assert [o for o, _ in got] == [id_to_offset(i) for i in old_ids] + new
    assert broker.lag("t", "g") == 150
    broker.commit("t", "g", {0: id_to_offset(old_ids[19])})
    assert broker.lag("t", "g") == 130
    assert _drain(make(), id_to_offset(old_ids[19]), 7) == got[20:]


def test_an_append_that_fails_part_way_says_how_many_records_got_in(make):
    from mlscale.streams.broker import AppendIncomplete, partition_for

    broker = make(partitions=2)
    keys = [f"k{i}" for i in range(40)]
    broken = partition_for(b"k0", 2)
    broker._r.set(broker._stream("t", broken), "not a stream")  # that partition's entries fail
    with pytest.raises(AppendIncomplete, match="appended") as caught:
        broker.append("t", [f"r{i}".encode() for i in range(40)], keys=keys)
    fine = [i for i, k in enumerate(keys) if partition_for(k.encode(), 2) != broken]
    assert fine and (caught.value.appended, caught.value.total) == (len(fine), 40)
    got = broker.fetch("t", {1 - broken: -1}, 100)
    assert [m.value for m in got] == [f"r{i}".encode() for i in fine]

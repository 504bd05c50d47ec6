"""Store-side fencing: a zombie that passed its fencing check cannot overwrite the new owner's values."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import pytest

from mlscale.storage.base import KeyValue
from mlscale.storage.memory import MemoryKeyValue
from mlscale.storage.sharded import ShardedKeyValue
from mlscale.storage.sqlite import SQLiteKeyValue
from mlscale.streams.broker import partition_for
from mlscale.streams.definitions import WindowedFeature
from mlscale.streams.embedded import EmbeddedBroker
from mlscale.streams.online import decode_value, online_values
from mlscale.streams.processor import StreamProcessor

FEATURE = WindowedFeature(name="clicks_1m", source="clicks", entity_key="user", size="1m", aggregations=["count"])
GROUP = "mlscale-features"
T0 = 1_700_000_000.0


class PausingStore(KeyValue):
    """A real store whose next conditional write first runs ``pause`` (the instant a zombie sleeps
    in, after its fencing check and before its write reaches the store)."""

    def __init__(self, inner: KeyValue) -> None:
        self.inner = inner
        self.pause: Callable[[], None] | None = None
        self.paused_writes = 0

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        return self.inner.get_many(keys)

    def set_many(self, items: Mapping[bytes, bytes], ttl: float | None = None) -> None:
        self.inner.set_many(items, ttl)

    def set_many_if_newer(
        self, items: Mapping[bytes, bytes], versions: Sequence[int], ttl: float | None = None
    ) -> None:
        pause, self.pause = self.pause, None
        if pause is not None:
            self.paused_writes += 1
            pause()
        self.inner.set_many_if_newer(items, versions, ttl)

    def delete(self, keys: Sequence[bytes]) -> int:
        return self.inner.delete(keys)

    def scan(self, prefix: bytes = b"") -> Iterator[bytes]:
        return self.inner.scan(prefix)


@pytest.fixture(params=["memory", "sqlite", "redis", "sharded"])
def online(request, tmp_path) -> Iterator[KeyValue]:
    kind = request.param
    if kind == "memory":
        kv: KeyValue = MemoryKeyValue()
    elif kind == "sqlite":
        kv = SQLiteKeyValue(tmp_path / "online.db")
    elif kind == "redis":
        from mlscale.storage.redis_store import RedisKeyValue

        kv = RedisKeyValue(request.getfixturevalue("redis_url"), prefix=request.getfixturevalue("prefix"))
    else:
        kv = ShardedKeyValue({f"s{i}": SQLiteKeyValue(tmp_path / f"s{i}.db") for i in range(3)}, replicas=2)
    yield kv
    kv.delete(list(kv.scan()))
    kv.close()


def test_a_zombie_past_its_fencing_check_cannot_overwrite_the_new_owners_value(tmp_path, online):
    a_broker = EmbeddedBroker(tmp_path / "log.db", partitions=1, key_fields={"clicks": "user"})
    b_broker = EmbeddedBroker(tmp_path / "log.db", partitions=1, key_fields={"clicks": "user"})
    a_broker.append("clicks", [{"user": "u1", "ts": T0 + i / 10} for i in range(10)])
    sink = PausingStore(online)
    ckpt = tmp_path / "ckpt.db"
    zombie = StreamProcessor(
        a_broker, [FEATURE], sink, ckpt, consumer="a", batch_size=4, flush_interval=3600, checkpoint_interval=3600
    )
    assert zombie.step(timeout=0.5).processed == 4  # a full batch: nothing flushed yet
    assert sink.get(FEATURE.compile().online_key("u1", 1_699_999_980_000)) is None

    def new_owner_takes_over() -> None:
        # "a" stalls after its epoch check (a GC pause, a frozen VM): its membership lapses, "b" takes
        # the partition (a newer epoch), replays it from the checkpoint and writes all ten events.
        a_broker.leave("clicks", GROUP, "a")
        new_owner = StreamProcessor(b_broker, [FEATURE], online, ckpt, consumer="b", batch_size=100)
        new_owner.run(idle_exit=0.2)
        new_owner.close()
        assert online_values(online, FEATURE, ["u1"], at=T0)[0]["count"] == 10

    sink.pause = new_owner_takes_over
    zombie.flush()  # passes its check (still the owner), then pauses, then writes its count of 4
    assert sink.paused_writes == 1
    raw = online.get(FEATURE.compile().online_key("u1", 1_699_999_980_000))
    assert decode_value(raw)["count"] == 10, "the zombie's older epoch overwrote the new owner's value"
    # and at its next checkpoint the zombie learns it was fenced
    zombie.checkpoint()
    assert zombie.parts["clicks"] == {}
    zombie.close()


def test_values_written_before_the_version_header_still_decode():
    legacy = b'{"window_start":60000,"window_end":120000,"count":3}'
    assert decode_value(legacy)["count"] == 3
    versioned = (123).to_bytes(8, "little") + legacy  # a version byte that is '{' must not confuse it
    assert decode_value(versioned) == decode_value(legacy)


def test_one_key_written_from_two_partitions_in_one_flush_keeps_versions_aligned(tmp_path):
    # 7 and "7" are two entities but one online key; producer keys put them in two partitions
    broker = EmbeddedBroker(tmp_path / "log.db", partitions=2, key_fields={"clicks": "user"})
    keys = [k for k in ("a", "b", "c", "d", "e", "f") if partition_for(k.encode(), 2) == 0][:1]
    keys += [k for k in ("a", "b", "c", "d", "e", "f") if partition_for(k.encode(), 2) == 1][:1]
    broker.append("clicks", [{"user": 7, "ts": T0}, {"user": "7", "ts": T0 + 1}], keys=keys)
    kv = SQLiteKeyValue(tmp_path / "online.db")
    StreamProcessor(broker, [FEATURE], kv, tmp_path / "ckpt.db", batch_size=10).run(idle_exit=0.0)
    assert online_values(kv, FEATURE, ["7"], at=T0)[0]["count"] == 1
    kv.close()

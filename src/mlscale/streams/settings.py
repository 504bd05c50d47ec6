"""The ``[streams]`` section of mlscale.toml (light imports only: config.py loads it everywhere).

[streams]
broker = "embedded:streams/log.db"      # or redis://127.0.0.1:6379/0, nats://127.0.0.1:4222
online = "sqlite:///streams/online.db"   # any storage spec (memory://, redis://..., shards)
checkpoint = "postgresql://app@db:5432/mlscale"  # shared checkpoints (or redis://...); default: checkpoint_dir
offline_dir = "offline"
[[streams.features]]
name = "spend_1m"
source = "orders"
entity_key = "user"
size = "1m"
aggregations = ["count", "sum(amount)", "mean(amount)"]
dedup_key = "id"                         # drop client retries (or per topic: [streams.dedup_keys])
"""

from __future__ import annotations

import msgspec

from mlscale.streams.definitions import WindowedFeature


class StreamSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Where events live, where features go, and which windowed features to compute."""

    broker: str = "embedded:streams/log.db"
    partitions: int = 8
    group: str = "mlscale-features"
    checkpoint_dir: str = "streams/checkpoints"
    # Where checkpoints (window state, offsets, epochs, dedup state) live: "" keeps an SQLite file in
    # checkpoint_dir (one host); postgresql://... or redis://... lets processors on several hosts
    # share the partitions and take over from a dead host.
    checkpoint: str = ""
    online: str = "sqlite:///streams/online.db"
    offline_dir: str = "offline"
    # Seconds between checkpoints (state + offsets); shorter means less replay after a crash.
    # Each checkpoint also forces a flush, so under a backlog a short interval rewrites the same
    # windows again and again (bench/streams/run.py --events 1000000 --no-bytewax: 1 s with a 0.5 s
    # flush ran 208k-212k events/s, these defaults 353k-362k).
    checkpoint_interval: float = 5.0
    # Most seconds a changed window waits for its online write while a backlog is being worked
    # off (a caught-up processor writes every batch at once); longer means fewer, coalesced writes.
    flush_interval: float = 2.0
    batch_size: int = 20_000
    # Seconds without a heartbeat after which a processor's partitions move to the others.
    member_ttl: float = 3.0
    # Routing field per topic for topics no feature reads (features route by their entity_key).
    key_fields: dict[str, str] = msgspec.field(default_factory=dict)
    # Dedup field per topic: every feature reading the topic drops repeats of it, unless the
    # feature names its own ``dedup_key``.
    dedup_keys: dict[str, str] = msgspec.field(default_factory=dict)
    features: list[WindowedFeature] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.dedup_keys:
            self.features = [
                msgspec.structs.replace(f, dedup_key=self.dedup_keys[f.source])
                if f.dedup_key is None and f.source in self.dedup_keys
                else f
                for f in self.features
            ]

    def topic_keys(self) -> dict[str, str]:
        """Partitioning field of every topic: the entity key of the features reading it."""
        keys = dict(self.key_fields)
        for f in self.features:
            keys.setdefault(f.source, f.entity_key)
        return keys

"""Streams: brokers (embedded SQLite log, Redis Streams, NATS JetStream), windowed features computed
exactly-once into the online store, and the same definitions as DuckDB backfills.

    from mlscale.streams import WindowedFeature, open_broker, StreamProcessor, ingest_events

Names load lazily: config.py imports ``mlscale.streams.settings`` and must not pay for NumPy,
DuckDB, redis or nats.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Broker": "mlscale.streams.broker",
    "Message": "mlscale.streams.broker",
    "EmbeddedBroker": "mlscale.streams.embedded",
    "RedisStreamsBroker": "mlscale.streams.redis_streams",
    "NatsBroker": "mlscale.streams.nats_jetstream",
    "open_broker": "mlscale.streams.connect",
    "broker_from_settings": "mlscale.streams.connect",
    "WindowedFeature": "mlscale.streams.definitions",
    "StreamProcessor": "mlscale.streams.processor",
    "dead_letter_topic": "mlscale.streams.processor",
    "CheckpointStore": "mlscale.streams.checkpoint",
    "Checkpoints": "mlscale.streams.checkpoint",
    "open_checkpoints": "mlscale.streams.checkpoint",
    "PostgresCheckpoints": "mlscale.streams.checkpoint_postgres",
    "RedisCheckpoints": "mlscale.streams.checkpoint_redis",
    "ingest_events": "mlscale.streams.ingest",
    "parse_events": "mlscale.streams.ingest",
    "feature_sql": "mlscale.streams.batch",
    "compute": "mlscale.streams.batch",
    "backfill": "mlscale.streams.batch",
    "StreamSettings": "mlscale.streams.settings",
    "archive_topic": "mlscale.streams.archive",
    "online_values": "mlscale.streams.online",
    "window_rows": "mlscale.streams.online",
    "Deduplicator": "mlscale.streams.dedup",
    "sessions": "mlscale.streams.online",
    "decode_value": "mlscale.streams.online",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mlscale.streams' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = sorted(_EXPORTS)

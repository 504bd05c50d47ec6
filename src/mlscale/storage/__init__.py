"""Key-value backends shared by the caches and the online feature store (imports nothing above it).

``open_store("sqlite:///store.db")``, ``open_store("redis://host:6379/0")``, or a list of URLs for a
sharded store. Redis, SQLite and the sharded store are imported lazily by the factory.
"""

from mlscale.storage.base import KeyValue
from mlscale.storage.factory import open_store, parse_spec
from mlscale.storage.memory import MemoryKeyValue
from mlscale.storage.settings import StorageSettings


def __getattr__(name: str):  # lazy re-exports keep `import mlscale.storage` light
    if name == "HashRing":
        from mlscale.storage.hashring import HashRing

        return HashRing
    if name == "SQLiteKeyValue":
        from mlscale.storage.sqlite import SQLiteKeyValue

        return SQLiteKeyValue
    if name in ("RedisKeyValue", "RedisClusterKeyValue"):
        from mlscale.storage import redis_store

        return getattr(redis_store, name)
    if name == "ShardedKeyValue":
        from mlscale.storage.sharded import ShardedKeyValue

        return ShardedKeyValue
    raise AttributeError(name)


__all__ = [
    "HashRing",
    "KeyValue",
    "MemoryKeyValue",
    "RedisClusterKeyValue",
    "RedisKeyValue",
    "SQLiteKeyValue",
    "ShardedKeyValue",
    "StorageSettings",
    "open_store",
    "parse_spec",
]

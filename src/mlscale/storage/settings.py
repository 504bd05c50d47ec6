"""Settings of the shared key-value store (``[storage]`` in mlscale.toml); imports nothing heavy."""

from __future__ import annotations

import msgspec


class StorageSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Where the shared key-value store lives.

    One ``url`` (``memory://``, ``sqlite:///path.db``, ``redis://host:port/db``, ``redis+cluster://host:port``),
    or several ``shards`` (each a URL or ``name=URL``) placed by consistent hashing.
    """

    url: str = "sqlite:///.mlscale/store.db"
    shards: list[str] = msgspec.field(default_factory=list)
    # Owners per key in a sharded store; 2 survives one dead shard without losing reads.
    replicas: int = 1
    # Points per shard on the hash ring: more gives a more even spread, a slower ring build.
    vnodes: int = 160
    # Seconds any call to a networked store may take before it fails with ServiceUnavailable.
    timeout: float = 1.0

"""Open a key-value store from a URL, a list of URLs (sharded), or StorageSettings."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from mlscale.errors import ConfigError
from mlscale.storage.base import KeyValue
from mlscale.storage.memory import MemoryKeyValue
from mlscale.storage.settings import StorageSettings

SCHEMES = ("memory", "sqlite", "redis", "rediss", "unix", "redis+cluster", "rediss+cluster")


def parse_spec(spec: str | Sequence[str]) -> list[tuple[str, str]]:
    """(name, url) pairs of a spec: one URL, comma-separated URLs, or a list; ``name=url`` names a shard.

    An unnamed shard is named by its URL, so the same URL means the same shard in two specs
    (which is what lets resharding tell which keys stay put).
    """
    entries = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [s.strip() for s in spec]
    entries = [e for e in entries if e]
    if not entries:
        raise ConfigError("empty store spec: give a URL such as sqlite:///store.db or redis://host:6379/0")
    pairs = []
    for entry in entries:
        name, sep, url = entry.partition("=")
        if not sep or "://" in name:
            name, url = entry, entry
        pairs.append((name, url))
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names):
        raise ConfigError(f"store spec names a shard twice: {names}")
    return pairs


def open_url(
    url: str, *, root: Path | str | None = None, timeout: float = 1.0, sqlite_page_cache_kib: int | None = None
) -> KeyValue:
    """One backend from its URL (``sqlite_page_cache_kib``: SQLite's page cache per connection, when
    not the store's default)."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        return MemoryKeyValue()
    if scheme == "sqlite":
        from mlscale.storage.sqlite import SQLiteKeyValue

        path = url.split("://", 1)[1]
        path = path[1:] if path.startswith("/") else path  # sqlite:///rel.db, sqlite:////abs.db
        if path in ("", ":memory:"):
            return SQLiteKeyValue(":memory:")
        file = Path(path).expanduser()
        if not file.is_absolute() and root is not None:
            file = Path(root) / file
        return SQLiteKeyValue(file, timeout=max(timeout, 5.0), page_cache_kib=sqlite_page_cache_kib)
    if scheme in ("redis", "rediss", "unix"):
        from mlscale.storage.redis_store import RedisKeyValue

        return RedisKeyValue(url, timeout=timeout)
    if scheme in ("redis+cluster", "rediss+cluster"):
        from mlscale.storage.redis_store import RedisClusterKeyValue

        return RedisClusterKeyValue(url, timeout=timeout)
    raise ConfigError(f"unknown store URL {url!r}: the scheme must be one of {', '.join(SCHEMES)}")


def open_store(
    spec: str | Sequence[str] | StorageSettings,
    *,
    root: Path | str | None = None,
    timeout: float | None = None,
    replicas: int | None = None,
    vnodes: int | None = None,
    sqlite_page_cache_kib: int | None = None,
) -> KeyValue:
    """A KeyValue for ``spec``; several URLs give a ShardedKeyValue over them.

    Relative SQLite paths are resolved against ``root`` (the project folder) when given.
    """
    if isinstance(spec, StorageSettings):
        settings = spec
        spec = settings.shards or settings.url
        timeout = settings.timeout if timeout is None else timeout
        replicas = settings.replicas if replicas is None else replicas
        vnodes = settings.vnodes if vnodes is None else vnodes
    timeout = 1.0 if timeout is None else timeout
    pairs = parse_spec(spec)
    if len(pairs) == 1 and replicas in (None, 1):
        return open_url(pairs[0][1], root=root, timeout=timeout, sqlite_page_cache_kib=sqlite_page_cache_kib)
    from mlscale.storage.sharded import ShardedKeyValue

    if (replicas or 1) < 1 or (vnodes or 1) < 1:
        raise ConfigError("replicas and vnodes must be at least 1")
    shards: dict[str, KeyValue] = {}
    try:
        for name, url in pairs:
            shards[name] = open_url(url, root=root, timeout=timeout, sqlite_page_cache_kib=sqlite_page_cache_kib)
    except BaseException:
        for store in shards.values():
            store.close()
        raise
    return ShardedKeyValue(shards, replicas=replicas or 1, vnodes=vnodes or 160)

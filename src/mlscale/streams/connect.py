"""One URL names a broker, so configuration switches backends without code changes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from mlscale.errors import ConfigError
from mlscale.streams.broker import Broker


def open_broker(
    url: str,
    partitions: int = 8,
    key_fields: Mapping[str, str] | None = None,
    member_ttl: float = 3.0,
    root: Path | str = ".",
    prefix: str | None = None,
) -> Broker:
    """``embedded:PATH`` (or a bare path), ``redis://...`` or ``nats://...``; relative paths use ``root``.

    ``prefix`` namespaces the keys/streams on a shared Redis or NATS (ignored by the embedded log).
    """
    kwargs = {"partitions": partitions, "key_fields": key_fields, "member_ttl": member_ttl}
    if url.startswith(("redis://", "rediss://", "unix://")):
        from mlscale.streams.redis_streams import RedisStreamsBroker

        return RedisStreamsBroker(url, **kwargs, **({"prefix": prefix} if prefix else {}))
    if url.startswith(("nats://", "tls://")):
        from mlscale.streams.nats_jetstream import NatsBroker

        return NatsBroker(url, **kwargs, **({"prefix": prefix} if prefix else {}))
    if "://" in url and not url.startswith("embedded:"):
        raise ConfigError(f"broker URL {url!r}: expected embedded:PATH, redis://... or nats://...")
    from mlscale.streams.embedded import EmbeddedBroker

    path = Path(url.removeprefix("embedded:").removeprefix("//") or "streams/log.db")
    if str(path) != ":memory:" and not path.is_absolute():
        path = Path(root) / path
    return EmbeddedBroker(path, **kwargs)


def broker_from_settings(settings) -> Broker:
    """The broker of a project's ``[streams]`` section (``settings`` is mlscale.config.Settings)."""
    s = settings.streams
    return open_broker(
        s.broker, partitions=s.partitions, key_fields=s.topic_keys(), member_ttl=s.member_ttl, root=settings.root
    )

"""Brokers for the streams tests: the embedded log in a temporary folder and the REAL Redis and NATS."""

from __future__ import annotations

import contextlib
import uuid

import pytest

from mlscale.streams.embedded import EmbeddedBroker


@pytest.fixture(params=["embedded", "redis", "nats"])
def broker_factory(request, tmp_path):
    """A function making brokers on one backend that share a topic namespace (as separate processes would)."""
    made = []
    kind = request.param
    if kind == "redis":
        url = request.getfixturevalue("redis_url")
        from mlscale.streams.redis_streams import RedisStreamsBroker

        prefix = f"test:{uuid.uuid4().hex[:8]}:"

        def make(**kw):
            b = RedisStreamsBroker(url, prefix=prefix, **kw)
            made.append(b)
            return b
    elif kind == "nats":
        url = request.getfixturevalue("nats_url")
        from mlscale.streams.nats_jetstream import NatsBroker

        prefix = f"t{uuid.uuid4().hex[:8]}"

        def make(**kw):
            b = NatsBroker(url, prefix=prefix, **kw)
            made.append(b)
            return b
    else:
        path = tmp_path / "log.db"

        def make(**kw):
            b = EmbeddedBroker(path, **kw)
            made.append(b)
            return b

    make.kind = kind
    yield make
    if kind in ("redis", "nats") and made:
        cleanup = make()
        with contextlib.suppress(Exception):
            cleanup.delete_namespace()
    for b in made:
        with contextlib.suppress(Exception):
            b.close()

"""Fixtures for storage tests: private redis-servers that a test may kill, unique key prefixes."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from mlscale.storage.localredis import LocalRedis


@pytest.fixture
def start_redis() -> Iterator[Callable[[], LocalRedis]]:
    """Start private redis-servers on free ports; all are killed when the test ends."""
    servers: list[LocalRedis] = []

    def start() -> LocalRedis:
        server = LocalRedis().start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def prefix() -> bytes:
    """A key prefix no other test (or engineer) uses on the shared Redis."""
    return f"t-{uuid.uuid4().hex[:12]}:".encode()

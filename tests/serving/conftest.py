"""Fixtures of the serving tests: a model repository and a running two-worker server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from serving_support import RunningServer, build_test_repository


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_test_repository(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def server(model_repository: Path) -> Iterator[RunningServer]:
    running = RunningServer(model_repository, workers=2)
    yield running
    running.stop()

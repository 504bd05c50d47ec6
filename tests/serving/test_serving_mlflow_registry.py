"""Models served from a real MLflow registry (PostgreSQL backend, served artifacts) by real
`mlscale serve` processes: aliases followed, versions pinned, a moved alias reaching every worker
with no failed request, and clear errors for what does not exist or cannot be reached."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from mlflow_support import MlflowServer, register_broken_version, register_constant_model
from serving_support import RunningServer, free_port

from mlscale.errors import ConfigError, ModelNotFound
from mlscale.serving.mlflow_registry import RegistryRef, RegistrySource, model_sources, parse_uri
from mlscale.serving.repository import ModelRepository

# The MLflow server's start (a fresh PostgreSQL database migrated) counts in the first test's time.
pytestmark = [pytest.mark.service, pytest.mark.timeout(300)]

ROW = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}
MLSCALE = str(Path(sys.executable).parent / "mlscale")


@pytest.fixture(scope="module")
def registry(postgres_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    scratch = tmp_path_factory.mktemp("mlflow")
    server = MlflowServer(postgres_dsn, scratch / "artifacts", scratch / "server.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(registry: MlflowServer):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=registry.url, registry_uri=registry.url)


def _serve(tmp_path: Path, registry: MlflowServer, models: list[str], workers: int = 2) -> RunningServer:
    (tmp_path / "models").mkdir()
    config = tmp_path / "mlscale.toml"
    config.write_text(f'[server.mlflow]\npoll_interval = 0.3\ncache_dir = "{tmp_path / "cache"}"\n')
    extra = ["--mlflow-tracking-uri", registry.url]
    for model in models:
        extra += ["--model", model]
    return RunningServer(tmp_path / "models", workers=workers, config=config, extra=extra)


def _answer(client: httpx.Client, path: str) -> tuple[str, float]:
    response = client.post(path, json=ROW)
    assert response.status_code == 200, response.text
    body = response.json()
    return body["model_version"], body["outputs"][0]["data"][0]


def test_moved_alias_reaches_every_worker_with_no_failed_request(tmp_path: Path, registry, client):
    name = f"iris-{uuid.uuid4().hex[:6]}"
    assert register_constant_model(client, name, 1.0, alias="champion") == "1"
    client.set_registered_model_alias(name, "fallback", "1")  # keeps v1 in models:/<name>
    server = _serve(
        tmp_path, registry, [f"iris=models:/{name}@champion", f"pinned=models:/{name}/1", f"every=models:/{name}"]
    )
    failures: list[str] = []
    seen: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        # Bounded in count and time whatever happens to the rest of the test.
        until = time.monotonic() + 60
        with httpx.Client(base_url=server.url, timeout=10) as http:
            for _ in range(20000):
                if stop.is_set() or time.monotonic() > until:
                    return
                for path in ("/v2/models/iris/infer", "/v2/models/iris/versions/champion/infer"):
                    response = http.post(path, json=ROW)
                    if response.status_code != 200:
                        failures.append(f"{path}: {response.status_code} {response.text}")
                    else:
                        seen.append(response.json()["model_version"])

    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            assert http.get("/v2/models/iris").json()["versions"] == ["1"]
            assert _answer(http, "/v2/models/iris/infer") == ("1", 1.0)
            assert _answer(http, "/v2/models/iris/versions/champion/infer") == ("1", 1.0)
            assert _answer(http, "/v2/models/pinned/infer") == ("1", 1.0)
            with ThreadPoolExecutor(3) as pool:
                loops = [pool.submit(traffic) for _ in range(3)]
                try:
                    # A new version, then the alias moved: loaded first, switched at once, on both workers.
                    assert register_constant_model(client, name, 2.0) == "2"
                    client.set_registered_model_alias(name, "champion", "2")
                    moved = time.monotonic()
                    _steadily(lambda: _answer(http, "/v2/models/iris/infer") == ("2", 2.0), "v2 on every worker")
                    switch_seconds = time.monotonic() - moved
                finally:
                    stop.set()
                for loop in loops:
                    loop.result()
            assert failures == []
            assert {"1", "2"} <= set(seen)
            assert switch_seconds < 10
            # The pinned version stays; the whole model serves v1 and v2 with the alias on v2.
            assert _answer(http, "/v2/models/pinned/infer") == ("1", 1.0)
            assert http.get("/v2/models/pinned").json()["versions"] == ["1"]
            _steadily(
                lambda: (
                    http.get("/v2/models/every").json()["versions"] == ["1", "2"]
                    and _answer(http, "/v2/models/every/versions/champion/infer") == ("2", 2.0)
                ),
                "models:/<name> serving both aliased versions on every worker",
            )
            assert _answer(http, "/v2/models/every/versions/fallback/infer") == ("1", 1.0)
            assert _answer(http, "/v2/models/every/infer") == ("2", 2.0)  # the latest
            # The old version is gone from the alias-following model once nothing routes to it.
            assert http.post("/v2/models/iris/versions/1/infer", json=ROW).status_code == 404
            index = http.post("/v2/repository/index").json()
            assert {"name": "iris", "version": "2", "state": "READY", "reason": ""} in index
            # An alias moved to a version that cannot load stays where it was, and says why.
            broken = register_broken_version(client, name)
            client.set_registered_model_alias(name, "champion", broken)
            _steadily(lambda: _state(http, "iris", broken) == "UNAVAILABLE", "the broken version tried on every worker")
            for _ in range(10):
                assert _answer(http, "/v2/models/iris/infer") == ("2", 2.0)
                assert _answer(http, "/v2/models/iris/versions/champion/infer") == ("2", 2.0)
    finally:
        assert server.stop() == 0
    # One download per version, shared by the workers.
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "cache" / "iris").iterdir()) == ["1", "2", "3"]


class _Link:
    """A TCP relay to the registry that the test can cut: the registry goes away for the server
    while the MLflow server itself lives on for the other tests."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: asyncio.Server | None = None
        self.pipes: set[asyncio.Task] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for pipe in self.pipes:
            pipe.cancel()
        await self.server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                sink.close()

        tasks = {asyncio.create_task(pipe(reader, upstream_writer)), asyncio.create_task(pipe(upstream_reader, writer))}
        self.pipes |= tasks
        await asyncio.gather(*tasks)
        self.pipes -= tasks


def test_registry_outage_keeps_the_loaded_versions_serving_and_logs_once(
    tmp_path: Path, registry, client, caplog: pytest.LogCaptureFixture
):
    name = f"iris-{uuid.uuid4().hex[:6]}"
    register_constant_model(client, name, 3.0, alias="champion")

    async def scenario() -> None:
        link = _Link(registry.port)
        await link.start()
        source = RegistrySource({"iris": f"models:/{name}@champion"}, link.url, tmp_path / "cache")
        repository = ModelRepository(tmp_path / "models", registry=source)
        try:
            await repository.sync(strict=True)
            model = repository.resolve("iris", "champion")
            assert model.version == "1"
            await link.cut()
            with caplog.at_level(logging.ERROR, logger="mlscale.serving"):
                for _ in range(3):
                    await repository.sync(source)
            outage = [r for r in caplog.records if "cannot list its versions" in r.getMessage()]
            assert len(outage) == 1, [r.getMessage() for r in caplog.records]
            assert "cannot use the MLflow registry" in outage[0].getMessage()
            answer = await repository.resolve("iris").batcher.submit({"input": np.ones((2, 4))}, None, None)
            assert [a.tolist() for a in answer.values()] == [[3.0, 3.0]]
            assert repository.index() == [{"name": "iris", "version": "1", "state": "READY", "reason": ""}]
        finally:
            await repository.close()

    asyncio.run(scenario())


def _steadily(condition, what: str, timeout: float = 20.0) -> None:
    """Wait until ``condition`` holds ten times in a row (so on every worker), within ``timeout``."""
    streak, deadline = 0, time.monotonic() + timeout
    while streak < 10:
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        streak = streak + 1 if condition() else 0


def _state(http: httpx.Client, model: str, version: str) -> str | None:
    rows = http.post("/v2/repository/index").json()
    return next((r["state"] for r in rows if r["name"] == model and r.get("version") == version), None)


def _serve_fails(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "models").mkdir(exist_ok=True)
    command = [MLSCALE, "serve", "--model-repository", str(tmp_path / "models"), "--port", str(free_port())]
    command += ["--grpc-port", "0", *args]
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    return result


def test_missing_model_or_alias_refuses_to_start_with_one_clear_line(tmp_path: Path, registry, client):
    name = f"iris-{uuid.uuid4().hex[:6]}"
    register_constant_model(client, name, 1.0, alias="champion")
    missing = f"models:/nobody-{name}@champion"
    result = _serve_fails(tmp_path, "--mlflow-tracking-uri", registry.url, "--model", missing)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {missing}: the MLflow registry at {registry.url} has no such alias 'champion'")
    # The same check, in process (each `mlscale serve` start costs seconds): what is missing is named.
    for uri, what in (
        (f"models:/{name}@challenger", "alias 'challenger'"),
        (f"models:/{name}/7", "version 7"),
        (f"models:/nobody-{name}", "model"),
    ):
        source = RegistrySource({"m": uri}, registry.url, tmp_path / "cache")
        with pytest.raises(ModelNotFound) as caught:
            source.check()
        assert str(caught.value).startswith(f"{uri}: the MLflow registry at {registry.url} has no such {what}")
        assert "\n" not in str(caught.value)


def test_registry_down_at_start_refuses_to_start_with_one_clear_line(tmp_path: Path):
    down = f"http://127.0.0.1:{free_port()}"
    with_token = down.replace("http://", "http://ci:s3cret-token@")
    started = time.monotonic()
    result = _serve_fails(tmp_path, "--mlflow-tracking-uri", with_token, "--model", "models:/iris@champion")
    assert time.monotonic() - started < 60  # no minutes of retries
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: models:/iris@champion: cannot use the MLflow registry at {down}")
    assert "s3cret" not in result.stderr  # credentials in the URI never reach an error


def test_registry_models_need_a_registry(tmp_path: Path):
    result = _serve_fails(tmp_path, "--model", "models:/iris@champion")
    assert "set tracking_uri or MLFLOW_TRACKING_URI" in result.stderr


def test_models_uris_parse_or_say_what_is_wrong():
    assert parse_uri("models:/iris@champion") == RegistryRef("iris", alias="champion")
    assert parse_uri("models:/iris/12") == RegistryRef("iris", version="12")
    assert parse_uri("models:/team.iris") == RegistryRef("team.iris")
    for bad, message in (
        ("models:/iris/Production", "use an alias"),
        ("models:/", "not a registry model URI"),
        ("runs:/abc/model", "not a registry model URI"),
        ("models:/iris@", "not a registry model URI"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_uri(bad)
    assert model_sources(["models:/iris@champion", "old=models:/iris/1"]) == {
        "iris": "models:/iris@champion",
        "old": "models:/iris/1",
    }
    with pytest.raises(ConfigError, match="a second model name"):
        model_sources(["models:/iris@champion", "iris=models:/iris/1"])
    with pytest.raises(ConfigError, match="tracking_uri"):
        RegistrySource({"iris": "models:/iris@champion"}, "", Path("cache"))


def test_versions_no_longer_served_leave_the_download_cache(tmp_path: Path, registry, client):
    """A version the alias moved away from is deleted from the cache once unserved for keep_seconds;
    the served one and a fresh leftover stay (another worker may still be loading or draining)."""
    name = f"prune-{uuid.uuid4().hex[:8]}"
    first = register_constant_model(client, name, 1.0, alias="live")
    cache = tmp_path / "cache"
    source = RegistrySource({name: f"models:/{name}@live"}, registry.url, cache, keep_seconds=60.0)
    old_folder = source.fetch(name).versions[first][0]
    second = register_constant_model(client, name, 2.0, alias="live")
    # Moved just now: the old version stays for keep_seconds.
    new_folder = source.fetch(name).versions[second][0]
    assert old_folder.is_dir() and new_folder.is_dir()
    # Unserved for longer than keep_seconds (its folder's time set back, as if an hour had passed).
    os.utime(old_folder, (time.time() - 120, time.time() - 120))
    os.utime(new_folder, (time.time() - 120, time.time() - 120))
    assert source.fetch(name).versions[second][0] == new_folder
    assert not old_folder.exists(), "a version no longer served stayed in the cache"
    assert new_folder.is_dir(), "the served version was deleted"

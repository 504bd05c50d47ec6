"""The repository over a source that is not a folder (what the MLflow registry source is): aliases
from the source move only to versions that loaded, a request in flight on the old version finishes,
and the source wins over a folder of the same name. Fast, in process: the source is a list the test
edits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from mlscale.errors import ModelNotFound
from mlscale.serving.inference import InferenceCore
from mlscale.serving.protocol import DecodedRequest
from mlscale.serving.repository import ModelRepository
from mlscale.serving.sources import Listing

MODEL = '''
import time
import numpy as np

class Model:
    """Multiplies by FACTOR after a pause of x[0, 1] seconds."""
    inputs = [{"name": "x", "datatype": "FP64", "shape": [-1, 2]}]
    outputs = [{"name": "y", "datatype": "FP64", "shape": [-1, 2]}]
    def predict(self, inputs):
        time.sleep(float(inputs["x"][0, 1]))
        return {"y": inputs["x"] * FACTOR}
'''
TOML = 'execution = "thread"\n'


class EditableSource:
    """A source whose listing the test sets: versions (folders), aliases, the default route."""

    poll_interval = 0.0

    def __init__(self, store: Path) -> None:
        self.store = store
        self.now = Listing({})

    def names(self) -> list[str]:
        return ["m"]

    async def listing(self, name: str) -> Listing:
        return self.now

    def version(self, version: str, factor: float | None) -> tuple[Path, tuple]:
        """A version folder multiplying by ``factor`` (None: a model that fails to import)."""
        folder = self.store / version
        folder.mkdir(parents=True, exist_ok=True)
        source = MODEL.replace("FACTOR", str(factor)) if factor is not None else "raise RuntimeError('broken')\n"
        (folder / "model.py").write_text(source)
        (folder / "model.toml").write_text(TOML)
        return folder, (version,)


def _row(pause: float = 0.0) -> dict[str, np.ndarray]:
    return {"x": np.array([[1.0, pause]])}


async def _y(repository: ModelRepository, version: str | None = None, pause: float = 0.0) -> float:
    model = repository.resolve("m", version)
    return float((await model.batcher.submit(_row(pause), None, None))["y"][0, 0])


def test_alias_moves_after_the_new_version_loads_and_old_requests_finish(tmp_path: Path):
    async def scenario() -> None:
        source = EditableSource(tmp_path / "store")
        # A folder model of the same name: the source wins, its model.toml still applies.
        (tmp_path / "models" / "m" / "9").mkdir(parents=True)
        repository = ModelRepository(tmp_path / "models", registry=source)
        try:
            source.now = Listing({"1": source.version("1", 1.0)}, {"champion": "1"}, "champion")
            await repository.sync(strict=True)
            assert repository.versions_of("m") == ["1"]
            assert await _y(repository) == 1.0
            # A slow request on v1 is in flight while the alias moves to v2: v1 drains it before it
            # unloads, and requests arriving meanwhile already go to v2 (never to a gone version).
            slow = asyncio.create_task(_y(repository, "champion", pause=1.0))
            await asyncio.sleep(0.05)
            source.now = Listing({"2": source.version("2", 2.0)}, {"champion": "2"}, "champion")
            syncing = asyncio.create_task(repository.sync(source))
            requests = []
            for _ in range(500):
                if syncing.done():
                    break
                requests.append(asyncio.create_task(_y(repository, "champion")))
                await asyncio.sleep(0.01)
            await syncing
            during = await asyncio.gather(*requests)  # none failed
            assert await slow == 1.0
            assert 2.0 in during and set(during) <= {1.0, 2.0}
            assert await _y(repository) == 2.0
            assert await _y(repository, "champion") == 2.0
            with pytest.raises(ModelNotFound):
                repository.resolve("m", "1")
            # The alias never moves to a version that fails to load; the index says why.
            source.now = Listing({"3": source.version("3", None)}, {"champion": "3"}, "champion")
            for _ in range(2):
                await repository.sync(source)
            assert await _y(repository, "champion") == 2.0
            assert await _y(repository) == 2.0
            states = {row["version"]: row["state"] for row in repository.index()}
            assert states == {"2": "READY", "3": "UNAVAILABLE"}
            # Moved on to a version that loads: the held one and the failure are gone.
            source.now = Listing({"4": source.version("4", 4.0)}, {"champion": "4"}, "champion")
            await repository.sync(source)
            assert await _y(repository) == 4.0
            assert {row["version"]: row["state"] for row in repository.index()} == {"4": "READY"}
        finally:
            await repository.close()

    asyncio.run(scenario())


def test_a_traffic_split_in_model_toml_spans_source_aliases(tmp_path: Path):
    async def scenario() -> None:
        source = EditableSource(tmp_path / "store")
        (tmp_path / "models" / "m").mkdir(parents=True)
        (tmp_path / "models" / "m" / "model.toml").write_text("traffic = { champion = 1, challenger = 1 }\n")
        repository = ModelRepository(tmp_path / "models", registry=source)
        try:
            versions = {"1": source.version("1", 1.0), "2": source.version("2", 2.0)}
            source.now = Listing(versions, {"champion": "1", "challenger": "2"})
            await repository.sync(strict=True)
            answers = {await _y(repository) for _ in range(60)}
            assert answers == {1.0, 2.0}
        finally:
            await repository.close()

    asyncio.run(scenario())


def test_a_request_let_into_a_version_that_closes_before_its_body_arrives_is_served_by_the_new_one(tmp_path: Path):
    """The race of a moved alias: a request let into v1's queue is still reading its body when v1
    closes (its queue waits a bounded time for such requests, then stops). It is routed again to
    the version the alias now names, not answered 503."""

    async def scenario() -> None:
        source = EditableSource(tmp_path / "store")
        (tmp_path / "models").mkdir()
        repository = ModelRepository(tmp_path / "models", registry=source)
        core = InferenceCore(repository)
        body_arrives = asyncio.Event()
        let_in = asyncio.Event()

        async def decode() -> DecodedRequest:
            let_in.set()
            await body_arrives.wait()
            return DecodedRequest(_row(), None, {}, None, False)

        def encode(model, request, outputs, parameters) -> tuple[str, float]:
            return model.version, float(outputs["y"][0, 0])

        try:
            source.now = Listing({"1": source.version("1", 1.0)}, {"champion": "1"}, "champion")
            await repository.sync(strict=True)
            slow = asyncio.create_task(core.infer("m", "champion", decode, encode, None))
            await let_in.wait()
            retiring = repository.resolve("m", "champion").batcher
            source.now = Listing({"2": source.version("2", 2.0)}, {"champion": "2"}, "champion")
            await repository.sync(source)  # v1 closed, having waited its bounded time for the body
            assert retiring._runner.done()
            body_arrives.set()
            assert await slow == ("2", 2.0)
            # A version unloaded with nothing to take its place still answers the typed error.
            body_arrives.clear()
            let_in.clear()
            alone = asyncio.create_task(core.infer("m", "2", decode, encode, None))
            await let_in.wait()
            source.now = Listing({"3": source.version("3", 3.0)}, {"champion": "3"}, "champion")
            await repository.sync(source)
            body_arrives.set()
            with pytest.raises(ModelNotFound):
                await alone
        finally:
            await repository.close()

    asyncio.run(scenario())

"""Definitions from mlscale.toml and the file it references, compiled into one FeatureRepo.

The ``[features]`` section and a referenced features file (TOML of the same shape, or a Python
module with top-level Entity / FeatureView / FeatureService objects) are merged; duplicates across
them are reported like duplicates anywhere else.
"""

from __future__ import annotations

import runpy
import tomllib
from pathlib import Path

import msgspec

from mlscale.config import Settings
from mlscale.errors import ConfigError
from mlscale.features.definitions import Entity, FeatureRepo, FeatureService, FeatureView
from mlscale.features.settings import FeaturesSettings


def _from_section(section: FeaturesSettings) -> tuple[list, list, list]:
    # Built through the constructors so TOML values get the same normalization as Python ones.
    asdict = msgspec.structs.asdict
    return (
        [Entity(**asdict(e)) for e in section.entities],
        [FeatureView(**asdict(v)) for v in section.views],
        [FeatureService(**asdict(s)) for s in section.services],
    )


def _from_file(path: Path) -> tuple[list, list, list]:
    if not path.exists():
        raise ConfigError(f"features definitions file {path} does not exist")
    if path.suffix == ".py":
        namespace = runpy.run_path(str(path))
        values = list(namespace.values())
        return (
            [v for v in values if isinstance(v, Entity)],
            [v for v in values if isinstance(v, FeatureView)],
            [v for v in values if isinstance(v, FeatureService)],
        )
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    # Accept both a bare file ([[entities]] ...) and one that nests everything under [features].
    data = data.get("features", data)
    try:
        section = msgspec.convert(data, FeaturesSettings, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return _from_section(section)


def load_definitions(settings: Settings) -> FeatureRepo:
    """Every definition the project declares, validated and compiled."""
    section = settings.features
    entities, views, services = _from_section(section)
    if section.definitions:
        more = _from_file(settings.resolve(section.definitions))
        entities, views, services = entities + more[0], views + more[1], services + more[2]
    return FeatureRepo(entities, views, services)

"""Definitions: Python and TOML compile to the same repo; bad ones fail with clear errors; registry."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mlscale.config import load_settings
from mlscale.errors import ConfigError
from mlscale.features.definitions import Entity, FeatureRepo, FeatureService, FeatureView
from mlscale.features.loader import load_definitions
from mlscale.features.offline import OfflineStore
from mlscale.features.registry import Registry

TOML = """
[features]
registry = "reg.db"

[[features.entities]]
name = "driver"
join_key = "driver_id"

[[features.views]]
name = "driver_stats"
entities = ["driver"]
source = "{source}"
ttl = "2d"
features = {{ conv_rate = "float32", acc_rate = "float32", trips = "int64" }}

[[features.views]]
name = "driver_rates"
entities = ["driver"]
source = "{source}"
ttl = 172800
features = {{ conv_rate = "float32", acc_rate = "float32" }}

[[features.services]]
name = "driver_model"
features = ["driver_rates:conv_rate", "driver_rates:acc_rate"]
"""


def test_toml_and_python_definitions_compile_to_the_same_repo(tmp_path, repo, driver_data):
    (tmp_path / "mlscale.toml").write_text(TOML.format(source=driver_data[0]))
    from_toml = load_definitions(load_settings(tmp_path / "mlscale.toml"))
    assert from_toml.to_specs() == repo.to_specs()
    assert from_toml.layouts == repo.layouts


def test_separate_definition_files_toml_and_python(tmp_path, driver_data):
    (tmp_path / "features.toml").write_text(TOML.format(source=driver_data[0]).replace("[features]\n", ""))
    (tmp_path / "mlscale.toml").write_text('[features]\ndefinitions = "features.toml"\n')
    a = load_definitions(load_settings(tmp_path / "mlscale.toml"))
    (tmp_path / "defs.py").write_text(
        "from mlscale.features import Entity, FeatureView, FeatureService\n"
        "driver = Entity(name='driver', join_key='driver_id')\n"
        f"stats = FeatureView(name='driver_stats', entities=[driver], source={str(driver_data[0])!r}, ttl='2d',\n"
        "    features={'conv_rate': 'float32', 'acc_rate': 'float32', 'trips': 'int64'})\n"
        f"rates = FeatureView(name='driver_rates', entities=[driver], source={str(driver_data[0])!r}, ttl=172800,\n"
        "    features={'conv_rate': 'float32', 'acc_rate': 'float32'})\n"
        "model = FeatureService(name='driver_model', features=['driver_rates:conv_rate', 'driver_rates:acc_rate'])\n"
    )
    (tmp_path / "mlscale.toml").write_text('[features]\ndefinitions = "defs.py"\n')
    b = load_definitions(load_settings(tmp_path / "mlscale.toml"))
    assert sorted(a.to_specs()) == sorted(b.to_specs())


def test_created_timestamp_field_reads_the_same_from_toml_and_python(tmp_path, driver_data):
    toml = TOML.format(source=driver_data[0]).replace(
        'ttl = "2d"', 'ttl = "2d"\ncreated_timestamp_field = "written_at"'
    )
    (tmp_path / "mlscale.toml").write_text(toml)
    from_toml = load_definitions(load_settings(tmp_path / "mlscale.toml"))
    assert from_toml.views["driver_stats"].created_timestamp_field == "written_at"
    assert from_toml.views["driver_rates"].created_timestamp_field == ""
    python = FeatureView(
        name="driver_stats",
        entities=["driver"],
        source=str(driver_data[0]),
        ttl="2d",
        created_timestamp_field="written_at",
        features={"conv_rate": "float32", "acc_rate": "float32", "trips": "int64"},
    )
    specs = {(kind, name): spec for kind, name, spec in from_toml.to_specs()}
    assert specs["view", "driver_stats"] == FeatureRepo([DRIVER], [python]).to_specs()[1][2]
    # A registry written before the field existed still loads (no created time).
    old = specs["view", "driver_stats"].replace(b'"created_timestamp_field":"written_at",', b"")
    assert old != specs["view", "driver_stats"]
    loaded = FeatureRepo.from_specs([("entity", "driver", specs["entity", "driver"]), ("view", "driver_stats", old)])
    assert loaded.views["driver_stats"].created_timestamp_field == ""


def _view(**changes):
    spec = {"name": "v", "entities": ["driver"], "source": "x.parquet", "features": {"a": "float32"}}
    spec.update(changes)
    return FeatureView(**spec)


DRIVER = Entity(name="driver", join_key="driver_id")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: FeatureRepo([DRIVER], [_view(entities=["rider"])]), "unknown entity 'rider'"),
        (lambda: FeatureRepo([DRIVER, DRIVER]), "duplicate entity name 'driver'"),
        (lambda: FeatureRepo([DRIVER], [_view(), _view()]), "duplicate feature view name 'v'"),
        (lambda: FeatureRepo([DRIVER], [_view(features={"a": "text"})]), "bad type 'text'"),
        (lambda: FeatureRepo([Entity(name="e", dtype="float")]), "bad type 'float'"),
        (lambda: FeatureRepo([DRIVER], [_view(features=[("a", "float32"), ("a", "int64")])]), "duplicate feature 'a'"),
        (lambda: FeatureRepo([DRIVER], [_view(features={})]), "declares no features"),
        (lambda: FeatureRepo([DRIVER], [_view(source="")]), "exactly one of source"),
        (lambda: FeatureRepo([DRIVER], [_view(query="SELECT 1")]), "exactly one of source"),
        (lambda: FeatureRepo([DRIVER], [_view(source="x.json")]), "must be a .parquet or .csv"),
        (lambda: FeatureRepo([DRIVER], [_view(features={"driver_id": "int64"})]), "clashes"),
        (lambda: _view(ttl="soon"), "cannot read duration 'soon'"),
        (
            lambda: FeatureRepo([DRIVER], [_view()], [FeatureService(name="s", features=["v:b"])]),
            "feature service 's': feature view 'v' has no feature 'b'",
        ),
        (
            lambda: FeatureRepo([DRIVER], [_view()], [FeatureService(name="s", features=["w:a"])]),
            "unknown feature view 'w'",
        ),
        (lambda: FeatureRepo([Entity(name="1bad")]), "must be letters"),
        (
            lambda: FeatureRepo([DRIVER], [_view(created_timestamp_field="event_timestamp")]),
            "created_timestamp_field 'event_timestamp' must differ",
        ),
        (lambda: FeatureRepo([DRIVER], [_view(created_timestamp_field="a")]), "feature 'a' clashes"),
    ],
)
def test_bad_definitions_fail_with_a_clear_error(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


@pytest.mark.parametrize(
    ("frame_columns", "features", "message"),
    [
        (
            {"driver_id": [1], "ts": [datetime(2024, 1, 1)], "a": [1.0]},
            {"a": "float32"},
            "timestamp column 'event_timestamp' not found",
        ),
        (
            {"driver_id": [1], "event_timestamp": [datetime(2024, 1, 1)]},
            {"a": "float32"},
            "feature column 'a' not found",
        ),
        (
            {"driver": [1], "event_timestamp": [datetime(2024, 1, 1)], "a": [1.0]},
            {"a": "float32"},
            "join key column 'driver_id' not found",
        ),
        (
            {"driver_id": ["x"], "event_timestamp": [datetime(2024, 1, 1)], "a": [1.0]},
            {"a": "float32"},
            "join key 'driver_id' is VARCHAR",
        ),
        (
            {"driver_id": [1], "event_timestamp": [datetime(2024, 1, 1)], "a": ["x"]},
            {"a": "float32"},
            "feature 'a' is VARCHAR",
        ),
        ({"driver_id": [1], "event_timestamp": ["2024-01-01"], "a": [1.0]}, {"a": "float32"}, "not a timestamp"),
        (
            {"driver_id": [1], "event_timestamp": [datetime(2024, 1, 1)], "a": [1.0]},
            {"a": "float32", "created_timestamp_field": "written"},
            "created timestamp column 'written' not found",
        ),
        (
            {"driver_id": [1], "event_timestamp": [datetime(2024, 1, 1)], "written": [3], "a": [1.0]},
            {"a": "float32", "created_timestamp_field": "written"},
            "created timestamp column 'written' is BIGINT in .*s.parquet, not a timestamp",
        ),
    ],
)
def test_sources_missing_columns_or_wrong_types_fail_clearly(tmp_path, frame_columns, features, message):
    import pandas as pd

    pd.DataFrame(frame_columns).to_parquet(tmp_path / "s.parquet")
    features = dict(features)
    created = features.pop("created_timestamp_field", "")
    view = _view(source=str(tmp_path / "s.parquet"), features=features, created_timestamp_field=created)
    repo = FeatureRepo([DRIVER], [view])
    with pytest.raises(ConfigError, match=message):
        OfflineStore(repo).validate_source(repo.views["v"])


def test_query_sources_run_in_duckdb_relative_to_the_project(tmp_path, driver_data, make_repo):
    path, frame = driver_data
    repo = FeatureRepo(
        [DRIVER],
        [
            FeatureView(
                name="busy",
                entities=["driver"],
                features={"trips": "int64"},
                query=f"SELECT driver_id, event_timestamp, trips FROM '{path.name}' WHERE trips > 50",
            )
        ],
    )
    store = OfflineStore(repo, root=path.parent)
    store.validate_source(repo.views["busy"])
    import pandas as pd

    entities = pd.DataFrame({"driver_id": [1], "event_timestamp": [datetime(2030, 1, 1, tzinfo=UTC)]})
    got = store.get_historical_features(entities, ["busy:trips"]).column("trips").to_pylist()
    rows = frame[(frame.driver_id == 1) & (frame.trips > 50)].sort_values("event_timestamp")
    assert got == [rows.trips.iloc[-1]]


def _registry_roundtrip(registry: Registry, repo: FeatureRepo, driver_path: Path) -> None:
    result = registry.apply(repo)
    assert "view driver_stats" in result.added and not result.removed
    assert sorted(registry.load().to_specs()) == sorted(repo.to_specs())
    when = datetime(2024, 3, 1, 12, tzinfo=UTC)
    registry.set_watermark("driver_stats", when)
    registry.set_watermark("driver_rates", when)
    assert registry.watermark("driver_stats") == when
    again = registry.apply(repo)
    assert not again.added and not again.updated and len(again.unchanged) == len(repo.to_specs())
    assert registry.watermark("driver_stats") == when
    # Changing a view's features changes its online layout: its watermark no longer holds.
    changed = FeatureRepo(
        repo.entities.values(),
        [
            FeatureView(
                name="driver_stats",
                entities=["driver"],
                source=str(driver_path),
                ttl=timedelta(days=2),
                features={"trips": "int64"},
            )
        ],
    )
    result = registry.apply(changed)
    assert result.updated == ["view driver_stats"] and "view driver_rates" in result.removed
    assert "service driver_model" in result.removed
    assert registry.watermark("driver_stats") is None
    assert list(registry.load().views) == ["driver_stats"]


def test_sqlite_registry_applies_loads_and_tracks_watermarks(tmp_path, repo, driver_data):
    with Registry(tmp_path / "registry.db") as registry:
        with pytest.raises(ConfigError, match="run `mlscale features apply`"):
            registry.load()
        _registry_roundtrip(registry, repo, driver_data[0])


@pytest.mark.service
def test_postgres_registry_applies_loads_and_tracks_watermarks(postgres_dsn, repo, driver_data):
    import psycopg

    schema = f"features_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        dsn = f"{postgres_dsn}?options=-csearch_path%3D{schema}"
        with Registry(dsn) as registry:
            _registry_roundtrip(registry, repo, driver_data[0])
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def test_unreachable_postgres_registry_is_a_config_error():
    with pytest.raises(ConfigError, match="cannot reach the feature registry"):
        Registry("postgresql://nobody@127.0.0.1:1/none?connect_timeout=1")

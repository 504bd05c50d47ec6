from pathlib import Path

import pytest

from mlscale.config import load_settings
from mlscale.errors import ConfigError


def test_no_project_file_gives_embedded_defaults():
    settings = load_settings(None)
    assert settings.server.port == 8000
    assert settings.server.workers == 1


def test_relative_paths_resolve_against_the_project_folder(tmp_path: Path):
    (tmp_path / "mlscale.toml").write_text('[server]\nmodel_repository = "repo"\nport = 9001\n')
    settings = load_settings(tmp_path / "mlscale.toml")
    assert settings.server.port == 9001
    assert settings.resolve(settings.server.model_repository) == (tmp_path / "repo").resolve()


def test_wrong_type_names_the_field(tmp_path: Path):
    (tmp_path / "mlscale.toml").write_text('[server]\nport = "eighty"\n')
    with pytest.raises(ConfigError, match=r"server\.port"):
        load_settings(tmp_path / "mlscale.toml")


def test_unknown_field_is_rejected(tmp_path: Path):
    (tmp_path / "mlscale.toml").write_text("[server]\nprot = 1\n")
    with pytest.raises(ConfigError, match="prot"):
        load_settings(tmp_path / "mlscale.toml")


def test_invalid_toml_is_a_clear_error(tmp_path: Path):
    (tmp_path / "mlscale.toml").write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(tmp_path / "mlscale.toml")

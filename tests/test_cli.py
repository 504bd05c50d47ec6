"""The command line: bad input ends with one line on stderr and a non-zero exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def mlscale(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlscale", *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def test_help_lists_the_commands():
    result = mlscale("--help")
    assert result.returncode == 0
    assert "serve" in result.stdout
    assert "up" in result.stdout


def test_serve_with_missing_repository_is_one_clear_line(tmp_path: Path):
    result = mlscale("serve", "--model-repository", str(tmp_path / "nope"))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1
    assert "model repository folder does not exist" in errors[0]


def test_serve_with_bad_config_names_the_field(tmp_path: Path):
    config = tmp_path / "mlscale.toml"
    config.write_text('[server]\nworkers = "many"\n')
    result = mlscale("serve", "--config", str(config))
    assert result.returncode == 2
    assert "server.workers" in result.stderr

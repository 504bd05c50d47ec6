#!/usr/bin/env bash
# Build the MLflow tracking/registry server's own virtual environment under .cache/ when it is
# missing: the registry tests (tests/serving/test_serving_mlflow_registry.py) start `mlflow server`
# from there with a PostgreSQL backend store. The full `mlflow` package stays out of the project's
# venv, which holds only the client (mlflow-skinny) that mlscale itself uses. The server's version
# matches the client's minor release. A failed install never fails the test command; the registry
# tests then skip and say why.
set -uo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="$here/.cache/mlflow-server-venv"
python="${PYTHON:-$(command -v python3.11 || command -v python3)}"

# Installed metadata, not an import: importing mlflow.server takes seconds.
if [ -x "$venv/bin/mlflow" ] && "$venv/bin/python" -c "import importlib.metadata as m, psycopg2; m.version('mlflow')" >/dev/null 2>&1; then
    exit 0
fi
echo "ensure-mlflow-server: building the MLflow 3.17 server in $venv (one time)" >&2
rm -rf "$venv"
if ! { "$python" -m venv "$venv" && "$venv/bin/pip" install -q --disable-pip-version-check \
        "mlflow==3.17.*" "psycopg2-binary>=2.9" 2>/dev/null; }; then
    echo "ensure-mlflow-server: installing MLflow failed; the MLflow registry tests will skip" >&2
    rm -rf "$venv"
fi
exit 0

#!/usr/bin/env bash
# Build Evidently 0.7.23's own virtual environment under .cache/ when it is missing: the drift parity
# test (tests/monitoring) and bench/drift run Evidently there, never in the project's venv. A failed
# install never fails the test command; the parity test then skips and says why.
set -uo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="$here/.cache/bench-venvs/evidently"
python="${PYTHON:-$(command -v python3.11 || command -v python3)}"

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import evidently, pyarrow" >/dev/null 2>&1; then
    exit 0
fi
echo "ensure-evidently: building Evidently 0.7.23 in $venv (one time)" >&2
rm -rf "$venv"
if ! { "$python" -m venv "$venv" && "$venv/bin/pip" install -q --disable-pip-version-check \
        "evidently==0.7.23" "pandas<3" "pyarrow" 2>/dev/null; }; then
    echo "ensure-evidently: installing Evidently failed; the Evidently parity test will skip" >&2
    rm -rf "$venv"
fi
exit 0

#!/usr/bin/env bash
# Build Feast 0.67's own virtual environment under .cache/ when it is missing: the feature store's
# parity test (and bench/features) run Feast there, never in the project's venv. A failed install
# never fails the test command; the parity test then skips and says why.
set -uo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="$here/.cache/bench-venvs/feast"
python="${PYTHON:-$(command -v python3.11 || command -v python3)}"

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import feast" >/dev/null 2>&1; then
    exit 0
fi
echo "ensure-feast: building Feast 0.67 in $venv (one time)" >&2
rm -rf "$venv"
if ! { "$python" -m venv "$venv" && "$venv/bin/pip" install -q --disable-pip-version-check "feast==0.67.*" 2>/dev/null; }; then
    echo "ensure-feast: installing Feast failed; the Feast parity test will skip" >&2
    rm -rf "$venv"
fi
exit 0

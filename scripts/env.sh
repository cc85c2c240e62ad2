# Sourced by the quick-start scripts: creates .venv if missing and (re)installs the package when
# pyproject.toml or the constraints changed. A second run costs well under a second.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VIDEOGRPO_VENV:-$REPO_ROOT/.venv}"
PYTHON_BIN="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON_BIN" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || { echo "videogrpo needs Python >= 3.11 (found $($PYTHON_BIN --version)); set PYTHON=/path/to/python3.11" >&2; exit 2; }
    echo "Creating virtual environment in $VENV" >&2
    "$PYTHON_BIN" -m venv "$VENV"
fi

STAMP="$VENV/.videogrpo-install-stamp"
WANT="$(cat "$REPO_ROOT/pyproject.toml" "$REPO_ROOT/constraints-cpu.txt" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    echo "Installing videogrpo and its dependencies into $VENV (CPU torch)" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        -c "$REPO_ROOT/constraints-cpu.txt" torch==2.13.0
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        -c "$REPO_ROOT/constraints-cpu.txt" -e "$REPO_ROOT[dev]"
    echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
cd "$REPO_ROOT"

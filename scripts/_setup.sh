# Shared by scripts/test and scripts/demo: create .venv if missing and install the project.
# Usage: source scripts/_setup.sh [extras]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "setting up .venv ..." >&2
    "$PY" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip >&2
fi
EXTRAS="${1:-}"
SPEC="."
[ -n "$EXTRAS" ] && SPEC=".[$EXTRAS]"
# llama-cpp-python (test extra) builds llama.cpp from source once (~10 min); pip caches the wheel.
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}"
.venv/bin/python -m pip install -q -e "$SPEC" >&2

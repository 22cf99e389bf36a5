# Sourced by demo.sh and test.sh: create .venv at the repository root and
# install the core and every plugin into it (editable), pinned by constraints.txt.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
    echo "dpx: creating .venv with $("$PYTHON" --version)"
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${PIP[@]}" install -c constraints.txt hatchling editables
# The core was distributed as `dpx` before (a name taken on the package index by
# another project): a .venv made then still holds it, beside dpx-core.
if .venv/bin/python -c 'import importlib.metadata as m; m.distribution("dpx")' 2>/dev/null; then
    "${PIP[@]}" uninstall -y dpx
fi
editables=(-e .)
plugins=(plugins/*/)
for plugin in "${plugins[@]}"; do
    editables+=(-e "$plugin")
done
echo "dpx: installing the core (dpx-core) and ${#plugins[@]} plugins into .venv (editable)"
"${PIP[@]}" install --no-build-isolation -c constraints.txt "${editables[@]}" pytest hypothesis
# dpx-torch's optional `export` extra: dpx export --format onnx and its tests
"${PIP[@]}" install -c constraints.txt onnx onnxscript

# Sourced by test.sh and sofa_demo.sh, after bootstrap.sh: make a SOFA build importable by .venv's Python,
# so dpx-sofa runs against the real SOFA. Uses, in order: a SOFA already on PYTHONPATH; the shared build
# in $DPX_SOFA_SHARED (default: shared/sofa beside the repository, or beside the main checkout for a git
# worktree), unpacked once into
# $DPX_SOFA_HOME (default ~/.cache/dpx-sofa) because that folder may be read-only. Says which in one line.
if [ -z "${DPX_SOFA_SHARED:-}" ]; then
    DPX_SOFA_SHARED="$ROOT/../shared/sofa"
    _dpx_main_checkout="$(dirname "$(git -C "$ROOT" rev-parse --path-format=absolute --git-common-dir 2>/dev/null || echo "$ROOT/.git")")"
    [ -d "$DPX_SOFA_SHARED" ] || [ ! -d "$_dpx_main_checkout/../shared/sofa" ] || DPX_SOFA_SHARED="$_dpx_main_checkout/../shared/sofa"
    unset _dpx_main_checkout
fi
# SofaPython3 links to libpython3.11.so: an interpreter with Python linked in statically (Debian's
# /usr/bin/python3.11) would load a second copy of Python, and fails at the first scene.
_dpx_sofa_python_fits='import sys; sys.exit(not (sys.version_info[:2] == (3, 11) and any("libpython3.11.so" in line for line in open("/proc/self/maps"))))'
if .venv/bin/python -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("Sofa") is None)' 2>/dev/null; then
    echo "dpx: SOFA is importable (SOFA_ROOT=${SOFA_ROOT:-unset}): dpx-sofa runs against it"
elif [ ! -f "$DPX_SOFA_SHARED/activate.sh" ]; then
    echo "dpx: no SOFA build in $DPX_SOFA_SHARED: dpx-sofa's SOFA tests are skipped"
elif ! .venv/bin/python -c "$_dpx_sofa_python_fits" 2>/dev/null; then
    echo "dpx: the SOFA build in $DPX_SOFA_SHARED is for CPython 3.11 built as a shared library; .venv's Python" \
         "($(readlink -f .venv/bin/python)) is not: dpx-sofa's SOFA tests are skipped (recreate .venv with" \
         "PYTHON=/path/to/python3.11, e.g. pyenv's)"
else
    # shellcheck disable=SC1091
    source "$DPX_SOFA_SHARED/activate.sh"
    echo "dpx: SOFA activated from $DPX_SOFA_SHARED (SOFA_ROOT=$SOFA_ROOT): dpx-sofa runs against it"
fi
unset _dpx_sofa_python_fits
export DPX_SOFA_SHARED  # dpx-sofa's tests check this activation against it

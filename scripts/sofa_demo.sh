#!/usr/bin/env bash
# The SOFA beam demo (plugins/dpx-sofa/examples/beam_demo.py) from a fresh clone: creates .venv, makes
# SOFA importable (sofa_env.sh: ../shared/sofa when present), then generates from sofa.beam with 2 SOFA
# worker processes, trains an FC and a UNet, runs them inside SOFA and prints their error and speed-up.
# Extra arguments go to the demo (e.g. `bash scripts/sofa_demo.sh --quick`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
source "$(dirname "${BASH_SOURCE[0]}")/sofa_env.sh"
if ! .venv/bin/python -c 'import Sofa.Core' >/dev/null 2>&1; then
    echo "dpx: the SOFA beam demo needs SOFA: set DPX_SOFA_SHARED to a folder holding SOFA's activate.sh," \
         "or SOFA_ROOT and PYTHONPATH as in plugins/dpx-sofa/README.md" >&2
    exit 2
fi
exec .venv/bin/python plugins/dpx-sofa/examples/beam_demo.py --out demo-sessions/sofa_beam "$@"

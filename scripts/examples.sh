#!/usr/bin/env bash
# Every example, tier by tier, from a fresh clone: creates .venv, then runs the tutorial's steps in order,
# each feature example and the FEM beam demo (the SOFA beam demo: scripts/sofa_demo.sh). Sessions go to
# sessions/; `bash scripts/examples.sh --quick` runs the small variants the tests run.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
for example in examples/tutorial/t[1-6]_*.py examples/features/*.py examples/demos/fem_beam.py; do
    case "$example" in */common.py | */mean_environment.py) continue ;; esac
    echo "== $example"
    .venv/bin/python "$example" "$@"
done

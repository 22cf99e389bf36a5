#!/usr/bin/env bash
# Run every benchmark against its raw baseline (a few minutes on 2 cores).
# Pass --quick for a smoke run. Run on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
for bench in bench_generation bench_storage_read bench_training bench_multiprocess; do
    echo "== $bench"
    "$PY" "benchmarks/$bench.py" "$@"
    echo
done

#!/usr/bin/env bash
# Run every benchmark beside its bare baseline, side by side, 3 repetitions (about 5 minutes on 2 cores,
# plus about 6 for bench_active_learning, which trains ensembles for 3 seeds).
# Pass --quick for a smoke run (one repetition, fewer samples). Run on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
for bench in bench_generation bench_prediction bench_multiprocess bench_training bench_storage_read bench_active_learning; do
    echo "== $bench"
    "$PY" "benchmarks/$bench.py" "$@"
    echo
done
# the onnx backend against the torch backend it was exported from (issue 14)
echo "== bench_onnx"
"$PY" benchmarks/bench_onnx.py "$@"

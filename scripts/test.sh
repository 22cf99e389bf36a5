#!/usr/bin/env bash
# Run every test (core and plugins) in .venv, creating it if needed.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k storage`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
source "$(dirname "${BASH_SOURCE[0]}")/sofa_env.sh"
set +e
log="$(mktemp)"
.venv/bin/python -m pytest "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# SofaPython3 logs its unloading after pytest's summary: repeat the summary last.
summary="$(grep -E '^=+ .*(passed|failed|error|no tests ran).* =+$' "$log" | tail -n 1 || true)"
rm -f "$log"
[ -n "$summary" ] && echo "$summary"
if [ "$status" -eq 5 ]; then
    # pytest's "no tests collected": expected when a filter matches nothing,
    # a broken checkout otherwise.
    if [ "$#" -gt 0 ]; then
        echo "dpx: no test matched: $*" >&2
        exit 0
    fi
    echo "dpx: pytest collected no tests at all; is the checkout complete?" >&2
fi
exit "$status"

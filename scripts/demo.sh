#!/usr/bin/env bash
# The main job: list the plugins, then run the demo pipeline on the toy simulators.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
.venv/bin/python -m dpx plugins
.venv/bin/python examples/demo.py "$@"

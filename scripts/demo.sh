#!/usr/bin/env bash
# The main job: generate -> train -> predict on the toy spring simulator with an
# FC network (PyTorch), in a fresh folder under demo-sessions/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
DPX=(.venv/bin/python -m dpx)
RUN="demo-sessions/$(date +%Y%m%d-%H%M%S)"
WHERE=(pipeline.session_dir="\"$RUN\"")

echo "== installed plugins"
"${DPX[@]}" plugins
echo
echo "== 1. generate 12800 training and 1280 validation samples of toy.spring"
"${DPX[@]}" generate examples/spring_generate.toml "${WHERE[@]}"
"${DPX[@]}" generate examples/spring_generate.toml "${WHERE[@]}" pipeline.new_session=false \
    pipeline.batch_nb=20 'database.mode="validation"'
echo
echo "== 2. train an FC network on them"
"${DPX[@]}" train examples/spring_train.toml "${WHERE[@]}" database.existing_dir="\"$RUN/spring\""
echo
echo "== 3. run it inside the simulator and compare with the simulator's answer"
"${DPX[@]}" predict examples/spring_predict.toml "${WHERE[@]}"
echo
"${DPX[@]}" info "$RUN/spring_fc"
echo
echo "Sessions are in $RUN. Next: examples/README.md"

#!/usr/bin/env bash
# Step 1 of weight separation: weight-page formation, separation and overlapping.
# For each task in order: add it (-mode=a: Fisher, separation, page matching), then
# train it 2000 steps with the overlapping loss (-mode=t), as the original formation.sh.
#
#   ./formation.sh [flags passed to every WeightSeparation.py call]
#   ./formation.sh -data=synthetic -iter=200 -state_dir=out
#   TASKS="mnist hhar" ./formation.sh            # a subset, in this order
#
# Later flags win, so -iter=N overrides the 2000 steps.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
TASKS=${TASKS:-"cifar10 mnist fmnist gtsrb svhn obs gsc esc10 us8k hhar"}

for task in $TASKS; do
    echo "== add $task"
    "$PYTHON" WeightSeparation.py -mode=a -network_path="$task" "$@"
    echo "== train $task"
    "$PYTHON" WeightSeparation.py -mode=t -vnn_name="$task" -iter=2000 "$@"
done

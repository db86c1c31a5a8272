#!/usr/bin/env bash
# Step 2 of weight separation: weight-page optimization, as the original optimization.sh:
# 100 rounds; in each, every task trains 32 steps with the overlapping loss (fresh Adam
# state), then every task is evaluated on its test split.
#
#   ./optimization.sh [flags]                 # in one process: -mode=o -rounds=100 -iter=32
#   ./optimization.sh -data=synthetic -rounds=3 -state_dir=out
#   WS_LOOP=1 ./optimization.sh -rounds=3     # the original loop: one process per step,
#                                             # 10 x -mode=t then 10 x -mode=e per round
#   TASKS="mnist hhar" WS_LOOP=1 ./optimization.sh
#
# Both give the same weights and accuracies (tests/test_pipeline.py checks it); the
# in-process mode builds each task's training step once and is many times faster
# (BENCHMARKS.md).  Later flags win, so -rounds=N and -iter=N override the defaults.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}

if [ -z "${WS_LOOP:-}" ]; then
    exec "$PYTHON" WeightSeparation.py -mode=o -rounds=100 -iter=32 "$@"
fi

TASKS=${TASKS:-"cifar10 mnist fmnist gtsrb svhn obs gsc esc10 us8k hhar"}
rounds=100
iter=32
passed=()
for arg in "$@"; do
    case "$arg" in
        -rounds=*|--rounds=*) rounds=${arg#*=} ;;
        -iter=*|--iter=*) iter=${arg#*=} ;;
        *) passed+=("$arg") ;;
    esac
done
for ((r = 1; r <= rounds; r++)); do
    echo "$r-th optimization"
    for task in $TASKS; do
        "$PYTHON" WeightSeparation.py -mode=t -vnn_name="$task" -iter="$iter" ${passed[@]+"${passed[@]}"}
    done
    echo "$r-th evaluation"
    for task in $TASKS; do
        "$PYTHON" WeightSeparation.py -mode=e -vnn_name="$task" ${passed[@]+"${passed[@]}"}
    done
done

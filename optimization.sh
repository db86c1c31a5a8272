#!/usr/bin/env bash
# Step 2 of weight separation: weight-page optimization, as the original optimization.sh:
# 100 rounds; in each, 10 passes of (every task trains 32 steps with the overlapping loss and a
# fresh Adam state), then every task is evaluated on its test split.
#
#   ./optimization.sh [flags]                 # in one process: -mode=o -rounds=100 -passes=10 -iter=32
#   ./optimization.sh -data=synthetic -rounds=3 -state_dir=out
#   WS_LOOP=1 ./optimization.sh -rounds=3     # the original loop: one process per step,
#                                             # 10 passes x 10 x -mode=t, then 10 x -mode=e, per round
#   TASKS="mnist hhar" WS_LOOP=1 ./optimization.sh
#
# Both give the same weights and accuracies (tests/test_pipeline.py checks it); the in-process
# mode builds each task's training step once and is many times faster (BENCHMARKS.md). Runs in
# the caller's directory (a relative -state_dir is relative to it). Later flags win, so
# -rounds=N, -passes=N and -iter=N override the defaults.
set -euo pipefail
for arg in "$@"; do
    case "$arg" in
        -h|-help|--help|-helpshort|--helpshort)
            # The comment above, as the usage; every flag is WeightSeparation.py's (-help lists them).
            sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"
            echo "Flags: those of WeightSeparation.py, passed to each of its calls; see: python WeightSeparation.py -help"
            exit 0 ;;
    esac
done
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON=${PYTHON:-$( [ -x "$HERE/.venv/bin/python" ] && echo "$HERE/.venv/bin/python" || echo python3 )}

if [ -z "${WS_LOOP:-}" ]; then
    exec "$PYTHON" "$HERE/WeightSeparation.py" -mode=o -rounds=100 -passes=10 -iter=32 "$@"
fi

TASKS=${TASKS:-"cifar10 mnist fmnist gtsrb svhn obs gsc esc10 us8k hhar"}
rounds=100
passes=10
iter=32
passed=()
for arg in "$@"; do
    case "$arg" in
        -rounds=*|--rounds=*) rounds=${arg#*=} ;;
        -passes=*|--passes=*) passes=${arg#*=} ;;
        -iter=*|--iter=*) iter=${arg#*=} ;;
        *) passed+=("$arg") ;;
    esac
done
for value in "$rounds" "$passes" "$iter"; do
    if ! [[ "$value" =~ ^[1-9][0-9]*$ ]]; then
        echo "error: -rounds, -passes and -iter must be positive integers (got '$value')" >&2
        exit 2
    fi
done
for ((r = 1; r <= rounds; r++)); do
    echo "$r-th optimization"
    for ((p = 1; p <= passes; p++)); do
        for task in $TASKS; do
            "$PYTHON" "$HERE/WeightSeparation.py" -mode=t -vnn_name="$task" -iter="$iter" ${passed[@]+"${passed[@]}"}
        done
    done
    echo "$r-th evaluation"
    for task in $TASKS; do
        "$PYTHON" "$HERE/WeightSeparation.py" -mode=e -vnn_name="$task" ${passed[@]+"${passed[@]}"}
    done
done

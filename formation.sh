#!/usr/bin/env bash
# Step 1 of weight separation: weight-page formation, separation and overlapping, as the
# original formation.sh: for each task in order, add it (-mode=a: Fisher, separation, page
# matching), then train it 2000 steps with the overlapping loss (-mode=t).
#
#   ./formation.sh [flags passed to every WeightSeparation.py call]
#   ./formation.sh -data=synthetic -iter=200 -state_dir=out
#   TASKS="mnist hhar" ./formation.sh            # a subset, in this order (names or folders)
#
# Runs in the caller's directory: a relative -state_dir or -network_path is relative to it (the
# default state directory is the current one, as the original's). Later flags win, so -iter=N
# overrides the 2000 steps.
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
TASKS=${TASKS:-"cifar10 mnist fmnist gtsrb svhn obs gsc esc10 us8k hhar"}

for task in $TASKS; do
    echo "== add $task"
    "$PYTHON" "$HERE/WeightSeparation.py" -mode=a -network_path="$task" "$@"
    echo "== train $task"
    "$PYTHON" "$HERE/WeightSeparation.py" -mode=t -vnn_name="$task" -iter=2000 "$@"
done

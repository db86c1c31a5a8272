#!/usr/bin/env bash
# Download the tasks' datasets into their task folders and verify them.
#
#   ./download_dataset.sh [--dry-run | --verify] [task ...]     (no task: all ten)
#
# The authors' preprocessed .npy arrays come from Google Drive, MNIST from its public
# mirrors.  Each file is fetched into <file>.part (resumable: an interrupted run goes
# on where it stopped), checked with `python -m weightsep.data verify` (a loadable
# array of the task's shape, labels in range, finite values) and only then renamed to
# its final name.  Files already present and valid are skipped.
#   --dry-run  print, per file, the URL and the destination; fetch nothing
#   --verify   only check the local files: ok / missing / bad per file
# WS_ROOT=<dir> puts the task folders under <dir> instead of next to this script.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="${WS_ROOT:-$HERE}"
if [[ -x "$HERE/.venv/bin/python" ]]; then PYTHON="$HERE/.venv/bin/python"; else PYTHON="python3"; fi

# WS_GDRIVE_URL and WS_MNIST_MIRRORS (space-separated) override the sources (a local mirror, tests).
GDRIVE="${WS_GDRIVE_URL:-https://drive.usercontent.google.com/download?export=download&confirm=t&id=}"
read -r -a MNIST_MIRRORS <<<"${WS_MNIST_MIRRORS:-https://ossci-datasets.s3.amazonaws.com/mnist/ https://storage.googleapis.com/cvdf-datasets/mnist/}"

TASKS=(cifar10 mnist fmnist gtsrb svhn obs gsc esc10 us8k hhar)

# task, file (relative to the task folder), source: a Google Drive file id, or "mnist".
SOURCES="
cifar10 cifar10_train_data.npy 1GiwtMZWQLGuTCyuuc42lutD2QI0ACDke
cifar10 cifar10_train_label.npy 1NBYkQf50ty3EzQiF1SKhAztUSiwejfxA
cifar10 cifar10_test_data.npy 1y92NkPwfKGlH6QvaRd1AH5HsuXxS_VTq
cifar10 cifar10_test_label.npy 1nIEqxa4HPsXfOxka0X1YTHPtIQTd3gI0
mnist MNIST_data/train-images-idx3-ubyte.gz mnist
mnist MNIST_data/train-labels-idx1-ubyte.gz mnist
mnist MNIST_data/t10k-images-idx3-ubyte.gz mnist
mnist MNIST_data/t10k-labels-idx1-ubyte.gz mnist
fmnist fmnist_train_data.npy 1tITHwmRwkTAGMCND5I4LIfxgy3Gn33xs
fmnist fmnist_train_label.npy 1mtTjU1ib2whkleH2sgrUx7sMlgEz3suL
fmnist fmnist_test_data.npy 1xIcFXcu9KsTOFpdRRrHfdPG3SniCdhhb
fmnist fmnist_test_label.npy 1K8SLjM7PeC0XIjNetJ8q4ZaDs3Se5T99
gtsrb GTSRB_train_data.npy 1BNIEvoVnRayXXoiTqWirptLqMr2bp7lB
gtsrb GTSRB_train_label.npy 1hCd1NKKDgqsAn-6NE62mGX6jJSegItDj
gtsrb GTSRB_test_data.npy 1-v81_TTw9yDrCK6KTpsTFKmHNnOBTjUW
gtsrb GTSRB_test_label.npy 15uKYxNbD28fp89y2YXRlMFeElDTo_3_K
svhn svhn_train_data.npy 1BxFLHEy8_hCmAK9QXcvcHLcpDVR2P0t5
svhn svhn_train_label.npy 1oFm06MFmjYFAn1NkjxDTH_aW5D2_TCE5
svhn svhn_validation_data.npy 1c1-47lIsycqgGWRuBKs3vTC6DLxMyrom
svhn svhn_validation_label.npy 1SB06lrXDB0rF1hK5CpdSn9E1XgIYCdjV
svhn svhn_test_data.npy 1hHzfZ8hVPE8EAyNG5cdD4BMyO3cyVp1s
svhn svhn_test_label.npy 1NYuPreAb-1wxzYwi5WcnWq4S8rEXe8Sk
obs obstacle_train_data.npy 14yqTBhjmCDqhO_Y7gjRmECuBMo9d7GFY
obs obstacle_train_label.npy 1QGmc20vyEYF-5GE7yIyt3mmOJ18WhQd-
obs obstacle_validation_data.npy 1y8bHJ9CHBjjZPn8QeK8wBxNCxePMvHDM
obs obstacle_validation_label.npy 1tGc2_h5ppRX3BdFmepFIB1CBRvQ7qsLH
obs obstacle_test_data.npy 1AiGWnABJbJR0DlRUtkUx3BSXxZjyWgRl
obs obstacle_test_label.npy 1h5MG7aaLaw7b83UcUlUwPjRqhxR5dOL7
gsc gsc_v2_train_data.npy 1Mp4RDAzsyNrk4JlUcZBoCBoBiLtK6h-h
gsc gsc_v2_train_label.npy 1vn9H8uFtmQWhPm4p0KEcLVrMSKp2ML0V
gsc gsc_v2_validation_data.npy 1MTrdhQaZ2ZvZvLIOjirE9zgst9wlYdsZ
gsc gsc_v2_validation_label.npy 1lHDzS8dX_pqr6ne1tBY9jFfIrXCiZ3jV
gsc gsc_v2_test_data.npy 10xHTi2jJyWfhzJwZhwrpiJ1WNXWuSx5C
gsc gsc_v2_test_label.npy 1NDGE1u5VB9Bk1RMwepb1SJo9o56s4Tx0
esc10 esc10_train_data.npy 1KOAykNhNEkP8q8Ib-VF52w_gHgudn2IS
esc10 esc10_train_label.npy 1xx3hljerqLm50I9mr7B1EBAAPVpHcN9D
esc10 esc10_test_data.npy 1MLEzjpPo2aDDl3zz1mJIttiu9Leztxls
esc10 esc10_test_label.npy 1HYp1T4_iPgmxY1Cc5Mj3pf-PFivNVTwb
us8k US8K_train_data.npy 16n1dVCtFOYckfp800o4i080F5h787CzY
us8k US8K_train_label.npy 1p5FCC3uhdskNsTqrbO0FzWQMjJICpMor
us8k US8K_test_data.npy 1hWtUljFOq2bvTb-BwS-qFBKP_vcKAPJv
us8k US8K_test_label.npy 1m_GY_xt0zy3tJM3GgVTmHV1KgUUIQ3U9
hhar hhar_train_data.npy 1xeu2y6mHIK0YxVVy-epSR9OIHYwHmiGO
hhar hhar_train_label.npy 1Q_6UpDrE_BHZLXlziykQtcxqStw1WeJE
hhar hhar_test_data.npy 1u5VK6Nf-B9tZTcMtJ3eMpjf5VpLwQY7e
hhar hhar_test_label.npy 17TL4Kmf3lozB7pniBDaE4Melz1VkTxo2
"

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}

MODE="download"
SELECTED=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) MODE="dry-run" ;;
    --verify) MODE="verify" ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "error: unknown option $arg (use --dry-run, --verify or --help)" >&2; exit 2 ;;
    *)
      if [[ " ${TASKS[*]} " != *" $arg "* ]]; then
        echo "error: unknown task '$arg'; known tasks: ${TASKS[*]}" >&2
        exit 2
      fi
      SELECTED+=("$arg") ;;
  esac
done
if [[ ${#SELECTED[@]} -eq 0 ]]; then SELECTED=("${TASKS[@]}"); fi

# The URLs of one file, best first, one per line.
urls_of() {
  local file="$1" source="$2" mirror
  if [[ "$source" == "mnist" ]]; then
    for mirror in "${MNIST_MIRRORS[@]}"; do echo "${mirror}$(basename "$file")"; done
  else
    echo "${GDRIVE}${source}"
  fi
}

# A web page (an error or a confirm form) where an array or a gzip file should be.
is_html() {
  local head
  [[ -s "$1" ]] || return 1
  head="$(head -c 512 "$1" | tr -d '\r\n\t \000' | tr '[:upper:]' '[:lower:]')"
  [[ "$head" == "<"* || "$head" == *"<html"* ]]
}

# Fetch one URL into a .part file, resuming what an earlier run left there.
fetch() {
  local url="$1" part="$2" progress="-sS" rc=0
  [[ -t 2 ]] && progress="--progress-bar"
  # A partial web page is no start of the real file: begin again.
  if is_html "$part"; then rm -f "$part"; fi
  curl -fL --retry 3 --retry-delay 2 "$progress" -C - -o "$part" "$url" || rc=$?
  if [[ $rc -eq 33 ]]; then  # the server cannot resume: fetch the whole file again
    rm -f "$part"; rc=0
    curl -fL --retry 3 --retry-delay 2 "$progress" -o "$part" "$url" || rc=$?
  fi
  return $rc
}

# Google Drive answers large files with a "can't scan for viruses" form; submit it once.
fetch_gdrive() {
  local url="$1" part="$2" uuid confirm
  fetch "$url" "$part" || return $?
  if is_html "$part"; then
    uuid="$(grep -o 'name="uuid" value="[^"]*"' "$part" | head -n1 | sed 's/.*value="//; s/"$//' || true)"
    confirm="$(grep -o 'name="confirm" value="[^"]*"' "$part" | head -n1 | sed 's/.*value="//; s/"$//' || true)"
    if [[ -n "$uuid" ]]; then
      rm -f "$part"
      fetch "${url}&confirm=${confirm:-t}&uuid=${uuid}" "$part" || return $?
    fi
  fi
}

# Run the verifier; prints its lines, fails only when the verifier itself could not run.
verify() {
  local rc=0
  PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m weightsep.data verify --root "$ROOT" "$@" || rc=$?
  if [[ $rc -gt 1 ]]; then
    echo "error: the verifier failed (exit $rc): $PYTHON -m weightsep.data verify --root $ROOT $*" >&2
    return $rc
  fi
}

ok=0; skipped=0; downloaded=0; failed=0; missing=0; bad=0
FAILURES=()
num_tasks=${#SELECTED[@]}
i=0
for task in "${SELECTED[@]}"; do
  i=$((i + 1))
  tag="[$i/$num_tasks] $task"
  mapfile -t entries < <(awk -v t="$task" '$1 == t {print $2 " " $3}' <<<"$SOURCES")
  files=()
  for entry in "${entries[@]}"; do files+=("${entry%% *}"); done

  # One verifier run per task tells which files are present and valid.
  report="$(verify "$task" "${files[@]}")"
  if [[ "$MODE" == "verify" ]]; then
    echo "$tag: verifying ${#files[@]} files in $ROOT/$task"
    while IFS= read -r line; do
      echo "$tag: $line"
      read -r status name _ <<<"$line"
      case "$status" in
        ok) ok=$((ok + 1)) ;;
        missing) missing=$((missing + 1)); FAILURES+=("$name: missing") ;;
        *) bad=$((bad + 1)); FAILURES+=("$name: bad") ;;
      esac
    done <<<"$report"
    continue
  fi

  for entry in "${entries[@]}"; do
    file="${entry%% *}"; source="${entry#* }"
    dest="$ROOT/$task/$file"
    status="$(awk -v f="$task/$file" '$2 == f {print $1}' <<<"$report" | tail -n1)"
    if [[ "$status" == "ok" ]]; then
      echo "$tag: $file present and valid, skipping"
      skipped=$((skipped + 1))
      continue
    fi
    mapfile -t urls < <(urls_of "$file" "$source")
    if [[ "$MODE" == "dry-run" ]]; then
      note=""; [[ "$status" == "bad" ]] && note=" (the present file is bad and would be replaced)"
      [[ ${#urls[@]} -gt 1 ]] && note="$note (fallback mirror: ${urls[1]})"
      echo "$tag: would download ${urls[0]} -> $dest$note"
      continue
    fi

    if [[ "$status" == "bad" ]]; then
      echo "$tag: $file is bad, removing it: $(awk -v f="$task/$file" '$2 == f' <<<"$report" | cut -c 10-)"
      rm -f "$dest"
    fi
    echo "$tag: downloading $file"
    mkdir -p "$(dirname "$dest")"
    part="$dest.part"
    fetched=1
    for url in "${urls[@]}"; do
      if [[ "$source" == "mnist" ]]; then fetch "$url" "$part" && fetched=0 && break
      else fetch_gdrive "$url" "$part" && fetched=0 && break
      fi
      echo "$tag: could not fetch $url"
    done
    if [[ $fetched -ne 0 ]]; then
      FAILURES+=("$task/$file: download failed (partial data kept in $part; run again to resume)")
      failed=$((failed + 1))
      continue
    fi
    check="$(verify "$task" "$file=$part")"
    if [[ "$check" == ok* ]]; then
      mv -f "$part" "$dest"
      echo "$tag: $file ok"
      downloaded=$((downloaded + 1))
    else
      echo "$tag: $check"
      if is_html "$part"; then
        echo "$tag: the server sent a web page instead of $file (quota exceeded or access denied?);" \
             "try again later, or open ${urls[0]} in a browser and save it as $dest"
      fi
      rm -f "$part"
      FAILURES+=("$task/$file: downloaded file is bad, deleted it")
      failed=$((failed + 1))
    fi
  done
done

echo
case "$MODE" in
  verify) echo "verify: $ok ok, $missing missing, $bad bad" ;;
  dry-run) echo "dry run: $skipped files present and valid; nothing fetched" ;;
  *) echo "done: $downloaded downloaded, $skipped present and valid, $failed failed" ;;
esac
if [[ ${#FAILURES[@]} -gt 0 ]]; then
  for line in "${FAILURES[@]}"; do echo "  $line"; done
  [[ "$MODE" == "verify" ]] && echo "fetch what is missing or bad with: ./download_dataset.sh ${SELECTED[*]}"
  exit 1
fi

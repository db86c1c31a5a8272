#!/usr/bin/env bash
# Download the tasks' datasets into their task folders and verify them.
#
#   ./download_dataset.sh [--dry-run | --verify] [--checksums FILE] [task ...]   (no task: all ten)
#
# The authors' preprocessed .npy arrays come from Google Drive, MNIST from its public
# mirrors, over https only (redirects included).  Each file is fetched into <file>.part
# (resumable: an interrupted run goes on where it stopped), checked by tools/verify_data.py
# (a loadable array of the task's shape with at least one sample, labels in range, finite
# values, and its SHA-256, see below) and only then renamed to its final name.  Files
# already present and valid are skipped.
#   --dry-run          print, per file, the URL and the destination; fetch nothing
#   --verify           only check the local files: ok / missing / bad per file
#   --checksums FILE   expected SHA-256 sums in sha256sum format, one "<hex>  <task>/<file>"
#                      line per file (paths relative to the folder holding the task folders);
#                      they take precedence over the manifest.  Also -checksums FILE.
# SHA-256 manifest: the first verified download of a file (or the first run that finds it
# present and valid) records its SHA-256 in <task folder>/SHA256SUMS, in the same format
# (check it with: cd <root> && sha256sum -c <task>/SHA256SUMS).  Every later run checks
# every file, present or downloaded, against --checksums, else against the manifest:
# - a download that does not match is deleted, with the expected and the actual sum;
# - a present file that does not match is reported as bad and kept untouched (it may be
#   your own copy, or the source changed): delete it to download it again, or delete its
#   line from the manifest to accept it.
# A present file that does not load (an HTML page, a truncated download) is deleted and
# downloaded again, with the reason.
# WS_ROOT=<dir> puts the task folders under <dir> instead of next to this script (a relative
# path is relative to the current directory); WS_GDRIVE_URL and WS_MNIST_MIRRORS
# (space-separated) override the sources.
set -euo pipefail

# A path given by the caller, made absolute against the caller's directory.
abspath() {
  if [[ "$1" == /* ]]; then printf '%s\n' "$1"; else printf '%s\n' "$PWD/$1"; fi
}

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(abspath "${WS_ROOT:-$HERE}")"
VERIFIER="$HERE/tools/verify_data.py"
if [[ -x "$HERE/.venv/bin/python" ]]; then PYTHON="$HERE/.venv/bin/python"; else PYTHON="python3"; fi

GDRIVE="${WS_GDRIVE_URL:-https://drive.usercontent.google.com/download?export=download&confirm=t&id=}"
read -r -a MNIST_MIRRORS <<<"${WS_MNIST_MIRRORS:-https://ossci-datasets.s3.amazonaws.com/mnist/ https://storage.googleapis.com/cvdf-datasets/mnist/}"

# https only, redirects included; WS_TEST_ALLOW_HTTP=1 also allows http, for the tests'
# local server and for nothing else.  -g: no URL globbing ([..] and {..} are literal).
PROTOCOLS="=https"
if [[ "${WS_TEST_ALLOW_HTTP:-}" == "1" ]]; then PROTOCOLS="=http,https"; fi
CURL=(curl -g -fL --proto "$PROTOCOLS" --proto-redir "$PROTOCOLS" --retry 3 --retry-delay 2)

# What Google Drive's confirm form may hand us to put into the next URL.
TOKEN_RE='^[A-Za-z0-9_-]{1,128}$'

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
CHECKSUMS=""
SELECTED=()
while [[ $# -gt 0 ]]; do
  arg="$1"
  case "$arg" in
    --dry-run) MODE="dry-run" ;;
    --verify) MODE="verify" ;;
    -checksums|--checksums)
      if [[ $# -lt 2 || -z "$2" ]]; then
        echo "error: $arg needs a file: a list of SHA-256 sums in sha256sum format" >&2
        exit 2
      fi
      CHECKSUMS="$2"; shift ;;
    -checksums=*|--checksums=*)
      CHECKSUMS="${arg#*=}"
      if [[ -z "$CHECKSUMS" ]]; then
        echo "error: ${arg%%=*} needs a file: a list of SHA-256 sums in sha256sum format" >&2
        exit 2
      fi ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "error: unknown option $arg (use --dry-run, --verify, --checksums FILE or --help)" >&2; exit 2 ;;
    *)
      if [[ " ${TASKS[*]} " != *" $arg "* ]]; then
        echo "error: unknown task '$arg'; known tasks: ${TASKS[*]}" >&2
        exit 2
      fi
      SELECTED+=("$arg") ;;
  esac
  shift
done
if [[ ${#SELECTED[@]} -eq 0 ]]; then SELECTED=("${TASKS[@]}"); fi
if [[ -n "$CHECKSUMS" ]]; then
  CHECKSUMS="$(abspath "$CHECKSUMS")"
  if [[ ! -f "$CHECKSUMS" || ! -r "$CHECKSUMS" ]]; then
    echo "error: the checksum list $CHECKSUMS is not a readable file" >&2
    exit 2
  fi
fi

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
  "${CURL[@]}" "$progress" -C - -o "$part" "$url" || rc=$?
  if [[ $rc -eq 33 ]]; then  # the server cannot resume: fetch the whole file again
    rm -f "$part"; rc=0
    "${CURL[@]}" "$progress" -o "$part" "$url" || rc=$?
  fi
  return $rc
}

# The value of the named field of an HTML form (empty when there is none).
form_value() {
  grep -o "name=\"$1\" value=\"[^\"]*\"" "$2" | head -n1 | sed 's/.*value="//; s/"$//' || true
}

# Google Drive answers large files with a "can't scan for viruses" form; submit it once,
# with its tokens only when they look like tokens (they go into a URL).
fetch_gdrive() {
  local url="$1" part="$2" uuid confirm
  fetch "$url" "$part" || return $?
  if is_html "$part"; then
    uuid="$(form_value uuid "$part")"
    confirm="$(form_value confirm "$part")"
    if [[ -n "$uuid" ]]; then
      rm -f "$part"
      if [[ ! "$uuid" =~ $TOKEN_RE || ( -n "$confirm" && ! "$confirm" =~ $TOKEN_RE ) ]]; then
        echo "$tag: the confirm page for $(basename "$part" .part) holds a malformed token (expected" \
             "letters, digits, _ or -); not following it"
        return 1
      fi
      fetch "${url}&confirm=${confirm:-t}&uuid=${uuid}" "$part" || return $?
    fi
  fi
}

ERRORS="$(mktemp)"
trap 'rm -f "$ERRORS"' EXIT

# Run the verifier (its arguments: --task=..., --file=... per file, options); its lines,
# one per file, go to REPORT.  Stops the script when it could not check every file (an
# unreadable checksum list or manifest, a broken installation).
run_verifier() {
  local expected=0 arg rc=0 args=(--root="$ROOT")
  if [[ -n "$CHECKSUMS" ]]; then args+=(--checksums="$CHECKSUMS"); fi
  for arg in "$@"; do [[ "$arg" == --file=* ]] && expected=$((expected + 1)); done
  REPORT="$("$PYTHON" "$VERIFIER" "${args[@]}" "$@" 2>"$ERRORS")" || rc=$?
  if [[ "$(grep -cE '^(ok|missing|bad) ' <<<"$REPORT")" -ne $expected ]]; then
    echo "error: $VERIFIER could not check the files (exit $rc):" >&2
    cat "$ERRORS" >&2
    exit 2
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
  files=(); file_args=()
  for entry in "${entries[@]}"; do files+=("${entry%% *}"); file_args+=(--file="${entry%% *}"); done
  manifest="$ROOT/$task/SHA256SUMS"

  # One verifier run per task tells which files are present and valid; a real run records
  # the SHA-256 of the valid ones the manifest lacks.
  if [[ "$MODE" == "download" ]]; then
    run_verifier --task="$task" "${file_args[@]}" --record
  else
    run_verifier --task="$task" "${file_args[@]}"
  fi
  task_report="$REPORT"
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
    done <<<"$task_report"
    continue
  fi

  for entry in "${entries[@]}"; do
    file="${entry%% *}"; source="${entry#* }"
    dest="$ROOT/$task/$file"
    read -r status _ detail <<<"$(awk -v f="$task/$file" '$2 == f' <<<"$task_report" | tail -n1)"
    if [[ "$status" == "ok" ]]; then
      echo "$tag: $file present and valid, skipping ($detail)"
      skipped=$((skipped + 1))
      continue
    fi
    if [[ "$status" == "bad" && "$detail" == "SHA-256 mismatch"* ]]; then
      # Not ours to delete: the file loads as the task's data, only its sum differs.
      if [[ -n "$CHECKSUMS" ]] && grep -qF "$CHECKSUMS expects" <<<"$detail"; then
        accept="correct its line in $CHECKSUMS"
      else
        accept="delete its line from $manifest"
      fi
      echo "$tag: $detail"
      echo "$tag: keeping $file untouched: it loads as $task data, so it may be your own copy or the" \
           "source may have changed; delete it to download it again, or $accept to accept it"
      if [[ "$MODE" == "download" ]]; then
        FAILURES+=("$task/$file: SHA-256 mismatch, kept untouched")
        failed=$((failed + 1))
      fi
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
      echo "$tag: $file is bad, removing it to download it again: $detail"
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
      if [[ -s "$part" ]]; then
        FAILURES+=("$task/$file: download failed (partial data kept in $part; run again to resume)")
      else
        rm -f "$part"
        FAILURES+=("$task/$file: download failed (nothing received)")
      fi
      failed=$((failed + 1))
      continue
    fi
    run_verifier --task="$task" --file="$file=$part" --record
    read -r status _ detail <<<"$REPORT"
    if [[ "$status" == "ok" ]]; then
      mv -f "$part" "$dest"
      echo "$tag: $file ok (${detail% (checked *})"
      downloaded=$((downloaded + 1))
    else
      echo "$tag: $REPORT"
      if [[ "$detail" == "SHA-256 mismatch"* ]]; then
        echo "$tag: deleting the download of $file: its SHA-256 is not the expected one"
        FAILURES+=("$task/$file: downloaded file does not match the expected SHA-256, deleted it")
      else
        if is_html "$part"; then
          echo "$tag: the server sent a web page instead of $file (quota exceeded or access denied?);" \
               "try again later, or open ${urls[0]} in a browser and save it as $dest"
        fi
        FAILURES+=("$task/$file: downloaded file is bad, deleted it")
      fi
      rm -f "$part"
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

#!/usr/bin/env bash
# One command for a GPU machine (H100/H200): the GPU-marked tests and every GPU benchmark.
#
#     bench/gpu_check.sh OUTDIR [STEP...]      STEP: data train pytest infer (default: all four)
#
# Steps run in that order whatever order they are named in: the two issue-3 targets (data, train)
# first. Their time limits (40 + 240 + 150 + 120 s) are sized for a lease of 15 minutes of device
# time in all, machine start and transfers included (bench/README.md has the arithmetic): `infer`
# alone in the first call (it needs neither DALI nor albumentations, so it runs while
# bench/gpu_wheels.sh is still shipping them), then `data train pytest` in the last.
#
# Writes at most 8 files into OUTDIR: summary.md (every table + environment + step exit codes),
# results.jsonl (one JSON line per result), pytest.txt, and up to 5 PNGs. summary.md is rewritten after
# every step, so a call cut off by its time limit still brings back what finished. Each step has its
# own `timeout`, capped by what is left of the overall budget ($GPU_CHECK_BUDGET_S, default 560 s), so
# a hang costs one step, not the check.
# Python: $PYTHON, else .venv/bin/python when present, else python3.
set -u
OUT=${1:?usage: bench/gpu_check.sh OUTDIR [data] [train] [pytest] [infer]}
shift
WANT=" ${*:-data train pytest infer} "
for s in $WANT; do
  case $s in pytest|data|train|infer) ;; *) echo "unknown step '$s': use data, train, pytest, infer" >&2; exit 2 ;; esac
done
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
START=$SECONDS
TOTAL=${GPU_CHECK_BUDGET_S:-560}   # leaves ~40 s of a 10-minute call for start-up and copying
LOG=$TMP/log.txt
# albumentations asks PyPI for a newer version at import; that machine has no network: don't wait on it.
export NO_ALBUMENTATIONS_UPDATE=1
STEPS=$TMP/steps.md

report() {  # summary.md, results.jsonl and the plots from what has finished so far
  {
    echo "# GPU check — $(date -u +%FT%TZ) — steps:$WANT"
    echo
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | sed 's/^/    /'
    echo
    echo "## Steps (total $((SECONDS - START)) s)"
    echo
    cat "$STEPS"
    for f in "$TMP"/*-data.md "$TMP"/*-train.md "$TMP"/*-infer.md; do
      [ -f "$f" ] && { echo; sed 's/^# /## /' "$f"; }
    done
    echo
    echo "## Log (last 80 lines)"
    echo
    echo '```'
    # The benches echo each JSON line on stdout (results.jsonl has them all): kept out of the log tail.
    grep -v '^{' "$LOG" | tail -n 80
    echo '```'
  } >"$OUT/summary.md"
  cat "$TMP"/*.jsonl >"$OUT/results.jsonl" 2>/dev/null || : >"$OUT/results.jsonl"
  n=0
  for f in "$TMP"/*-data.png "$TMP"/*-train.png "$TMP"/*-infer-throughput.png "$TMP"/*-infer-latency.png; do
    [ -f "$f" ] && [ $n -lt 5 ] && { cp "$f" "$OUT/${f##*/}"; n=$((n + 1)); }
  done
}

step() {  # step NAME MAX_SECONDS CMD... : run with timeout min(MAX, time left), record the exit code
  local name=$1 max=$2; shift 2
  local left=$((TOTAL - (SECONDS - START)))
  local t=$(( max < left ? max : left ))
  if [ "$t" -lt 10 ]; then echo "| $name | skipped: out of time | 0 |" >>"$STEPS"; return; fi
  local t0=$SECONDS
  echo "=== $name (timeout ${t}s): $*" >>"$LOG"
  timeout --kill-after=10 "$t" "$@" >>"$LOG" 2>&1
  local rc=$?
  local note=$rc; [ $rc -eq 124 ] && note="124 (timed out after ${t}s)"
  echo "| $name | $note | $((SECONDS - t0)) |" >>"$STEPS"
  report
}
want() { [[ $WANT == *" $1 "* ]]; }

# What the image lacks shows up here, once, instead of as a crash inside a step.
$PY - >>"$LOG" 2>&1 <<'PY'
import importlib.util

def has(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a missing parent package (nvidia)
        return False

need = ["torch", "timm", "numpy", "onnx", "onnxruntime", "matplotlib", "tqdm", "pytest", "hypothesis"]
missing = [m for m in need if not has(m)]
absent = [m for m in ("nvidia.dali", "albumentations", "cv2") if not has(m)]  # cv2: albumentations needs it
print("preflight: missing required:", ", ".join(missing) or "none", "| optional absent:", ", ".join(absent) or "none")
# torch.compile on CUDA (Triton) builds its launchers with a C compiler against Python.h at first use;
# without them compile=auto turns off (landslide.device.compile_toolchain): say so before the steps.
if not missing:
    from landslide.device import compile_toolchain
    print("preflight: torch.compile toolchain for CUDA:", compile_toolchain("cuda") or "ok")
PY
echo "| step | exit code | seconds |" >"$STEPS"
echo "|---|---|---|" >>"$STEPS"
# auto picks DALI on a GPU when nvidia-dali imports; use it only where the package has its backend too.
DB=torch; $PY -c "import nvidia.dali, landslide.augment.dali" >/dev/null 2>&1 && DB=auto
# The conventional baseline is the seed's albumentations chain; where the image lacks albumentations,
# its NumPy twin stands in, and the tables name which one ran.
PS=numpy; $PY -c "import albumentations" >/dev/null 2>&1 && PS=albumentations
echo "data backend: $DB; per-sample baseline: $PS" >>"$LOG"
want data && step bench.data 40 $PY -m bench.data --device cuda --windows 5 --iters 20 --n 8192 --per-sample "$PS" --out-dir "$TMP"
# Issue 3's target model: tf_efficientnetv2_l at 224 px, the device pipeline (compile, bf16,
# channels-last) vs the conventional one (DataLoader, the seed's per-sample albumentations chain,
# eager fp32) in one run: the >= 1.3x images/s target, and data time under 2 % of the step.
want train && step bench.train-v2l 240 $PY -m bench.train --device cuda --model tf_efficientnetv2_l --img-size 224 --batch-size 16 \
  --windows 3 --steps 10 --data-backend "$DB" --baseline-loader --per-sample "$PS" --baseline-precision fp32 --baseline-compile off \
  --baseline-channels-last off --out-dir "$TMP"
# A module that fails to import (a package the image lacks) must not stop the GPU tests of the others.
# Four workers where pytest-xdist is installed (the GPU image has it): the end-to-end cases are
# training subprocesses that mostly wait on compilation, and one GPU has room for all of them.
XD=""; $PY -c "import xdist" >/dev/null 2>&1 && XD="-n 4"
# -v: one line per test as it ends, so a step cut off by its time limit still says what passed;
# --durations: what each costs, for sizing the next check.
want pytest && step pytest-gpu 150 bash -c "$PY -m pytest -m gpu -v -rs --durations=15 -p no:cacheprovider $XD --continue-on-collection-errors >'$OUT/pytest.txt' 2>&1"
# The real ensemble's larger member (tf_efficientnetv2_l@224 x 5 folds x 4 views; the full ensemble adds
# efficientnet_b5@384), random weights: speed does not depend on them. Runners come in the order
# torch fused, looped, compiled, then the exported ones, so a cut costs the slowest to build.
want infer && step bench.infer 120 $PY -m bench.infer --device cuda --precision bf16 \
  --archs tf_efficientnetv2_l@224 --folds 5 --batch-sizes 1,64,256 \
  --budget-s 3 --testset-budget-s 20 --out-dir "$TMP"

report
cat "$OUT/summary.md"

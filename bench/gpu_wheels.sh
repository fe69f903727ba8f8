#!/usr/bin/env bash
# Ship the packages the GPU image lacks (DALI for CUDA 13, albumentations for the seed's baseline) to a
# lent GPU machine whose only way in is the working tree, at most 64 MiB a call.
#
#   here (registry access):   bash bench/gpu_wheels.sh fetch            -> .whl/part-1 .. .whl/part-N
#   GPU machine, every call:  bash bench/gpu_wheels.sh stash            (carry=[".whl/part-K"], K = 1..N)
#   GPU machine, last call:   ... install && PYTHONPATH=/tmp/site bash bench/gpu_check.sh $OUT data train pytest
#
# `fetch` prints the whole sequence; the first call also runs gpu_check's `infer` step, which needs
# neither package. The machine must stay warm between the calls (it goes back after 30 s idle, and the
# stashed parts with it), so make them back to back; bench/README.md has the 15-minute arithmetic.
# `stash` moves the carried part out of the tree (a later call's copy can't clobber it);
# `install` rejoins split files, checks each wheel's sha256 against the manifest `fetch` wrote, and
# installs with --no-deps into /tmp/site. DALI's image-codec dependencies (nvimgcodec, nvcomp: ~140 MB)
# are left out on purpose: the pipeline feeds tensors from memory and decodes nothing (the DALI tests
# pass without them).
set -euo pipefail
cd "$(dirname "$0")/.."
PART_MIB=${PART_MIB:-56}            # per call, leaving room for the tree itself under the 64 MiB limit
STASH=${STASH:-/tmp/landslide-wheels}
SITE=${SITE:-/tmp/site}
# The versions this repo's venv runs (requirements.txt pins the CUDA 12 DALI; the image is CUDA 13).
WHEELS=(nvidia-dali-cuda130==2.4.0 astunparse==1.6.3 gast==0.7.0 optree==0.20.0 nvtx==0.2.17 makefun==1.16.0
        libcst==1.9.0 six==1.17.0 albumentations==2.0.8 albucore==0.0.24 pydantic==2.14.4 pydantic_core==2.50.5
        annotated-types==0.8.0 typing-inspection==0.4.5 stringzilla==5.3.2 simsimd==6.5.16
        typing-extensions==4.16.0)  # pydantic 2.14 needs >= 4.16; the image's may be older

fetch() {
  local all=.whl/all
  rm -rf .whl/part-* "$all"
  mkdir -p "$all"
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || grep -q '^\.whl/$' .gitignore \
    || { echo "error: .whl/ is not ignored by git; add it to .gitignore" >&2; exit 1; }
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$all" "${WHEELS[@]}"
  (cd "$all" && sha256sum ./*.whl >MANIFEST.sha256)
  # Big wheels first, cut into PART_MIB pieces (name.whl.000, ...), one piece a part; then each small
  # wheel goes into the first part with room (first fit), so the parts are as few as the bytes allow.
  local limit=$((PART_MIB * 1024 * 1024)) k=0 f size placed i
  local -a used=()
  for f in "$all"/*.whl; do
    [ "$(stat -c %s "$f")" -gt "$limit" ] || continue
    split -b "$limit" -d -a 3 "$f" "$f."
    rm "$f"
    for piece in "$f".[0-9][0-9][0-9]; do
      k=$((k + 1)); mkdir -p ".whl/part-$k"; mv "$piece" ".whl/part-$k/"; used[k]=$(stat -c %s ".whl/part-$k/${piece##*/}")
    done
  done
  for f in "$all"/*.whl "$all/MANIFEST.sha256"; do
    size=$(stat -c %s "$f"); placed=0
    for ((i = 1; i <= k; i++)); do
      if [ $((used[i] + size)) -le "$limit" ]; then mv "$f" ".whl/part-$i/"; used[i]=$((used[i] + size)); placed=1; break; fi
    done
    if [ "$placed" -eq 0 ]; then k=$((k + 1)); mkdir -p ".whl/part-$k"; mv "$f" ".whl/part-$k/"; used[k]=$size; fi
  done
  rm -rf "$all"
  du -sh .whl/part-* | sed 's/^/  /'
  echo "carry each part in its own call, back to back; the first also benchmarks inference, the last installs and checks:"
  for i in $(seq 1 "$k"); do
    local cmd="bash bench/gpu_wheels.sh stash"
    [ "$i" -eq 1 ] && cmd="$cmd && bash bench/gpu_check.sh \$OUT infer"
    [ "$i" -eq "$k" ] && cmd="$cmd && bash bench/gpu_wheels.sh install && PYTHONPATH=$SITE bash bench/gpu_check.sh \$OUT data train pytest"
    echo "  carry=[\".whl/part-$i\"]  $cmd"
  done
}

stash() {
  mkdir -p "$STASH"
  local n=0
  for d in .whl/part-*; do
    compgen -G "$d/*" >/dev/null || continue   # a part stashed by an earlier call leaves an empty folder
    mv "$d"/* "$STASH"/
    n=$((n + 1))
  done
  [ "$n" -gt 0 ] || { echo "error: no .whl/part-* in the tree; name it in the call's carry" >&2; exit 1; }
  echo "stashed $n part(s) in $STASH: $(ls "$STASH" | wc -l) file(s)"
}

install() {
  [ -f "$STASH/MANIFEST.sha256" ] || { echo "error: $STASH/MANIFEST.sha256 missing: stash every part first" >&2; exit 1; }
  cd "$STASH"
  for first in *.whl.000; do
    [ -e "$first" ] || continue
    local whl=${first%.000}
    cat "$whl".[0-9][0-9][0-9] >"$whl.tmp" && mv "$whl.tmp" "$whl" && rm -f "$whl".[0-9][0-9][0-9]
  done
  # A missing part shows up here as a wrong or missing hash, naming the wheel.
  sha256sum --quiet -c MANIFEST.sha256 || { echo "error: wheels incomplete or corrupt; stash every part again" >&2; exit 1; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" ./*.whl
  # DALI is what the check needs; without albumentations gpu_check's baseline falls back to its NumPy
  # twin (and says so), so that failure is a warning, not the end of the call.
  PYTHONPATH=$SITE python3 -c "import nvidia.dali; print('installed in $SITE: DALI', nvidia.dali.__version__)"
  PYTHONPATH=$SITE python3 -c "import albumentations; print('installed in $SITE: albumentations', albumentations.__version__)" \
    || echo "warning: albumentations does not import (above); the baseline will be bench/persample.py's NumPy twin" >&2
}

case ${1:-} in
  fetch) fetch ;;
  stash) stash ;;
  install) install ;;
  *) echo "usage: bench/gpu_wheels.sh fetch|stash|install" >&2; exit 2 ;;
esac

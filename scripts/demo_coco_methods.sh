#!/usr/bin/env bash
# Every single-positive method (and the full-label bound) on the COCO-like built-in dataset
# (`--dataset demo-coco`, generated on first use) with its default 20 epochs, in one sitting; prints
# the README's table (test mAP at the best validation epoch, wall time). Methods without image-space
# augmentation share one feature cache (Scob reads its clean view from it; its hard view still comes
# from the images). JOBS=2 runs two trainings at once with one thread each (the
# fastest use of a 2-core machine: measured in the README). FLAGS is added to every run, e.g.
# FLAGS="--image-size 256" for the README's 256 px sitting (an 8 x 8 last feature level).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/demo-coco-methods}
PY=.venv/bin/python
JOBS=${JOBS:-2}
FLAGS=${FLAGS:-}
mkdir -p "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / JOBS > 0 ? $(nproc) / JOBS : 1 ))}
CACHE=(--cache-features --cache-dir "$OUT/feature_cache")
run() {  # name, then train.py flags
  local name=$1; shift
  local start; start=$(date +%s)
  if ! $PY train.py --dataset demo-coco --quiet --overwrite --out "$OUT/$name" "$@" $FLAGS >"$OUT/$name.log" 2>&1; then
    echo "$name failed, see $OUT/$name.log" >&2; return 1
  fi
  echo "$name $($PY -c "import json;d=json.load(open('$OUT/$name/final.json'));print(round(100*d['test']['mAP'],2))") $(( $(date +%s) - start ))s $*"
}
# The dataset and the shared feature cache are built once, before the parallel runs.
$PY -c "from scob_fast.data import build_dataset; build_dataset('demo-coco', None, 'train')"
run bce-full --method bce --labels full "${CACHE[@]}" | tee "$OUT/table.txt"
queue=(
  "an --method an ${CACHE[*]}"
  "an-ls --method an-ls ${CACHE[*]}"
  "wan --method wan ${CACHE[*]}"
  "epr --method epr ${CACHE[*]}"
  "role --method role ${CACHE[*]}"
  "role-lre0.1 --method role --lr-estimator 0.1 ${CACHE[*]}"
  "role-w3-lre0.1 --method role --lr-estimator 0.1 --loss-hparams init_width=0.3 ${CACHE[*]}"
  "em --method em ${CACHE[*]}"
  "em-apl --method em-apl ${CACHE[*]}"
  "ll-r --method ll-r ${CACHE[*]}"
  "splc --method splc ${CACHE[*]}"
  "scob --method scob ${CACHE[*]}"
  "scob-lre0.1 --method scob --lr-estimator 0.1 ${CACHE[*]}"
  "scob-ours --method scob --lr-estimator 0.1 --estimator-init-width 0.1 --ema-alpha 0.93 --negative-weights estimator --prototype-positive --lambda-cl 0.05 ${CACHE[*]}"
  "scob-ours-cl0 --method scob --lr-estimator 0.1 --estimator-init-width 0.1 --ema-alpha 0.93 --negative-weights estimator --prototype-positive --lambda-cl 0 ${CACHE[*]}"
)
export PY OUT FLAGS  # read by run() in the xargs shells
printf '%s\n' "${queue[@]}" | xargs -P "$JOBS" -I{} bash -c "$(declare -f run); run {}" | tee -a "$OUT/table.txt"

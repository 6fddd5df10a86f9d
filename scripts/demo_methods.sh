#!/usr/bin/env bash
# Every method on the demo dataset under the label regime it is for, in one sitting; prints the
# README's table. Methods without image-space augmentation share one feature cache.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/demo-methods}
PY=.venv/bin/python
mkdir -p "$OUT"
run() {  # name, then train.py flags
  local name=$1; shift
  if [[ -n ${KEEP_FINISHED:-} && -f $OUT/$name/final.json ]]; then   # KEEP_FINISHED=1: rerun only what is missing
    echo "$name $($PY -c "import json;d=json.load(open('$OUT/$name/final.json'));print(round(d['test']['mAP'],4))") $*"
    return
  fi
  $PY train.py --dataset demo --quiet --overwrite --out "$OUT/$name" "$@" >"$OUT/$name.log" 2>&1 \
    || { echo "$name failed, see $OUT/$name.log" >&2; return 1; }
  echo "$name $($PY -c "import json;d=json.load(open('$OUT/$name/final.json'));print(round(d['test']['mAP'],4))") $*"
}
CACHE=(--cache-features --cache-dir "$OUT/feature_cache")
{
  run scob --method scob
  run scob-reference-ema --method scob --published-ema
  for m in bce; do run "$m-full" --method $m --labels full "${CACHE[@]}"; done
  for m in an an-ls wan epr role ll-r ll-ct ll-cp splc em em-apl; do run "$m" --method $m "${CACHE[@]}"; done
  run sadcl-full --method sadcl --labels full "${CACHE[@]}"
  for p in 0.1 0.3 0.5 0.7 0.9; do
    run "an-partial$p" --method an --labels partial:$p "${CACHE[@]}"
    run "sst-partial$p" --method sst --labels partial:$p "${CACHE[@]}"
  done
  # The single-positive baselines' published model (Cole et al.: global average pool + one linear
  # layer, backbone fine-tuned end to end, BN frozen here) beside a linear head on the frozen backbone;
  # the frozen two-level-head rows are an / role / em above.
  for m in an role em; do
    run "$m-linear-all" --method $m --head linear --train-backbone all --lr-backbone 1e-4
    run "$m-linear-frozen" --method $m --head linear "${CACHE[@]}"
  done
} | tee "$OUT/table.txt"

#!/usr/bin/env bash
# GPU check, one command on a machine with an NVIDIA GPU: build the CUDA extension, run the CUDA and
# Triton cases of the tests, time the kernels, run the benchmarks on the GPU (DALI "mixed" decode
# included), everything under one folder:
#
#     bash scripts/gpu_check.sh            # results in $OUT if set, else bench/results/gpu-<date>/
#
# Every step has its own timeout and the whole stays inside GPU_CHECK_BUDGET_S (default 480 s on an
# H100-class GPU; creating a missing .venv, which downloads CUDA torch, is outside it). A failed step
# does not stop the others; the summary lists each step and the exit status is 1 if any failed.
# Environment: PYTHON (interpreter to use instead of .venv/bin/python), GPU_CHECK_BUDGET_S, MAX_JOBS
# (parallel compile jobs of the extension build, default: all cores).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

RESULTS=${OUT:-bench/results/gpu-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$RESULTS/logs" || { echo "gpu_check: cannot create $RESULTS" >&2; exit 1; }
BUDGET=${GPU_CHECK_BUDGET_S:-480}
case $BUDGET in ''|*[!0-9]*) echo "gpu_check: GPU_CHECK_BUDGET_S must be a whole number of seconds, got '$BUDGET'" >&2; exit 1;; esac
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
# Triton compiles for the GPU (never its CPU interpreter, which tests/conftest.py would pick).
export TRITON_INTERPRET=0
STARTED=$SECONDS
STEPS=()
FAILED=0

# run_step NAME TIMEOUT_S COMMAND...: runs COMMAND with the smaller of TIMEOUT_S and the budget left,
# output in $RESULTS/logs/NAME.log (and its tail on the terminal when it fails).
run_step() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - (SECONDS - STARTED)))
  ((left < limit)) && limit=$left
  if ((limit < 5)); then
    STEPS+=("$(printf '%-18s SKIPPED (time budget of %ss spent)' "$name" "$BUDGET")")
    FAILED=1
    return
  fi
  echo "== $name (timeout ${limit}s)"
  local t0=$SECONDS status
  timeout --kill-after=10 "$limit" "$@" >"$RESULTS/logs/$name.log" 2>&1
  status=$?
  local took=$((SECONDS - t0))
  if ((status == 0)); then
    STEPS+=("$(printf '%-18s ok      %4ss' "$name" "$took")")
  else
    local why="exit $status"
    ((status == 124 || status == 137)) && why="timed out after ${limit}s"
    STEPS+=("$(printf '%-18s FAILED  %4ss  %s (logs/%s.log)' "$name" "$took" "$why" "$name")")
    FAILED=1
    tail -n 25 "$RESULTS/logs/$name.log"
  fi
}

# fail_step NAME REASON: records a step that could not run.
fail_step() {
  STEPS+=("$(printf '%-18s FAILED  %4ss  %s' "$1" 0 "$2")")
  FAILED=1
  echo "== $1: $2"
}

# has_flag SCRIPT FLAG: whether SCRIPT's --help lists FLAG.
has_flag() {
  "$PY" "$1" --help 2>/dev/null | grep -q -- "$2"
}

# bench_step NAME SCRIPT RESULT_NAME TIMEOUT_S ARGS...: a benchmark on the GPU. Needs the script's
# --device flag; its JSON goes to $RESULTS (through --out-dir when the script has it; otherwise it
# writes bench/results/RESULT_NAME.json, which is moved here and the committed file put back).
bench_step() {
  local name=$1 script=$2 result=$3 limit=$4
  shift 4
  if ! has_flag "$script" --device; then
    fail_step "$name" "$script has no --device flag: it cannot run on the GPU yet"
    return
  fi
  if has_flag "$script" --out-dir; then
    run_step "$name" "$limit" "$PY" "$script" --device cuda --out-dir "$RESULTS" "$@"
    return
  fi
  local committed="bench/results/$result.json" saved=""
  if [[ -f $committed ]]; then
    saved=$(mktemp)
    cp "$committed" "$saved"
  fi
  run_step "$name" "$limit" "$PY" "$script" --device cuda "$@"
  [[ -f $committed ]] && mv "$committed" "$RESULTS/$result.json"
  [[ -n $saved ]] && mv "$saved" "$committed"
}

# Median time per backend of both ops at Scob's shapes, on the GPU (the bench/ scripts time the CPU
# backends; this needs nothing of them). `--device cpu --tiny` is a smoke run for machines without one.
read -r -d '' KERNEL_TIMING_PY <<'PY'
import argparse, json, statistics, sys, time
import torch
from scob_fast.ops import last_backend
from scob_fast.ops.label_contrastive import label_contrastive_loss
from scob_fast.ops.masked_attention import masked_attention

parser = argparse.ArgumentParser(prog="gpu_check kernel_timing")
parser.add_argument("--out", required=True)
parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
parser.add_argument("--tiny", action="store_true", help="smallest shapes, 1 repeat (smoke run)")
args = parser.parse_args()
device, repeats = torch.device(args.device), 1 if args.tiny else 5
sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def median_ms(fn):
    fn()  # compiles the Triton kernels / warms up
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


rows, g = [], torch.Generator(device=device).manual_seed(0)
ma_backends = ("triton", "cuda", "sdpa", "reference") if device.type == "cuda" else ("cpp", "reference")
for dtype in (torch.bfloat16, torch.float32):
    for B, H, L, D in ([(2, 2, 49, 16)] if args.tiny else [(32, 8, 196, 64), (32, 8, 784, 64), (32, 8, 196, 16)]):
        q, k, v = (torch.randn(B, H, L, D, device=device, generator=g).to(dtype).requires_grad_() for _ in range(3))
        keep = torch.rand(B, L, device=device, generator=g) < 0.5
        for backend in ma_backends:
            for name, dropout in (("fwd", 0.0), ("fwd+bwd", 0.0), ("fwd+bwd dropout", 0.1)):
                def call():
                    out = masked_attention(q, k, v, keep, dropout_p=dropout, seed=1, backend=backend)
                    if name != "fwd":
                        out.sum().backward()
                row = dict(op="masked_attention", dtype=str(dtype)[6:], B=B, H=H, L=L, D=D, keep=0.5, **{"pass": name},
                           backend=backend)
                try:
                    with torch.set_grad_enabled(name != "fwd"):
                        row["median_ms"] = median_ms(call)
                    row["ran"] = last_backend("masked_attention")
                except Exception as exc:  # one backend failing must not hide the others
                    row["error"] = f"{type(exc).__name__}: {exc}"[:300]
                rows.append(row)
                print(row, flush=True)
lc_backends = ("triton", "cuda", "reference") if device.type == "cuda" else ("cpp", "reference")
for dtype in (torch.float32, torch.bfloat16):
    for n, d in ([(256, 32)] if args.tiny else [(4096, 256), (16384, 256)]):
        a = torch.nn.functional.normalize(torch.randn(n, d, device=device, generator=g), dim=1).to(dtype)
        c = torch.nn.functional.normalize(torch.randn(n, d, device=device, generator=g), dim=1).to(dtype)
        ya, yc = (torch.randint(0, 80, (n,), device=device, generator=g) for _ in range(2))
        w, extra = torch.rand(80, 80, device=device, generator=g), torch.rand(n, device=device, generator=g)
        for backend in lc_backends:
            for name in ("fwd", "fwd+bwd"):
                ag, cg = a.detach().requires_grad_(), c.detach().requires_grad_()

                def call():
                    loss = label_contrastive_loss(ag, ya, cg, yc, temperature=0.2, class_weights=w,
                                                  extra_positive=extra, backend=backend)
                    if name != "fwd":
                        loss.backward()
                row = dict(op="label_contrastive", dtype=str(dtype)[6:], n=n, m=n, d=d, c=80, **{"pass": name},
                           backend=backend)
                try:
                    with torch.set_grad_enabled(name != "fwd"):
                        row["median_ms"] = median_ms(call)
                    row["ran"] = last_backend("label_contrastive")
                except Exception as exc:
                    row["error"] = f"{type(exc).__name__}: {exc}"[:300]
                rows.append(row)
                print(row, flush=True)
info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__,
        "repeats": repeats, "note": "median wall time per call after one warm-up call, synchronised"}
with open(args.out, "w") as f:
    json.dump({"benchmark": "kernel_timing", "environment": info, "results": rows}, f, indent=1)
errors = [r for r in rows if "error" in r]
print(f"kernel_timing: {len(rows)} rows, {len(errors)} failed; wrote {args.out}")
sys.exit(1 if errors else 0)
PY

# ---------------------------------------------------------------------------------------------------
# Interpreter: $PYTHON, else .venv (created by scripts/setup.sh when missing).
if [[ -n ${PYTHON:-} ]]; then
  PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then
  PY=.venv/bin/python
else
  echo "== setup (.venv missing: bash scripts/setup.sh; outside the time budget)"
  t0=$SECONDS
  if bash scripts/setup.sh >"$RESULTS/logs/setup.log" 2>&1; then
    STEPS+=("$(printf '%-18s ok      %4ss' setup $((SECONDS - t0)))")
  else
    tail -n 25 "$RESULTS/logs/setup.log"
    STEPS+=("$(printf '%-18s FAILED  %4ss  (logs/setup.log)' setup $((SECONDS - t0)))")
    FAILED=1
  fi
  STARTED=$SECONDS
  PY=.venv/bin/python
fi

if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  # Every later step needs the GPU: say why once instead of eight times.
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda build:", torch.version.cuda)' \
    >"$RESULTS/logs/no_gpu.log" 2>&1
  fail_step gpu "$PY's torch sees no CUDA GPU ($(tr '\n' ' ' <"$RESULTS/logs/no_gpu.log"))"
else
  run_step info 15 bash -c "nvidia-smi; \"$PY\" -m scob_fast.info"
  # The CUDA sources are built when torch is a CUDA build and nvcc is found (setup.py); =1 makes a
  # missing toolkit an error instead of a silent CPU-only build.
  run_step build 140 env SCOB_FAST_BUILD_CUDA=1 "$PY" setup.py -q develop
  # The CUDA / Triton cases: tests/test_kernels_aot.py's GPU tests (every launch configuration of this
  # GPU, checked against the AOT numbers), and the triton/cuda parametrisations of the op tests.
  run_step tests 170 "$PY" -m pytest -q -rs tests/test_kernels_aot.py tests/test_label_contrastive.py \
    tests/test_masked_attention.py -k "gpu or triton or cuda or dropout_bits" --junitxml="$RESULTS/tests.xml"
  run_step kernel_timing 45 "$PY" -c "$KERNEL_TIMING_PY" --out "$RESULTS/kernel_timing.json"
  bench_step bench_attention bench/masked_attention.py masked_attention 25 --quick --repeats 3
  bench_step bench_contrastive bench/label_contrastive.py label_contrastive 25 --sizes 4096 --dims 256 \
    --backends triton,cuda,reference --repeats 3
  bench_step bench_train_step bench/train_step.py train_step 30 --steps 4
  bench_step bench_pipeline bench/pipeline.py pipeline 25 --images 64 --epochs 2 --workers 4 --no-breakdown
fi

echo
echo "gpu_check summary ($((SECONDS - STARTED))s of ${BUDGET}s; results in $RESULTS):"
printf '  %s\n' "${STEPS[@]}" | tee "$RESULTS/summary.txt"
exit "$FAILED"

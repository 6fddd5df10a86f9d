#!/usr/bin/env bash
# Fresh-machine set-up: .venv with pinned dependencies (CPU torch first) and scob_fast._C built in place.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
# setuptools < 80 still has the real `setup.py develop` (>= 80 re-routes it through an isolated pip build).
$PIP install -q --upgrade "pip>=23" "setuptools>=64,<80" wheel
# Where the default index serves a CUDA build of torch 2.13.0, pass the CPU wheel index through
# SCOB_FAST_TORCH_PIP_ARGS (e.g. "--index-url <PyTorch's CPU wheel index>").
$PIP install -q ${SCOB_FAST_TORCH_PIP_ARGS:-} torch==2.13.0
$PIP install -q -r requirements.txt
.venv/bin/python setup.py -q develop >.venv/build.log 2>&1 || { cat .venv/build.log; echo "scob_fast: build failed" >&2; exit 1; }
.venv/bin/python -m scob_fast.info

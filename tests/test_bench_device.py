"""The benchmark scripts that scripts/gpu_check.sh runs on a GPU: `--device` and `--out-dir` on each,
a smoke run of each on the CPU that writes its JSON where told (and leaves the committed results
alone), and the one-line refusal of `--device cuda` where torch sees no GPU."""
import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

# script, the JSON it writes, the tiniest arguments it takes, the ratio column of its rows
SCRIPTS = [
    ("bench/masked_attention.py", "masked_attention.json", ["--case", "2", "16", "0.5", "--repeats", "1"], "vs_sdpa"),
    ("bench/label_contrastive.py", "label_contrastive.json", ["--sizes", "64", "--dims", "32", "--repeats", "1"],
     "speedup"),
    ("bench/train_step.py", "train_step.json", ["--steps", "1", "--image-size", "64", "--batch-size", "2",
                                                "--samples", "16", "--dim", "32", "--ffn", "64"], "speedup"),
    ("bench/pipeline.py", "pipeline.json", ["--images", "8", "--epochs", "1", "--workers", "1", "--image-size", "64",
                                            "--batch-size", "4", "--no-breakdown"], "speedup"),
]


def _run(args, timeout=240, **env):
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=full_env)


def _committed():
    return {p.name: p.read_bytes() for p in RESULTS.glob("*.json")}


def _gpu_check_function(name):
    text = (ROOT / "scripts" / "gpu_check.sh").read_text()
    found = re.search(rf"^{name}\(\) \{{\n.*?^\}}\n", text, re.S | re.M)
    assert found, f"scripts/gpu_check.sh has no function {name}"
    return found.group(0)


@pytest.mark.parametrize("script", [s[0] for s in SCRIPTS])
def test_gpu_check_finds_the_device_and_out_dir_flags(script):
    """gpu_check.sh's own has_flag (taken from the script) finds both flags in the script's --help."""
    check = (_gpu_check_function("has_flag")
             + 'PY=$1; has_flag "$2" --device || exit 3; has_flag "$2" --out-dir || exit 4\n')
    done = subprocess.run(["bash", "-c", check, "has_flag", sys.executable, script], cwd=ROOT, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert done.returncode == 0, f"exit {done.returncode} (3: no --device, 4: no --out-dir) {done.stderr[-500:]}"


@pytest.mark.parametrize("script,name,args,ratio", SCRIPTS, ids=[s[0] for s in SCRIPTS])
def test_cpu_smoke_run_writes_into_out_dir(script, name, args, ratio, tmp_path):
    if script == "bench/pipeline.py":
        pytest.importorskip("nvidia.dali")
        args = args + ["--image-dir", str(tmp_path / "images")]
    before = _committed()
    done = _run([script, *args, "--device", "cpu", "--out-dir", str(tmp_path / "out")])
    assert done.returncode == 0, done.stderr[-2000:]
    payload = json.loads((tmp_path / "out" / name).read_text())
    assert payload["device"] == "cpu"
    assert payload["results"] and all(isinstance(r.get(ratio), float) for r in payload["results"])
    assert _committed() == before      # bench/results/ untouched


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: --device cuda would run")
@pytest.mark.parametrize("script", [s[0] for s in SCRIPTS])
def test_device_cuda_without_a_gpu_is_one_line_and_exit_2(script, tmp_path):
    done = _run([script, "--device", "cuda", "--out-dir", str(tmp_path)], timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == "--device cuda: no CUDA device visible to torch"
    assert not any(tmp_path.iterdir())


def test_train_step_refuses_cuda_for_the_cpu_only_modes():
    for mode in ("--vs-published", "--backbone-training"):
        done = _run(["bench/train_step.py", mode, "--device", "cuda"], timeout=120,
                    CUDA_VISIBLE_DEVICES="")
        assert done.returncode == 2
        assert done.stderr.strip() == f"--device cuda: {mode} times the CPU only; run the default mode on the GPU"


def test_a_backend_that_cannot_run_is_skipped_with_its_reason():
    """The --device cuda runs drop a backend whose first call fails (here: cuda on CPU tensors, as an
    unbuilt extension would) into "skipped" instead of crashing; checked on CPU tensors."""
    from bench import label_contrastive as contrastive_bench
    from bench import masked_attention as attention_bench

    calls, _ = attention_bench.make_calls(2, 16, 0.5, ["reference", "cuda"])
    ok, skipped = attention_bench.available(calls, ["reference", "cuda"])
    assert ok == ["reference"] and list(skipped) == ["cuda"] and skipped["cuda"]

    inputs = contrastive_bench.make_inputs(16, 16, 8, 4)
    ok, skipped = contrastive_bench.available(inputs, ["reference", "cuda"], argparse.Namespace(temperature=0.2))
    assert ok == ["reference"] and list(skipped) == ["cuda"] and skipped["cuda"]

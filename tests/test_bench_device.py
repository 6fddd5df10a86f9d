"""The benchmark scripts that scripts/gpu_check.sh runs on a GPU: `--device` and `--out-dir` on each,
a smoke run of each on the CPU that writes its JSON where told (and leaves the committed results
alone), and the one-line refusal of `--device cuda` where torch sees no GPU."""
import json
import os
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


@pytest.mark.parametrize("script", [s[0] for s in SCRIPTS])
def test_gpu_check_finds_the_device_and_out_dir_flags(script):
    """gpu_check.sh's has_flag greps the script's --help for each flag."""
    help_text = _run([script, "--help"], timeout=120).stdout
    assert "--device" in help_text and "--out-dir" in help_text


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

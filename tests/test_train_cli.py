"""train.py end to end on a small generated demo set: learning, exact resume, eval-only, config, errors."""
import json

import pytest
import torch

from scob_fast.config import parse_args
from scob_fast.engine import checkpoint
from scob_fast.training import run

SMALL = ["--dataset", "demo", "--demo-images", "300", "--image-size", "64", "--dim", "64", "--ffn", "128",
         "--batch-size", "16", "--quiet", "--loader", "pil", "--workers", "0"]



def test_baseline_learns_far_above_chance_with_feature_cache(cache_dir, tmp_path):
    out = tmp_path / "an"
    final = run(parse_args(SMALL + ["--method", "an", "--epochs", "3", "--cache-features", "--out", str(out),
                                    "--lr-linear", "3e-3", "--lr-classifier", "3e-3", "--lr-transformer", "3e-4"]))
    # chance mAP is the positive rate (~0.19 on the demo); a frozen ImageNet backbone does far better
    assert final["best_val_mAP"] > 0.45, final
    assert final["test"]["mAP"] > 0.45
    rows = (out / "summary.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("epoch,")
    assert (out / "best.pth").exists() and (out / "observed_labels.npz").exists()
    meta = json.loads((out / "feature_cache" / "train" / "meta.json").read_text())
    assert meta["views"] == 2 and meta["bytes_per_image"] > 0


def test_scob_resume_is_exact(cache_dir, tmp_path):
    common = SMALL + ["--method", "scob", "--max-steps", "3", "--dropout", "0.1"]
    straight = tmp_path / "straight"
    run(parse_args(common + ["--epochs", "2", "--out", str(straight)]))
    first = tmp_path / "first"
    run(parse_args(common + ["--epochs", "1", "--out", str(first)]))
    resumed = tmp_path / "resumed"
    run(parse_args(common + ["--epochs", "2", "--out", str(resumed), "--resume", str(first / "last.pth")]))
    a = checkpoint.load(straight / "last.pth")
    b = checkpoint.load(resumed / "last.pth")
    assert a["epoch"] == b["epoch"] == 1
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert torch.equal(a["model"]["bank.features"], b["model"]["bank.features"])   # the prototype bank too


def test_eval_only_and_config_file(cache_dir, tmp_path):
    out = tmp_path / "run"
    run(parse_args(SMALL + ["--method", "an", "--epochs", "1", "--max-steps", "2", "--out", str(out)]))
    result = run(parse_args(SMALL + ["--method", "an", "--eval-only", "--resume", str(out / "last.pth"),
                                     "--out", str(tmp_path / "eval")]))
    assert 0.0 <= result["test"]["mAP"] <= 1.0
    config = tmp_path / "c.yaml"
    config.write_text("method: role\nlr-estimator: 0.05\nepochs: 7\n")
    config = parse_args(["--config", str(config), "--dataset", "demo"])
    assert config.model.method == "role" and config.optim.lr_estimator == 0.05 and config.optim.epochs == 7
    assert config.data.image_size == 128 and config.data.labels == "single"   # demo defaults fill the rest


def test_cli_errors_are_clear(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("no-such-flag: 1\n")
    with pytest.raises(SystemExit):
        parse_args(["--config", str(config)])
    with pytest.raises(SystemExit):
        parse_args(["--eval-only"])
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        checkpoint.load(tmp_path / "missing.pth")
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="unreadable"):
        checkpoint.load(broken)


def test_train_py_makes_idle_openmp_threads_sleep_unless_told_otherwise(tmp_path):
    # Spinning OpenMP threads made the demo 4x slower on a shared 2-core machine (README "Demo"): train.py
    # sets OMP_WAIT_POLICY=PASSIVE before torch loads, and leaves an explicit setting alone.
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    probe = ("import importlib.util, os, sys; spec = importlib.util.spec_from_file_location('t', sys.argv[1]); "
             "spec.loader.exec_module(importlib.util.module_from_spec(spec)); print(os.environ['OMP_WAIT_POLICY'])")
    for given, expected in ((None, "PASSIVE"), ("ACTIVE", "ACTIVE")):
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        if given:
            env["OMP_WAIT_POLICY"] = given
        out = subprocess.run([sys.executable, "-c", probe, str(root / "train.py")], env=env, capture_output=True,
                             text=True, check=True).stdout.split()
        assert out[-1] == expected

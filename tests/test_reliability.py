"""Bad input, faults and interruptions: each probe ends in one clear outcome (a one-line message
naming the flag or file, a skipped step, an untouched run directory)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scob_fast.config import parse_args
from scob_fast.engine.amp import AmpPolicy, NonFiniteTraining
from scob_fast.engine.run_directory import RunDirectory
from scob_fast.training import check_resume_arguments, prepare_run_directory, run

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--dataset", "demo", "--demo-images", "300", "--image-size", "64", "--dim", "64", "--ffn", "128",
         "--batch-size", "16", "--quiet", "--loader", "pil", "--workers", "0"]



def _error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return lines[-1]


@pytest.mark.parametrize("yaml_text, expected", [
    ('amp: "false"\n', "--amp expects true or false"),
    ("epochs: 1.5\n", "--epochs expects an int"),
    ("loader: nvjpeg\n", "--loader must be one of auto, dali, pil"),
    ("lr-linear: fast\n", "--lr-linear expects a float"),
    ("no-such-flag: 1\n", "unknown key 'no-such-flag'"),
    ("- a\n- b\n", "expected a mapping"),
    ("epochs: [1\n", "not valid YAML"),
])
def test_config_values_are_checked_like_flags(tmp_path, capsys, yaml_text, expected):
    config = tmp_path / "c.yaml"
    config.write_text(yaml_text)
    line = _error(capsys, ["--config", str(config)])
    assert str(config) in line and expected in line


def test_config_booleans_and_values_that_pass(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("amp: false\ncompile: true\nepochs: 4\nlr-linear: 1e-4\n")
    parsed = parse_args(["--config", str(config)])
    assert parsed.optim.amp is False and parsed.optim.compile is True
    assert parsed.optim.epochs == 4 and parsed.optim.lr_linear == 1e-4


@pytest.mark.parametrize("argv, expected", [
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--epochs", "-3"], "--epochs must be >= 1"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--lr-linear", "-1"], "--lr-linear must be a finite number >= 0"),
    (["--lr-classifier", "nan"], "--lr-classifier must be a finite number >= 0"),
    (["--image-size", "100"], "--image-size must be a multiple of 32"),
    (["--dim", "100"], "--dim must be a positive multiple of 16"),
    (["--dropout", "1.0"], "--dropout must be in [0, 1)"),
    (["--labels", "partial:1.5"], "--labels"),
    (["--labels", "some"], "--labels"),
    (["--max-bad-fraction", "2"], "--max-bad-fraction must be in [0, 1]"),
    (["--eval-only"], "--eval-only needs --resume"),
])
def test_ranges_are_checked_before_any_work(capsys, argv, expected):
    assert expected in _error(capsys, argv)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_explained(capsys):
    assert "sees no CUDA GPU" in _error(capsys, ["--device", "cuda"])


def test_nonfinite_step_is_skipped_and_counted():
    model = torch.nn.Linear(3, 1)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.Adam(model.parameters())
    amp = AmpPolicy("cpu", False)
    loss = (model(torch.ones(2, 3)) * float("nan")).sum()
    assert amp.step(loss, optimizer) is False
    assert amp.skipped_steps == 1 and amp.consecutive_skipped == 1
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert amp.step(model(torch.ones(2, 3)).sum(), optimizer) is True
    assert amp.consecutive_skipped == 0 and amp.skipped_steps == 1


def test_gradient_clipping_bounds_the_update():
    model = torch.nn.Linear(3, 1, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    amp = AmpPolicy("cpu", False, clip_grad_norm=0.5)
    before = model.weight.detach().clone()
    amp.step((model(torch.full((1, 3), 100.0))).sum(), optimizer)
    assert torch.linalg.vector_norm(model.weight.detach() - before).item() == pytest.approx(0.5, rel=1e-5)


def test_huge_learning_rate_stops_without_saving_nan(cache_dir, tmp_path):
    out = tmp_path / "nan"
    config = parse_args(SMALL + ["--method", "an", "--epochs", "2", "--cache-features", "--out", str(out),
                                 "--lr-linear", "1e30", "--lr-classifier", "1e30", "--lr-transformer", "1e30",
                                 "--max-nonfinite-steps", "2"])
    with pytest.raises(NonFiniteTraining, match="consecutive steps had a non-finite loss"):
        run(config)
    assert not (out / "best.pth").exists() and not (out / "last.pth").exists()


def test_out_holding_a_run_is_refused_unless_resumed_or_overwritten(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "args.yaml").write_text("method: an\n")
    (out / "last.pth").write_bytes(b"x")
    with pytest.raises(ValueError, match="already holds a run"):
        prepare_run_directory(parse_args(["--out", str(out)]))
    prepare_run_directory(parse_args(["--out", str(out), "--resume", str(out / "last.pth")]))
    assert (out / "last.pth").exists()
    prepare_run_directory(parse_args(["--out", str(out), "--overwrite"]))
    assert not (out / "last.pth").exists() and not (out / "args.yaml").exists()


def test_default_out_is_new_for_each_run():
    out = parse_args(["--method", "an"]).run.out
    assert out.startswith("runs/demo-an-") and len(out) > len("runs/demo-an-")


def test_resume_with_other_options_lists_the_differences():
    trained = parse_args(["--method", "an", "--labels", "single", "--dim", "256"]).flat()
    with pytest.raises(ValueError, match=r"--labels 'single' -> 'full'.*--dim 256 -> 128|--dim 256 -> 128.*--labels"):
        check_resume_arguments({"args": trained}, parse_args(["--method", "an", "--labels", "full", "--dim", "128"]),
                               "last.pth")
    # where and how long it runs may change
    check_resume_arguments({"args": trained}, parse_args(["--method", "an", "--labels", "single", "--dim", "256",
                                                          "--epochs", "40", "--workers", "0"]), "last.pth")


def test_stale_temp_files_are_removed_and_log_rows_kept_once(tmp_path):
    (tmp_path / "last.pth.abc123.tmp").write_bytes(b"")
    run_dir = RunDirectory(tmp_path)
    assert not list(tmp_path.glob("*.tmp"))
    for epoch in (1, 2, 3):
        run_dir.append_summary({"epoch": epoch, "loss": 0.5})
    run_dir.keep_epochs_up_to(1)   # resumed from epoch 1's checkpoint: epochs 2 and 3 will be written again
    run_dir.append_summary({"epoch": 2, "loss": 0.4, "extra_column": 1})
    rows = (tmp_path / "summary.csv").read_text().splitlines()
    assert rows == ["epoch,loss", "1,0.5", "2,0.4"]
    logged = [json.loads(line)["epoch"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert logged == [1, 2]


def test_eval_only_writes_its_own_file(cache_dir, tmp_path):
    out = tmp_path / "run"
    run(parse_args(SMALL + ["--method", "an", "--epochs", "1", "--max-steps", "2", "--out", str(out)]))
    args_before = (out / "args.yaml").read_text()
    run(parse_args(SMALL + ["--method", "an", "--eval-only", "--resume", str(out / "last.pth"), "--out", str(out),
                            "--batch-size", "8"]))
    assert (out / "args.yaml").read_text() == args_before
    result = json.loads((out / "eval-last.json").read_text())
    assert 0.0 <= result["test"]["mAP"] <= 1.0


def test_train_py_reports_one_line_without_traceback(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "final.json").write_text("{}")
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--out", str(out), "--method", "an"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"train.py: error: --out {out} already holds a run")


def _folder_run(root, out, *extra):
    return parse_args(["--dataset", "folder", "--data-root", str(root), "--image-size", "64", "--dim", "64",
                       "--ffn", "128", "--batch-size", "4", "--epochs", "1", "--max-steps", "1", "--quiet",
                       "--loader", "pil", "--workers", "0", "--method", "an", "--out", str(out), *extra])


def test_bad_images_are_found_before_training_and_stop_or_skip(tmp_path, capsys):
    from scob_fast.data.testing import damage, make_folder
    from scob_fast.training import BadImages
    root, expected = make_folder(tmp_path / "data", n_train=40, n_test=8)
    damage(root / expected["test"][0][3], "truncate")     # one bad test image, found before any epoch
    (root / expected["train"][0][5]).unlink()             # and a missing training image
    with pytest.raises(BadImages, match=r"2 image\(s\) cannot be read"):
        run(_folder_run(root, tmp_path / "stop"))
    assert not (tmp_path / "stop" / "last.pth").exists()
    final = run(_folder_run(root, tmp_path / "skip", "--bad-images", "skip"))
    assert 0.0 <= final["test"]["mAP"] <= 1.0
    split_files = json.loads((tmp_path / "skip" / "splits.json").read_text())
    assert expected["test"][0][3] not in split_files["test"] and len(split_files["test"]) == 7
    assert run(_folder_run(root, tmp_path / "check", "--check-data"))["check_data"]["bad_images"] == 2
    assert not (tmp_path / "check").exists()


def test_missing_or_stale_extension_is_a_loud_warning(monkeypatch, caplog):
    from scob_fast import _ext
    from scob_fast.training import warn_if_slow_build
    monkeypatch.setattr(_ext, "load_error", lambda: "scob_fast._C is not built (no module)")
    monkeypatch.setattr(_ext, "stale_sources", lambda: ["csrc/ops.cpp"])
    with caplog.at_level("WARNING", logger="scob_fast.train"):
        warn_if_slow_build()
    text = caplog.text
    assert "WARNING: scob_fast._C is not built" in text and "pure-PyTorch reference" in text
    assert "older than 1 source file(s)" in text and "python setup.py develop" in text


def test_a_fresh_build_is_not_stale():
    from scob_fast import _ext
    if _ext.load_error():
        pytest.skip(_ext.load_error())
    assert _ext.stale_sources() == [], "rebuild scob_fast._C: python setup.py develop"


def test_every_flag_has_help_that_shows_its_default():
    from scob_fast.config import build_parser
    parser = build_parser()
    for action in parser._actions:
        if action.dest in ("help", "config"):
            continue
        assert action.help, action.option_strings
        text = parser._get_formatter()._expand_help(action)
        assert "default" in text, (action.option_strings, text)

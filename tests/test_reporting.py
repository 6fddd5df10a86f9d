"""Reporting observers on a tiny trained run: per_class.csv (AP as metrics computes it), plots,
TensorBoard event files, progress display modes, and the reporting options on the command line."""
import csv
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from scob_fast.config import parse_args
from scob_fast.engine import progress as progress_module
from scob_fast.engine.metrics import mean_average_precision
from scob_fast.engine.progress import Progress
from scob_fast.reporting.per_class import PER_CLASS_COLUMNS, f1_thresholds, pr_curve, read_per_class
from scob_fast.reporting.results import load_scores
from scob_fast.training import run

SMALL = ["--dataset", "demo", "--demo-images", "300", "--image-size", "64", "--dim", "64", "--ffn", "128",
         "--batch-size", "16", "--quiet", "--loader", "pil", "--workers", "0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One AN run of 2 epochs x 2 steps with TensorBoard and plots on."""
    cache = tmp_path_factory.getbasetemp() / "scob_fast_demo_cache"     # shared by this session's modules
    cache.mkdir(exist_ok=True)
    old = os.environ.get("SCOB_FAST_CACHE_DIR")
    os.environ["SCOB_FAST_CACHE_DIR"] = str(cache)
    out = tmp_path_factory.mktemp("runs") / "an"
    try:
        final = run(parse_args(SMALL + ["--method", "an", "--epochs", "2", "--max-steps", "2", "--out", str(out)]))
        yield out, final
    finally:
        if old is None:
            os.environ.pop("SCOB_FAST_CACHE_DIR", None)
        else:
            os.environ["SCOB_FAST_CACHE_DIR"] = old


def test_per_class_csv_matches_metrics(trained):
    out, final = trained
    with open(out / "per_class.csv", newline="") as handle:
        assert tuple(next(csv.reader(handle))) == PER_CLASS_COLUMNS
    rows = read_per_class(out / "per_class.csv")
    assert {r["split"] for r in rows} == {"val", "test"}
    summary = list(csv.DictReader(open(out / "summary.csv")))
    best_row = max(summary, key=lambda r: float(r["val_mAP"]))
    for split in ("val", "test"):
        saved = load_scores(out, split)
        mean, ap = mean_average_precision(saved["scores"], saved["targets"].astype(np.float64))
        split_rows = [r for r in rows if r["split"] == split]
        assert [r["class"] for r in split_rows] == saved["class_names"]
        np.testing.assert_allclose([r["AP"] for r in split_rows], ap, atol=1e-6)
        assert [r["positives"] for r in split_rows] == saved["targets"].sum(0).tolist()
        predicted = saved["scores"] >= 0.5
        tp = (predicted & (saved["targets"] > 0)).sum(0)
        np.testing.assert_allclose([r["recall"] for r in split_rows], tp / np.maximum(saved["targets"].sum(0), 1),
                                   atol=1e-6)
        assert {r["epoch"] for r in split_rows} == {int(best_row["epoch"]) if split == "val" else final["best_epoch"]}
        if split == "val":
            assert mean == pytest.approx(float(best_row["val_mAP"]), abs=1e-9)
        else:
            assert mean == pytest.approx(final["test"]["mAP"], abs=1e-9)


def test_plots_are_valid_pngs(trained):
    out, _ = trained
    for name in ("plot_training.png", "plot_ap_val.png", "plot_ap_test.png", "plot_pr_val.png", "plot_pr_test.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100
            image.verify()


def test_val_f1_thresholds_are_stored_for_best_checkpoint(trained):
    out, _ = trained
    record = json.loads((out / "thresholds_val_f1.json").read_text())
    saved = load_scores(out, "val")
    thresholds, _ = f1_thresholds(saved["scores"], saved["targets"])
    assert record["checkpoint"] == "best.pth" and len(record["thresholds"]) == len(saved["class_names"])
    np.testing.assert_allclose(record["thresholds"], thresholds, atol=1e-6)


def test_tensorboard_event_file_holds_the_scalars(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out, final = trained
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("step/loss", "step/images_per_s", "train/loss", "train/images_per_s", "train/skipped_images",
                "train/nonfinite_steps", "lr/linear", "lr/classifier", "val/mAP", "val/CF1", "test/mAP"):
        assert tag in tags, (tag, sorted(tags))
    assert [s.step for s in events.Scalars("step/loss")] == [0, 1, 2, 3]      # 2 epochs x 2 steps
    assert [s.step for s in events.Scalars("val/mAP")] == [1, 2]
    summary = list(csv.DictReader(open(out / "summary.csv")))
    assert [s.value for s in events.Scalars("val/mAP")] == pytest.approx([float(r["val_mAP"]) for r in summary])
    assert events.Scalars("test/mAP")[0].value == pytest.approx(final["test"]["mAP"], abs=1e-6)


def test_reporting_cli_rewrites_per_class(trained, tmp_path, capsys):
    from scob_fast.reporting.__main__ import main
    out, _ = trained
    before = (out / "per_class.csv").read_text()
    (out / "per_class.csv").unlink()
    assert main([str(out), "--no-plots"]) == 0
    assert (out / "per_class.csv").read_text() == before


def test_pr_curve_and_f1_thresholds():
    scores = np.array([[0.9], [0.8], [0.7], [0.2]])
    targets = np.array([[1], [0], [1], [0]])
    recall, precision = pr_curve(scores[:, 0], targets[:, 0])
    np.testing.assert_allclose(recall, [0.5, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(precision, [1.0, 0.5, 2 / 3, 0.5])
    thresholds, f1 = f1_thresholds(scores, targets)
    assert f1[0] == pytest.approx(0.8) and 0.2 < thresholds[0] < 0.7     # predict the top three


class _FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_modes():
    log = io.StringIO()
    bar = Progress(20, "epoch 1/1", mode="lines", stream=log, percent=25, seconds=1e9)
    for step in range(20):
        bar.update(step, 4, {"loss": 1.0 + step, "keep": 0.5})
    assert bar.close() > 0
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 4           # 25, 50, 75, 100 %
    assert lines[-1].startswith("epoch 1/1: 20/20 (100%)") and "img/s" in lines[-1] and "loss" in lines[-1]
    assert "keep" not in lines[-1]
    silent = io.StringIO()
    quiet = Progress(5, "x", enabled=False, stream=silent, mode="lines")
    quiet.update(0, 2, {})
    quiet.close()
    assert silent.getvalue() == ""
    terminal = _FakeTerminal()
    tty = Progress(3, "epoch 2/3", stream=terminal, mode="auto")
    assert tty.mode == "bar"
    for step in range(3):
        tty.update(step, 8, {"loss_sup": 0.5})
    tty.close()
    assert "epoch 2/3" in terminal.getvalue() and "img/s" in terminal.getvalue()
    assert Progress(3, "y", stream=io.StringIO(), mode="auto").mode == "lines"    # not a terminal


def test_report_options_are_flags():
    config = parse_args(["--dataset", "demo", "--no-tensorboard", "--progress", "lines", "--threshold", "0.3",
                         "--no-plots"])
    r = config.report
    assert (r.tensorboard, r.progress, r.threshold, r.plots) == (False, "lines", 0.3, False)
    assert parse_args(["--dataset", "demo"]).report.tensorboard is True
    previous = progress_module.configure("none")
    try:
        assert Progress(3, "z", stream=io.StringIO()).mode == "none"
    finally:
        progress_module.restore(previous)


def test_tensorboard_test_map_uses_the_ap_of_the_run(tmp_path):
    # --ap voc-interpolated: TensorBoard's test/mAP is final.json's number, not scikit-learn's AP.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = tmp_path / "voc-ap"
    final = run(parse_args(SMALL + ["--method", "an", "--epochs", "1", "--max-steps", "2", "--ap", "voc-interpolated",
                                    "--out", str(out)]))
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert final["modes"]["ap"] == "voc-interpolated"
    assert events.Scalars("test/mAP")[0].value == pytest.approx(final["test"]["mAP"], abs=1e-6)

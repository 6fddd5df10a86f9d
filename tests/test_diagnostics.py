"""Training diagnostics (scob_fast/reporting/diagnostics.py): estimator quality against the true
labels, CAM keep-mask precision/recall against object masks, loss shares, the CSV across resume."""
import csv
import math

import numpy as np
import pytest
import torch
from torch import nn

from scob_fast.models.label_estimator import LabelEstimator
from scob_fast.reporting.diagnostics import (TrainingDiagnostics, estimator_quality, keep_mask_scores,
                                             label_estimates)


def _truth(n=40, c=5, seed=0):
    rng = np.random.default_rng(seed)
    truth = (rng.random((n, c)) < 0.3).astype(np.int64)
    truth[np.arange(n), rng.integers(0, c, n)] = 1
    observed = np.zeros_like(truth)
    for i in range(n):
        observed[i, rng.choice(np.flatnonzero(truth[i]))] = 1
    return truth, observed


def test_estimator_quality_perfect_random_and_drift():
    truth, observed = _truth()
    perfect = np.where(truth > 0, 0.9, 0.1)
    q = estimator_quality(perfect, np.full(truth.shape, 0.5), observed, truth)
    assert q["estimator_mAP"] == pytest.approx(100.0)
    assert q["estimator_mAP_unknown"] == pytest.approx(100.0)
    assert q["estimate_unknown_pos"] == pytest.approx(0.9) and q["estimate_neg"] == pytest.approx(0.1)
    assert q["estimator_drift"] == pytest.approx(0.4)
    # Observed positives high, every unknown the same: the unknown-only mAP is the positive rate of
    # the unknowns (every tie ranks alike), far below the all-entries mAP the pinned positives lift.
    flat = np.where(observed > 0, 0.99, 0.5)
    q = estimator_quality(flat, None, observed, truth)
    unknown = observed == 0
    rates = [truth[unknown[:, c], c].mean() for c in range(truth.shape[1]) if truth[unknown[:, c], c].any()]
    assert q["estimator_mAP_unknown"] == pytest.approx(100 * np.mean(rates), rel=1e-6)
    assert q["estimator_mAP"] > q["estimator_mAP_unknown"] + 10
    assert "estimator_drift" not in q


def test_keep_mask_scores_by_hand():
    # 8 x 8 object map, 2 x 2 token grid: the object fills the top-left quarter and half of top-right.
    maps = torch.zeros(1, 8, 8, dtype=torch.bool)
    maps[0, :4, :4] = True
    maps[0, :4, 4:6] = True
    keep = torch.tensor([[True, False, True, False]])      # top-left and bottom-left cells kept
    p, r, c = keep_mask_scores(keep, (2, 2), maps)
    assert p == [pytest.approx(0.5)]                   # one of two kept cells touches the object
    assert r == [pytest.approx(16 / 24)]               # 16 of its 24 pixels are in kept cells
    assert c == [pytest.approx(0.5)]                   # 2 of 4 cells touch it
    # nothing kept: precision undefined (left out), recall 0; no object: left out of both
    p, r, c = keep_mask_scores(torch.zeros(2, 4, dtype=torch.bool), (2, 2),
                               torch.stack([maps[0], torch.zeros(8, 8, dtype=torch.bool)]))
    assert p == [] and r == [0.0] and c == []


class _FakeMethod(nn.Module):
    """An estimator, a `last_cam` per step and a `diagnostics` hook, as Scob exposes them."""

    def __init__(self, observed):
        super().__init__()
        self.estimator = LabelEstimator(torch.from_numpy(observed), seed=0)
        self.last_cam = None

    def diagnostics(self, truth):
        return {"bank_fill": 0.25}


def test_observer_rows_csv_resume_and_flip(tmp_path):
    truth, observed = _truth(n=6, c=3)
    maps = np.zeros((6, 8, 8), dtype=np.uint8)
    maps[:, :, :4] = 1 + np.argmax(observed, 1)[:, None, None]  # each image's observed class: left half
    method = _FakeMethod(observed)
    found = label_estimates(method)
    assert found is not None and found[0].shape == (6, 3)
    obs = TrainingDiagnostics(tmp_path, method, truth, observed, maps)
    targets = torch.from_numpy(np.argmax(observed, 1))
    left = torch.tensor([[True, False] * 2] * 6)                   # 2 x 2 grid: the left column
    method.last_cam = {"keep": [left], "grids": [(2, 2)], "targets": targets, "indices": torch.arange(6),
                       "flip": torch.tensor([False, False, False, True, True, True])}
    obs.on_step(0, 0, {"loss_sup": torch.tensor(3.0), "loss_cl": torch.tensor(1.0)}, 6)
    assert method.last_cam is None                                   # scored once
    obs.on_epoch(0, {})
    with open(tmp_path / "diagnostics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["epoch"] == "1"
    # Mirrored images have the object on the right: the left-column mask finds it in half of them.
    assert float(rows[0]["cam0_precision"]) == pytest.approx(0.5)
    assert float(rows[0]["share_loss_sup"]) == pytest.approx(0.75)
    assert float(rows[0]["bank_fill"]) == pytest.approx(0.25)
    assert math.isfinite(float(rows[0]["estimator_mAP"]))
    obs.on_epoch(1, {})
    # A resumed run redoes epoch 2: its row is replaced, not repeated.
    TrainingDiagnostics(tmp_path, method, truth, observed, maps).on_epoch(1, {})
    with open(tmp_path / "diagnostics.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]


def test_close_draws_the_panels(tmp_path):
    truth, observed = _truth(n=6, c=3)
    obs = TrainingDiagnostics(tmp_path, _FakeMethod(observed), truth, observed, None, plots=True)
    obs.on_epoch(0, {})
    obs.on_epoch(1, {})
    obs.close()
    assert (tmp_path / "diagnostics.png").stat().st_size > 1000


TINY_COCO = ["--dataset", "demo-coco", "--demo-images", "60", "--image-size", "96", "--dim", "32", "--ffn", "64",
             "--batch-size", "8", "--epochs", "2", "--quiet", "--workers", "0", "--no-tensorboard"]


@pytest.mark.parametrize("method,loader", [("scob", "pil"), ("scob", "dali"), ("role", "pil")])
def test_train_py_writes_diagnostics_on_demo_coco(method, loader, tmp_path, monkeypatch):
    """End to end on a tiny generated demo-coco: the estimator columns for both estimator methods,
    the CAM columns (scored against the generator's masks, mirrored images included) for Scob."""
    if loader == "dali":
        pytest.importorskip("nvidia.dali")
    from scob_fast.config import parse_args
    from scob_fast.training import run
    monkeypatch.setenv("SCOB_FAST_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / method
    run(parse_args(TINY_COCO + ["--method", method, "--loader", loader, "--out", str(out)]))
    with open(out / "diagnostics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for r in rows:
        assert 0 <= float(r["estimator_mAP_unknown"]) <= 100 and float(r["estimator_drift"]) > 0
    if method == "scob":
        for r in rows:
            for level in (0, 1):
                assert 0 <= float(r[f"cam{level}_precision"]) <= 1 and 0 <= float(r[f"cam{level}_recall"]) <= 1
            assert 0 < float(r["bank_fill"]) <= 1 and 0 < float(r["bank_purity"]) <= 1
            shares = [float(v) for k, v in r.items() if k.startswith("share_")]
            assert "share_loss_sup" not in r and float(r["share_loss_classifier"]) > 0
            assert sum(shares) == pytest.approx(1.0, abs=1e-4)
    assert (out / "diagnostics.png").is_file()

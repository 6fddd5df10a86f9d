"""Label regimes: determinism (also against fixed values, so another machine or numpy version that
drew differently would fail), the statistics of the draws, and the observed-label files."""
import os

import numpy as np
import pytest

from scob_fast.data import load_observed, observe_labels, observed_path, parse_regime, save_observed

SMALL = np.array([[1, 1, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 0, 0], [1, 0, 1, 0]], np.uint8)


def _random_labels(n, c, p, seed=0):
    return (np.random.default_rng(seed).random((n, c)) < p).astype(np.uint8)


def test_full_observes_everything():
    obs = observe_labels(SMALL, "full")
    assert obs.dtype == np.int8
    np.testing.assert_array_equal(obs, np.where(SMALL == 1, 1, -1))


def test_single_fixed_values():
    # RandomState(1200) as in the single-positive protocol; these values must never change.
    expected = [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1], [0, 1, 0, 0], [1, 0, 0, 0]]
    np.testing.assert_array_equal(observe_labels(SMALL, "single"), expected)


def test_partial_fixed_values():
    expected = [[0, 0, 0, 0], [-1, 0, -1, 0], [0, 1, 0, 0], [0, 0, -1, -1], [1, 0, 0, 0]]
    np.testing.assert_array_equal(observe_labels(SMALL, "partial:0.5"), expected)


def test_single_structure_and_determinism():
    labels = _random_labels(3000, 20, 0.15)
    obs = observe_labels(labels, "single", seed=7)
    has_pos = labels.any(1)
    assert ((obs == 1).sum(1) == has_pos).all(), "one positive per image that has any, none otherwise"
    assert not (obs == -1).any(), "single-positive observes no negative"
    assert (labels[obs == 1] == 1).all(), "observed positives are true positives"
    np.testing.assert_array_equal(obs, observe_labels(labels, "single", seed=7))
    assert not np.array_equal(obs, observe_labels(labels, "single", seed=8))


def test_single_is_uniform_over_positives():
    n = 4000
    labels = np.zeros((n, 6), np.uint8)
    labels[:, [0, 2, 3, 5]] = 1
    counts = (observe_labels(labels, "single") == 1).sum(0)
    assert counts[[1, 4]].sum() == 0
    expected = n / 4
    chi2 = (((counts[[0, 2, 3, 5]] - expected) ** 2) / expected).sum()
    assert chi2 < 16.3, f"chi-square {chi2:.1f} over 3 dof (p < 0.001): counts {counts}"


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_partial_statistics(p):
    labels = _random_labels(2000, 10, 0.3)
    obs = observe_labels(labels, f"partial:{p}")
    kept = obs != 0
    n = kept.size
    assert abs(kept.mean() - p) < 4 * np.sqrt(p * (1 - p) / n)
    full = np.where(labels == 1, 1, -1)
    np.testing.assert_array_equal(obs[kept], full[kept])
    # keeping is independent of the label value
    pos_rate, neg_rate = kept[labels == 1].mean(), kept[labels == 0].mean()
    assert abs(pos_rate - neg_rate) < 4 * np.sqrt(p * (1 - p) * (1 / (labels == 1).sum() + 1 / (labels == 0).sum()))


def test_partial_one_is_full():
    np.testing.assert_array_equal(observe_labels(SMALL, "partial:1"), observe_labels(SMALL, "full"))


@pytest.mark.parametrize("bad", ["bogus", "partial:0", "partial:1.5", "partial:x", "partial"])
def test_bad_regime_names_it(bad):
    with pytest.raises(ValueError, match="regime"):
        parse_regime(bad)


def test_bad_labels():
    with pytest.raises(ValueError, match="2-D"):
        observe_labels(np.zeros(4, np.uint8), "full")
    with pytest.raises(ValueError, match="0 and 1"):
        observe_labels(np.full((2, 2), 2), "full")


def test_save_load_roundtrip(tmp_path):
    obs = observe_labels(_random_labels(50, 8, 0.3), "partial:0.3")
    path = save_observed(tmp_path, obs, regime="partial:0.3", seed=0, dataset="x")
    assert path == observed_path(tmp_path)
    loaded, meta = load_observed(tmp_path, with_meta=True)
    np.testing.assert_array_equal(loaded, obs)
    assert loaded.dtype == np.int8 and meta == {"regime": "partial:0.3", "seed": 0, "dataset": "x"}
    assert os.listdir(tmp_path) == [path.name], "no temporary file left behind"
    # overwrite in place
    save_observed(path, obs * 0)
    assert not load_observed(path).any()


def test_save_load_errors(tmp_path):
    with pytest.raises(ValueError, match="int8"):
        save_observed(tmp_path / "o.npz", np.zeros((2, 2), np.float32))
    (tmp_path / "bad.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="bad.npz"):
        load_observed(tmp_path / "bad.npz")

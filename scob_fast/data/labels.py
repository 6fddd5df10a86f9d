"""Label regimes: which labels of the training images the learner observes.

Observed matrices are int8 [N, C]: 1 = observed positive, -1 = observed negative, 0 = unknown.
Draws use numpy's legacy RandomState, whose streams are fixed across numpy versions and machines.

- "full": every label observed (1 / -1).
- "single": one observed positive per image, uniform over its positives: RandomState(seed) created
  once, images in order, shuffle the image's positive class indices and keep the first (default
  seed 1200). No negative is observed; an image without any positive observes nothing. This is the
  positive half of Cole et al.'s draw only: their preproc/generate_observed_labels.py also shuffles
  each image's negatives (consuming random numbers) and runs on the whole official list in their row
  order, so its labels differ from this function's; `scob_fast.data.protocols` has that exact draw
  (and Scob's), which is what train.py uses.
- "partial:P": each (image, class) entry kept with probability P, else unknown: one U(0, 1) matrix
  of shape [N, C] from RandomState(seed), default seed 0, kept where U < P. This is SST's draw
  (HCP-MLR-PL datasets/coco2014.py changeLabelProportion) when `labels` are SST's rows.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from scob_fast.atomic_file import atomic_write

DEFAULT_SEEDS = {"full": 0, "single": 1200, "partial": 0}
OBSERVED_FILE = "observed_labels.npz"


def parse_regime(regime: str) -> tuple[str, float | None]:
    """("full" | "single" | "partial", P or None); a bad string raises naming `regime`."""
    text = str(regime).strip().lower()
    if text in ("full", "single"):
        return text, None
    if text.startswith("partial:"):
        try:
            p = float(text.split(":", 1)[1])
        except ValueError:
            p = float("nan")
        if not 0.0 < p <= 1.0:
            raise ValueError(f"regime {regime!r}: partial:P needs 0 < P <= 1")
        return "partial", p
    raise ValueError(f"regime {regime!r} is not one of 'full', 'single', 'partial:P' (e.g. partial:0.3)")


def observe_labels(labels: np.ndarray, regime: str, seed: int | None = None) -> np.ndarray:
    """Observed int8 [N, C] matrix of the full 0/1 `labels` [N, C] under `regime`; deterministic in seed."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D [N, C], got shape {labels.shape}")
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must hold only 0 and 1")
    kind, p = parse_regime(regime)
    seed = DEFAULT_SEEDS[kind] if seed is None else int(seed)
    full = np.where(labels > 0, 1, -1).astype(np.int8)
    if kind == "full":
        return full
    rng = np.random.RandomState(seed)
    if kind == "partial":
        keep = rng.random_sample(labels.shape) < p
        return np.where(keep, full, 0).astype(np.int8)
    observed = np.zeros(labels.shape, dtype=np.int8)
    for i in range(labels.shape[0]):
        positives = np.flatnonzero(labels[i])
        if positives.size == 0:
            continue
        rng.shuffle(positives)
        observed[i, positives[0]] = 1
    return observed


def observed_path(checkpoint_dir: os.PathLike | str) -> Path:
    """Where a run stores its observed labels: next to its checkpoints."""
    return Path(checkpoint_dir) / OBSERVED_FILE


def save_observed(path: os.PathLike | str, observed: np.ndarray, **meta) -> Path:
    """Write `observed` (+ JSON-able `meta`, e.g. regime, seed, dataset, class_names) to an .npz,
    temp-file then rename so a crash never leaves a half-written file. A directory `path` means
    `<path>/observed_labels.npz`."""
    path = Path(path)
    if path.is_dir():
        path = observed_path(path)
    observed = np.asarray(observed)
    if observed.ndim != 2 or observed.dtype != np.int8:
        raise ValueError(f"observed must be an int8 [N, C] matrix, got {observed.dtype} {observed.shape}")
    meta_json = np.array(json.dumps(meta, sort_keys=True))
    atomic_write(path, lambda handle: np.savez(handle, observed=observed, meta=meta_json))
    return path


def load_observed(path: os.PathLike | str, with_meta: bool = False):
    """The observed matrix saved by `save_observed` (and its meta dict when `with_meta`)."""
    path = Path(path)
    if path.is_dir():
        path = observed_path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            observed = data["observed"].astype(np.int8)
            meta = json.loads(str(data["meta"])) if "meta" in data else {}
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{path}: not a readable observed-labels file ({type(exc).__name__}: {exc})") from None
    return (observed, meta) if with_meta else observed

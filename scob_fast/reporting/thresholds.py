"""Per-class thresholds chosen on a run's validation split (maximum per-class F1), stored in the run
directory with the checkpoint they belong to, so `predict --threshold val-f1` is reproducible."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from scob_fast.atomic_file import atomic_write

THRESHOLDS_FILE = "thresholds_val_f1.json"


def file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_thresholds(run_dir: str | Path, checkpoint: str | Path, class_names: list[str], thresholds, f1,
                    epoch: int | None = None) -> Path:
    path = Path(run_dir) / THRESHOLDS_FILE
    record = {"rule": "per class, the threshold maximising F1 on the run's val split (predict >= threshold)",
              "split": "val", "checkpoint": Path(checkpoint).name, "checkpoint_sha256": file_digest(checkpoint),
              "epoch": epoch, "classes": list(class_names),
              "thresholds": [float(t) for t in thresholds],
              "val_f1": [None if np.isnan(v) else float(v) for v in np.asarray(f1, dtype=np.float64)]}
    text = json.dumps(record, indent=2)
    atomic_write(path, lambda handle: handle.write(text.encode()))
    return path


def load_thresholds(run_dir: str | Path, checkpoint: str | Path, class_names: list[str]) -> np.ndarray | None:
    """The stored thresholds when they were chosen for exactly this checkpoint file and these classes."""
    path = Path(run_dir) / THRESHOLDS_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("classes") != list(class_names) or record.get("checkpoint_sha256") != file_digest(checkpoint):
        return None
    return np.asarray(record["thresholds"], dtype=np.float64)

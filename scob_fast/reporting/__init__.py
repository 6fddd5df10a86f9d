"""What a run reports beyond its log rows: the observers the training run attaches to the loop
(per-class results and plots, TensorBoard, progress settings), prediction explanations and the
per-class thresholds `python -m scob_fast.predict` uses.

Kept import-light: scob_fast.config imports `reporting.options`, which runs this file first, so
everything heavier is imported inside the functions."""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("scob_fast.reporting")


def build_diagnostics(config, run_dir, method, train_set, observed, observers: list):
    """The TrainingDiagnostics observer of this run (None with --no-diagnostics); reads the dataset's
    object masks in the training rows' order when its registry entry has them."""
    if not config.report.diagnostics:
        return None
    import os

    import numpy as np

    from scob_fast.data.registry import dataset_spec

    from .diagnostics import TrainingDiagnostics
    from .observers import TensorBoardObserver
    maps = None
    loader = dataset_spec(config.data.dataset).object_masks
    if loader is not None:
        by_name = loader(train_set.root, "train")
        maps = np.stack([by_name[os.path.basename(p)] for p in train_set.image_paths])
    board = next((o for o in observers if isinstance(o, TensorBoardObserver)), None)
    return TrainingDiagnostics(getattr(run_dir, "path", run_dir), method, train_set.labels, observed, maps, board,
                               plots=config.report.plots)


def build_observers(config, run_dir, class_names: list[str]) -> list:
    """The observers (scob_fast.engine.trainer.Observer) for this run."""
    from .observers import PerClassReport, ProgressSettings, TensorBoardObserver, tensorboard_available
    r = config.report
    path = Path(getattr(run_dir, "path", run_dir))
    observers = [ProgressSettings(r.progress, r.progress_percent, r.progress_seconds),
                 PerClassReport(path, class_names, threshold=r.threshold, plots=r.plots)]
    if r.tensorboard:
        reason = tensorboard_available()
        if reason is None:
            observers.append(TensorBoardObserver(path / "tensorboard", empty_class=config.run.map_empty_class,
                                                 ap=config.run.ap))
        else:
            log.info("TensorBoard logging off: the tensorboard package is not usable here (%s); "
                     "pip install tensorboard, or pass --no-tensorboard", reason)
    return observers

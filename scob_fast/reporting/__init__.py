"""What a run reports beyond its log rows: the observers the training run attaches to the loop
(per-class results and plots, TensorBoard, progress settings), prediction explanations and the
per-class thresholds `python -m scob_fast.predict` uses.

Kept import-light: scob_fast.config imports `reporting.options`, which runs this file first, so
everything heavier is imported inside the functions."""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("scob_fast.reporting")


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
            observers.append(TensorBoardObserver(path / "tensorboard", empty_class=config.run.map_empty_class))
        else:
            log.info("TensorBoard logging off: the tensorboard package is not usable here (%s); "
                     "pip install tensorboard, or pass --no-tensorboard", reason)
    return observers

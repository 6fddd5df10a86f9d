"""Scob's options (flags generated from this dataclass; defaults are the public code's)."""
from __future__ import annotations

from dataclasses import dataclass

from scob_fast.cli_options import option


@dataclass(frozen=True)
class ScobConfig:
    engine: str = option("fast", "fast: one backbone pass per view, fused kernels; reference: the published "
                         "procedure pass for pass", choices=("fast", "reference"))
    lambda_cl: float = option(0.1, "contrastive loss weight")
    temperature: float = option(1.0, "contrastive temperature")
    ema_alpha: float = option(0.999, "momentum heads' EMA decay")
    published_ema: bool = option(False, "reproduce the public code's EMA, which never moves the momentum heads")
    bank_size: int = option(2, "momentum features stored per class")
    cam_threshold: float = option(0.5, "CAM keep threshold")
    soft_correlation: bool = option(False, "weights from the raw correlation instead of the published hard (==1) one")

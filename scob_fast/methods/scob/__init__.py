"""Scob (IJCV 2023): the method, its options, and the parts only it uses (Grad-CAM++ keep masks,
class correlation, prototype bank, per-phase timer)."""
from .config import ScobConfig
from .losses import scob_contrastive_loss, scob_supervised_loss
from .method import Scob

__all__ = ["Scob", "ScobConfig", "scob_contrastive_loss", "scob_supervised_loss"]

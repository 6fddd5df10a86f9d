"""Scob (IJCV 2023): the method, its options, and the parts only it uses (Grad-CAM++ keep masks as
the public code computes them, class correlation, prototype bank, when the fast engine may share its
clean backbone pass, per-phase timer)."""
from .config import ScobConfig
from .losses import scob_contrastive_loss, scob_supervised_loss
from .engine_choice import shared_clean_pass_valid
from .method import Scob

__all__ = ["Scob", "ScobConfig", "scob_contrastive_loss", "scob_supervised_loss", "shared_clean_pass_valid"]

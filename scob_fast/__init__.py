"""scob_fast: multi-label recognition from incomplete labels (Scob, SST, SADCL and baselines)."""
from __future__ import annotations

__version__ = "0.1.0"

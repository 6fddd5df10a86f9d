"""Loads the compiled extension scob_fast._C once, and says why when it cannot."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

# The build commands that CI runs from a clean clone (.ci/run): recommend nothing else.
BUILD_HINT = ("bash scripts/setup.sh (from a checkout), or in your environment: "
              "pip install 'setuptools<80' wheel && python setup.py develop")


@functools.lru_cache(maxsize=None)
def load_error() -> Optional[str]:
    """None when scob_fast._C imported (its ops are then registered under torch.ops.scob_fast)."""
    try:
        import torch  # noqa: F401  (the extension links against torch's libraries)
        from scob_fast import _C  # noqa: F401
    except ImportError as exc:
        return f"scob_fast._C is not built ({exc}); build it with: {BUILD_HINT}"
    return None


def stale_sources() -> list[str]:
    """In a source checkout, the C++/CUDA sources changed after scob_fast._C was built (empty when
    the extension is current, missing, or installed without its sources)."""
    if load_error():
        return []
    from scob_fast import _C
    built = Path(_C.__file__).stat().st_mtime
    csrc = Path(__file__).resolve().parent.parent / "csrc"
    if not csrc.is_dir():
        return []
    return sorted(str(p.relative_to(csrc.parent)) for p in csrc.rglob("*")
                  if p.suffix in (".cpp", ".cu", ".h", ".cuh") and p.stat().st_mtime > built)


def cpp_available() -> bool:
    return load_error() is None


def build_info() -> dict:
    if load_error():
        return {"built": False, "error": load_error()}
    from scob_fast import _C
    return {"built": True, **_C.build_info()}

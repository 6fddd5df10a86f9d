"""Loads the compiled extension scob_fast._C once, and says why when it cannot."""
from __future__ import annotations

import functools
from typing import Optional


@functools.lru_cache(maxsize=None)
def load_error() -> Optional[str]:
    """None when scob_fast._C imported (its ops are then registered under torch.ops.scob_fast)."""
    try:
        import torch  # noqa: F401  (the extension links against torch's libraries)
        from scob_fast import _C  # noqa: F401
    except ImportError as exc:
        return (f"scob_fast._C is not built ({exc}); run `python setup.py develop` "
                "or `pip install -e . --no-build-isolation`")
    return None


def cpp_available() -> bool:
    return load_error() is None


def build_info() -> dict:
    if load_error():
        return {"built": False, "error": load_error()}
    from scob_fast import _C
    return {"built": True, **_C.build_info()}

"""Every SCOB_FAST_* environment variable (and Triton's TRITON_INTERPRET), parsed in one place.

This module imports nothing heavy: setup.py loads it by path before torch is importable.
"""
from __future__ import annotations

import os
from pathlib import Path

# name -> one-line meaning; the README's table is written from this.
VARIABLES = {
    "SCOB_FAST_BACKEND": "force one backend for every op (cpp, triton, cuda, reference)",
    "SCOB_FAST_MASKED_ATTENTION_BACKEND": "force the masked_attention backend",
    "SCOB_FAST_LABEL_CONTRASTIVE_BACKEND": "force the label_contrastive_loss backend",
    "SCOB_FAST_HASH_DROPOUT_BACKEND": "force the hash_dropout backend (cpp, reference); SCOB_FAST_BACKEND "
                                      "applies to it only when it names one of those",
    "SCOB_FAST_BUILD_CUDA": "setup.py: 1 forces the CUDA sources into the build, 0 skips them (default: auto)",
    "SCOB_FAST_TORCH_PIP_ARGS": "scripts/setup.sh: extra pip arguments for the torch install (e.g. a CPU wheel index)",
    "SCOB_FAST_CACHE_DIR": "where generated data (the demo dataset) is cached (default ~/.cache/scob_fast)",
    "SCOB_FAST_MAX_BAD_IMAGE_FRACTION": "data loaders stop when more than this fraction of an epoch's images fail to load (default 0.01)",
    "SCOB_FAST_CPU_BF16": "--amp on CPU: unset runs bfloat16 autocast only where the CPU has bfloat16 instructions "
                          "(avx512_bf16, amx_bf16, Arm bf16) and float32 elsewhere; 1 forces bfloat16 (emulated there, "
                          "slower), 0 forces float32",
    "TRITON_INTERPRET": "Triton's own switch: 1, true, yes, on or y (any case) runs Triton kernels on its CPU "
                        "interpreter, and the triton backends then take CPU tensors (the tests set it)",
}

_FALSE = {"0", "false", "no", "off", ""}
_TRUE = {"1", "true", "yes", "on"}
_TRITON_TRUE = _TRUE | {"y"}


def _get(name: str) -> str | None:
    value = os.environ.get(name)
    return value.strip() if value is not None else None


def flag(name: str) -> bool | None:
    """Tri-state boolean: None when unset, else True/False; anything else is an error naming the variable."""
    value = _get(name)
    if value is None:
        return None
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ValueError(f"{name}={value!r}: expected one of 0/1/true/false/yes/no/on/off")


def forced_backend(op_name: str) -> str | None:
    """The backend forced for `op_name` by SCOB_FAST_<OP>_BACKEND, else by SCOB_FAST_BACKEND."""
    specific = _get(f"SCOB_FAST_{op_name.upper()}_BACKEND")
    if specific:
        return specific.lower()
    general = _get("SCOB_FAST_BACKEND")
    return general.lower() if general else None


def triton_interpreting() -> bool:
    """Whether Triton runs its kernels on the CPU interpreter (TRITON_INTERPRET).

    Read with Triton's own rule (its knobs.runtime.interpret: the value, unstripped, is one of
    1/true/yes/on/y in any case) so that a backend never accepts CPU tensors that Triton would then
    try to launch on a GPU, nor refuses them while Triton is interpreting.
    """
    return os.environ.get("TRITON_INTERPRET", "").lower() in _TRITON_TRUE


def build_cuda() -> bool | None:
    return flag("SCOB_FAST_BUILD_CUDA")


def cpu_bf16() -> bool | None:
    """SCOB_FAST_CPU_BF16: None = decide from the CPU (engine/amp.py), True / False = forced."""
    return flag("SCOB_FAST_CPU_BF16")


def cache_dir() -> Path:
    value = _get("SCOB_FAST_CACHE_DIR")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "scob_fast"


def max_bad_image_fraction(default: float) -> float:
    value = _get("SCOB_FAST_MAX_BAD_IMAGE_FRACTION")
    if not value:
        return default
    try:
        fraction = float(value)
    except ValueError:
        fraction = -1.0
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"SCOB_FAST_MAX_BAD_IMAGE_FRACTION={value!r}: expected a number in [0, 1]")
    return fraction

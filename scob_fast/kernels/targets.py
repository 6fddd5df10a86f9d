"""The GPU targets the Triton kernels are configured for, and which one a launch is on.

Every kernel module picks its block sizes, num_warps and num_stages through one selection function
of (target, dtype, ...); the launchers call it with `config_target(arch_of(device))`, and
scripts/aot_compile_check.py calls it with each target below explicitly, compiles what it returns
for that target without a GPU, and fails on a register spill or on shared memory above the limit.
This module imports neither torch nor triton at import time.
"""
from __future__ import annotations

import functools
from typing import Optional

# Shared memory one block may opt in to, in bytes, per compute capability: the row "Maximum amount of
# shared memory per thread block" of the CUDA C++ Programming Guide's technical-specifications table
# (https://docs.nvidia.com/cuda/cuda-programming-guide/05-appendices/compute-capabilities.html,
# Table 31; the 8.x text of the same guide: "allows a single thread block to address up to 99 KB" on
# 8.6/8.9). Triton launches with dynamic shared memory and raises OutOfResources when a kernel's
# metadata.shared exceeds the device's CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
# (triton/compiler/compiler.py, CompiledKernel._init_handles; triton/backends/nvidia/driver.c).
SHARED_MEMORY_PER_BLOCK = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
# 32-bit registers one block may use on all four (same table, "Maximum number of 32-bit registers per
# thread block"), and one thread. Every GPU launch passes maxnreg=REGISTERS_PER_THREAD (PTX .maxnreg):
# given only the block size (.reqntid), ptxas sometimes budgets 32 or 128 registers per thread and
# spills rather than use the 255 it may (seen with Triton 3.7's ptxas 12.8: a 64 x 16 float32 tile
# "Used 128 registers" with 16 B of spills, 216 registers and none with .maxnreg 255).
REGISTERS_PER_BLOCK = 64 * 1024
REGISTERS_PER_THREAD = 255
TARGETS = tuple(SHARED_MEMORY_PER_BLOCK)
# A device that is none of the above uses the configurations of the target with the least shared
# memory: they are not AOT-checked there (Triton says OutOfResources at launch if one does not fit).
FALLBACK_TARGET = 86


@functools.lru_cache(maxsize=None)
def _cuda_arch(index: int) -> int:
    import torch
    major, minor = torch.cuda.get_device_capability(index)
    return 10 * major + minor


def arch_of(device) -> Optional[int]:
    """Compute capability (10 * major + minor) of a CUDA device; None for any other device (the
    Triton interpreter runs on CPU tensors)."""
    if device.type != "cuda":
        return None
    import torch
    return _cuda_arch(device.index if device.index is not None else torch.cuda.current_device())


def config_target(arch: Optional[int]) -> Optional[int]:
    """The target of TARGETS whose configurations a device of compute capability `arch` launches."""
    if arch is None:
        return None
    return arch if arch in SHARED_MEMORY_PER_BLOCK else FALLBACK_TARGET

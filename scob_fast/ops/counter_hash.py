"""The counter hash behind every seeded dropout of the ops (reference of csrc/common/counter_hash.h
and of the Triton kernels' copy): element `counter` survives when
mix32(mix32(hi32(counter) + seed) ^ lo32(counter)) >= p * 2^32, mix32 the "lowbias32" finaliser.
The same seed gives the same mask in every backend, so backward recomputes it instead of storing it."""
from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF


def mix32(x: torch.Tensor) -> torch.Tensor:
    # lowbias32 on uint32 values held in int64; products wrap mod 2^64, whose low 32 bits are exact.
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & MASK32
    return x ^ (x >> 16)


def keep_mask(numel: int, p: float, seed: int, device=None) -> torch.Tensor:
    """bool [numel]: which of the counters 0 .. numel - 1 survive dropout with probability p."""
    counter = torch.arange(numel, dtype=torch.int64, device=device)
    bits = mix32(mix32(((counter >> 32) + (int(seed) & MASK32)) & MASK32) ^ (counter & MASK32))
    threshold = min(int(p * 4294967296.0), MASK32)
    return bits >= threshold

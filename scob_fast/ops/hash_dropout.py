"""Dropout whose mask is a counter hash of each element's flat index and a seed.

    out = hash_dropout(x, p, seed, backend=None)

out[i] = x[i] / (1 - p) where the hash of (i, seed) keeps element i (probability 1 - p), else 0,
with i the row-major index of x (scob_fast.ops.counter_hash, the hash the attention op's dropout
uses). The distribution is torch's dropout (each element dropped independently with probability p,
survivors scaled by 1 / (1 - p)); the random stream is not torch's. The same seed gives the same
mask in every backend, and the backward recomputes the mask instead of keeping it.

Why: on the CPU torch's dropout draws one mt19937 number per element. In the Scob heads' training
step at the demo's 128 px (bench/train_step.py's fast engine under torch.profiler, one thread, with
other jobs on the machine) its bernoulli_ calls were 7.7 % of the step, 2.3 ms per [16, 64, 512]
activation; bench/hash_dropout.py times this op against torch's dropout.

Backends (`backend=` or SCOB_FAST_HASH_DROPOUT_BACKEND force one, and so does SCOB_FAST_BACKEND when
it names one of these; `scob_fast.ops.last_backend("hash_dropout")` says which ran):
  cpp        C++ CPU kernel (csrc/hash_dropout), floating CPU tensors
  reference  pure PyTorch (`hash_dropout_reference`), any device (the GPU path: a handful of
             element-wise integer kernels)
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from scob_fast import _ext, env
from scob_fast.ops._dispatch import Backend, Dispatcher
from scob_fast.ops.counter_hash import MASK32, keep_mask

OP_NAME = "hash_dropout"


# --------------------------------------------------------------------------------------------
# Reference (the definition of the op's semantics)

def hash_dropout_reference(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    keep = keep_mask(x.numel(), p, seed, x.device).view(x.shape)
    return torch.where(keep, x * (1.0 / (1.0 - p)), torch.zeros((), dtype=x.dtype, device=x.device))


# --------------------------------------------------------------------------------------------
# The C++ op (csrc/hash_dropout): fake kernel and autograd. It is linear in x with one mask, so the
# gradient is the same op on the incoming gradient with the same seed.

_REGISTERED = False


def _register() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    op = "scob_fast::hash_dropout"

    @torch.library.register_fake(op)
    def _fake(x, p, seed):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    def _setup_context(ctx, inputs, output):
        _, ctx.p, ctx.seed = inputs

    def _backward(ctx, grad):
        return torch.ops.scob_fast.hash_dropout(grad, ctx.p, ctx.seed), None, None

    torch.library.register_autograd(op, _backward, setup_context=_setup_context)
    _REGISTERED = True


def _cpp_missing() -> Optional[str]:
    missing = _ext.load_error()
    if missing:
        return missing
    if not hasattr(torch.ops.scob_fast, "hash_dropout"):
        return "scob_fast._C predates the hash_dropout kernel; rebuild it (" + _ext.BUILD_HINT + ")"
    _register()
    return None


def _cpp_refuses(x, *_) -> Optional[str]:
    if x.device.type != "cpu":
        return f"needs CPU tensors (got {x.device.type})"
    if not x.is_floating_point():
        return f"dtype {x.dtype} is not floating"
    return None


def _forced() -> str:
    # SCOB_FAST_BACKEND=triton (or cuda) forces the attention and contrastive ops; this op has
    # neither backend, so there it picks its own.
    forced = env.forced_backend(OP_NAME)
    specific = os.environ.get(f"SCOB_FAST_{OP_NAME.upper()}_BACKEND", "").strip()
    return forced if forced in ("cpp", "reference") or specific else "auto"


DISPATCHER = Dispatcher(OP_NAME, [
    Backend("cpp", _cpp_refuses, _cpp_missing),
    Backend("reference", lambda *inputs: None),
])


def hash_dropout(x: torch.Tensor, p: float, seed: int, backend: Optional[str] = None) -> torch.Tensor:
    """Dropout of x with probability p and the counter-hash mask of `seed`; see the module docstring."""
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"hash_dropout: argument 'p' must be in [0, 1), got {p}")
    if not x.is_floating_point():
        raise ValueError(f"hash_dropout: argument 'x' must be a floating tensor, got {x.dtype}")
    seed = int(seed) & MASK32
    chosen = DISPATCHER.select(backend or _forced(), x)
    if chosen == "reference":
        return hash_dropout_reference(x, p, seed)
    return torch.ops.scob_fast.hash_dropout(x, p, seed)


class HashDropout(torch.nn.Module):
    """nn.Dropout's interface (p; identity in eval mode or at p = 0) with the hash mask; each training
    call draws its seed from torch's global CPU generator, so torch.manual_seed makes runs repeatable.
    No parameters or buffers: state dicts are the same as with nn.Dropout."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"HashDropout: p must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        seed = int(torch.randint(0, 2 ** 31 - 1, (1,)).item())
        return hash_dropout(x, self.p, seed)

    def extra_repr(self) -> str:
        return f"p={self.p}"


__all__ = ["DISPATCHER", "HashDropout", "hash_dropout", "hash_dropout_reference"]

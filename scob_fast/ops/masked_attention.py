"""Class-activation-masked attention: attention over only the keys each sample keeps.

    out = masked_attention(q, k, v, key_keep, scale=None, dropout_p=0.0, seed=0, backend=None)

q, k, v: [B, H, L, D]; key_keep: bool [B, L] (True = attend to that key); out: [B, H, L, D]. Every
query position gets an output: row i of sample b is softmax over the kept keys of scale * q_i . k_j,
times v (scale defaults to D ** -0.5). **A sample that keeps no key at all gets zero output and zero
gradients** (nn.MultiheadAttention with key_padding_mask would give NaN there).

Attention-weight dropout (`dropout_p` > 0, training) drops weight (b, h, i, j) when a hash of its flat
index and `seed` falls below p (see `dropout_keep_mask`), and scales survivors by 1 / (1 - p): the same
seed gives the same mask in every backend and in the reference, and the backward recomputes it
instead of storing an L x L mask.

Backends (priority order; `backend=` or SCOB_FAST_MASKED_ATTENTION_BACKEND / SCOB_FAST_BACKEND force one,
`scob_fast.ops.last_backend("masked_attention")` says which ran):
  cpp        C++ CPU kernel (csrc/masked_attention), float32 / bfloat16 / float64, CPU tensors
  triton     Triton kernel (scob_fast/kernels/masked_attention.py), CUDA tensors (or CPU under
             TRITON_INTERPRET=1)
  cuda       CUDA C++ kernel (csrc/masked_attention/*.cu), CUDA builds only
  reference  pure PyTorch (`masked_attention_reference`), materialises the B x H x L x L weights
  sdpa       torch's scaled_dot_product_attention with the boolean mask (what nn.MultiheadAttention
             with key_padding_mask runs), all-masked samples zeroed; its dropout is torch's own (same
             distribution, not the seeded pattern of the others). It is the attention of the
             "reference procedure + SDPA" row of bench/train_step.py. Chosen automatically only by
             the rule below, where it has no mask and no dropout, so its result is the op's.
The cpp, cuda and triton backends have their own backward kernels; all three are torch ops with the
same fake kernels (torch.compile) and autograd, registered by scob_fast/ops/_kernel_op.py.

Automatic choice, CPU: a forward-only call (no gradient will be recorded) with dropout_p = 0 that
masks no key runs torch's SDPA without a mask (`last_backend` says "sdpa") when it is float32 with
B*H*L*L*D below 2^21 multiply-adds (the custom op's fixed cost dominates and the C++ kernel has
nothing to skip), bfloat16 with head dim 64 or more, or float16 (which the C++ kernel does not run);
every other call follows the priority order. Measured on 2026-12-04 on this 2-core Zen 4 machine,
quiet, H = 8, calls interleaved (`python -m bench.masked_attention_rule`:
bench/results/masked_attention_rule.json, two threads, and masked_attention_rule_1thr.json, one),
the C++ kernel against SDPA: float32 0.60-0.76x below 2^21 (one thread 0.74-0.75x), 0.94-1.00x at
it, 1.04-1.18x above it (1.03-1.07x); bfloat16 1.15-1.53x at head dims 16 and 32 (1.05-1.54x), at
head dim 64 0.70-1.30x (one thread 0.80-1.04x) with 4-5x SDPA's peak memory, since it widens K and V
to float32 panels. An earlier rule sent every such call to SDPA (a quick run at commit 4d7c0c2 had
the kernel 0.78x at B = 8, L = 196 in float32). With a gradient the C++ forward+backward stays ahead,
and with masked keys the C++ kernel skips them (2.6x at keep 0.3, L = 784). While torch.compile
traces, the rule (which reads key_keep) is not applied.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from scob_fast import env
from scob_fast.ops._dispatch import Backend, Dispatcher
from scob_fast.ops._kernel_op import register_kernel_op, triton_missing
from scob_fast.ops.counter_hash import MASK32 as _MASK32, keep_mask

OP_NAME = "masked_attention"
_FLOAT_TYPES = (torch.float32, torch.bfloat16, torch.float64)


# --------------------------------------------------------------------------------------------
# Reference (the definition of the op's semantics)

def dropout_keep_mask(B: int, H: int, L: int, dropout_p: float, seed: int, device=None) -> torch.Tensor:
    """bool [B, H, L, L]: which attention weights survive dropout for this seed (all backends agree)."""
    return keep_mask(B * H * L * L, dropout_p, seed, device).view(B, H, L, L)


def masked_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_keep: torch.Tensor,
                               scale: Optional[float] = None, dropout_p: float = 0.0, seed: int = 0) -> torch.Tensor:
    """Dense masked softmax in float32 (float64 for float64 inputs); output in the input dtype."""
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    keeps_any = key_keep.any(dim=-1)
    # A sample that keeps nothing attends everywhere and is then multiplied by 0: zero output and
    # exactly zero gradients instead of the NaN of a softmax over -inf only.
    keep = key_keep | ~keeps_any[:, None]
    scores = torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)) * scale
    scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if dropout_p > 0.0:
        B, H, L, _ = q.shape
        weights = weights * dropout_keep_mask(B, H, L, dropout_p, seed, q.device) / (1.0 - dropout_p)
    out = torch.matmul(weights, v.to(acc)) * keeps_any[:, None, None, None]
    return out.to(q.dtype)


# --------------------------------------------------------------------------------------------
# Input checks (errors name the argument)

def _check_inputs(q, k, v, key_keep, dropout_p) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"masked_attention: argument '{name}' must be a Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"masked_attention: argument '{name}' must be 4-D [B, H, L, D], got shape {tuple(t.shape)}")
        if name != "q" and t.shape != q.shape:
            raise ValueError(f"masked_attention: argument '{name}' has shape {tuple(t.shape)}, q has {tuple(q.shape)}")
        if t.device != q.device:
            raise ValueError(f"masked_attention: argument '{name}' is on {t.device}, q is on {q.device}")
        if t.dtype != q.dtype:
            raise TypeError(f"masked_attention: argument '{name}' has dtype {t.dtype}, q has {q.dtype}")
        if not t.is_floating_point():
            raise TypeError(f"masked_attention: argument '{name}' must be floating point, got {t.dtype}")
    if not isinstance(key_keep, torch.Tensor) or key_keep.dtype != torch.bool:
        got = key_keep.dtype if isinstance(key_keep, torch.Tensor) else type(key_keep).__name__
        raise TypeError(f"masked_attention: argument 'key_keep' must be a bool tensor, got {got}")
    B, _, L, _ = q.shape
    if tuple(key_keep.shape) != (B, L):
        raise ValueError(f"masked_attention: argument 'key_keep' must have shape [B, L] = [{B}, {L}], "
                         f"got {tuple(key_keep.shape)}")
    if key_keep.device != q.device:
        raise ValueError(f"masked_attention: argument 'key_keep' is on {key_keep.device}, q is on {q.device}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"masked_attention: argument 'dropout_p' must be in [0, 1), got {dropout_p}")


def _kernel_ready(t: torch.Tensor) -> torch.Tensor:
    # The kernels read rows with a unit stride in D and any stride over B, H, L (so the [B, L, H, D]
    # projections of MaskedMultiheadAttention are used without a copy).
    if (t.shape[-1] > 1 and t.stride(-1) != 1) or (t.shape[2] > 1 and t.stride(2) < t.shape[3]):
        return t.contiguous()
    return t


# --------------------------------------------------------------------------------------------
# Kernel ops: scob_fast::masked_attention_{fwd,bwd} (C++: CPU, and CUDA in CUDA builds) and
# scob_fast::masked_attention_triton_{fwd,bwd} (scob_fast/kernels/masked_attention.py), both set up by
# scob_fast/ops/_kernel_op.py

FORWARD_SCHEMA = ("(Tensor q, Tensor k, Tensor v, Tensor key_keep, float scale, float dropout_p, int seed) "
                  "-> (Tensor out, Tensor lse)")
BACKWARD_SCHEMA = ("(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor key_keep, Tensor out, Tensor lse, "
                   "float scale, float dropout_p, int seed) -> (Tensor grad_q, Tensor grad_k, Tensor grad_v)")


def _fake_forward(q, k, v, key_keep, scale, dropout_p, seed):
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    B, H, L, D = q.shape
    return q.new_empty((B, H, L, D)), q.new_empty((B, H, L), dtype=acc)


def _fake_backward(grad_out, q, k, v, key_keep, out, lse, scale, dropout_p, seed):
    return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, key_keep, scale, dropout_p, seed = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, key_keep, out, lse)
    ctx.scale, ctx.dropout_p, ctx.seed = scale, dropout_p, seed


def _backward(backward_op, ctx, grad_out, grad_lse):
    # lse is an auxiliary output saved for the backward; its gradient is ignored.
    q, k, v, key_keep, out, lse = ctx.saved_tensors
    grad_out = _kernel_ready(grad_out)
    dq, dk, dv = backward_op(grad_out, q, k, v, key_keep, out, lse, ctx.scale, ctx.dropout_p, ctx.seed)
    return dq, dk, dv, None, None, None, None


KERNEL = register_kernel_op(OP_NAME, forward_schema=FORWARD_SCHEMA, backward_schema=BACKWARD_SCHEMA,
                            fake_forward=_fake_forward, fake_backward=_fake_backward,
                            setup_context=_setup_context, backward=_backward)


# --------------------------------------------------------------------------------------------
# Backends and dispatch

def _cpp_refuses(q, k, v, key_keep) -> Optional[str]:
    if q.device.type != "cpu":
        return f"needs CPU tensors (got {q.device.type})"
    if q.dtype not in _FLOAT_TYPES:
        return f"dtype {q.dtype} not supported (float32, bfloat16, float64)"
    return None


def _triton_refuses(q, k, v, key_keep) -> Optional[str]:
    if q.device.type != "cuda" and not (q.device.type == "cpu" and env.triton_interpreting()):
        return f"needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got {q.device.type}"
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return f"dtype {q.dtype} not supported (float32, bfloat16, float16)"
    if q.shape[-1] > 256:
        return f"head dim D={q.shape[-1]} > 256"
    return None


def _cuda_installed() -> Optional[str]:
    missing = KERNEL.cpp_missing()
    if missing:
        return missing
    if not KERNEL.cuda:
        return "scob_fast._C was built without CUDA kernels (CPU torch or SCOB_FAST_BUILD_CUDA=0)"
    return None


def _cuda_refuses(q, k, v, key_keep) -> Optional[str]:
    if q.device.type != "cuda":
        return f"needs CUDA tensors (got {q.device.type})"
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return f"dtype {q.dtype} not supported (float32, bfloat16, float16)"
    if q.shape[-1] > 128:
        return f"head dim D={q.shape[-1]} > 128"
    return None


# float32 below this many multiply-adds per score product (B*H*L*L*D): the op's fixed cost loses to SDPA's.
SDPA_RULE_MAX_WORK = 2 ** 21
# bfloat16 from this head dim on: SDPA's bfloat16 kernel is level or ahead, at a quarter of the memory
# (the C++ kernel widens K and V to float32 panels).
SDPA_RULE_BF16_MIN_HEAD_DIM = 64


def sdpa_rule_applies(q, k, v, key_keep, dropout_p: float) -> bool:
    """The automatic CPU rule of the module docstring: forward-only, no dropout, no key masked, and
    float32 below SDPA_RULE_MAX_WORK, bfloat16 from SDPA_RULE_BF16_MIN_HEAD_DIM on, or float16 (which
    the C++ kernel does not run)."""
    if q.device.type != "cpu" or dropout_p > 0.0 or key_keep.numel() == 0:
        return False
    if q.dtype == torch.float32:
        if q.numel() * k.shape[2] >= SDPA_RULE_MAX_WORK:
            return False
    elif q.dtype == torch.bfloat16:
        if q.shape[-1] < SDPA_RULE_BF16_MIN_HEAD_DIM:
            return False
    elif q.dtype != torch.float16:
        return False   # float64: the C++ kernel's exact path
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return False
    if torch.compiler.is_compiling():
        return False   # reading key_keep would be data-dependent control flow in the graph
    return bool(key_keep.all())


def masked_attention_sdpa(q, k, v, key_keep, scale: float, dropout_p: float = 0.0) -> torch.Tensor:
    kept_any = key_keep.any(dim=1)[:, None, None, None]
    # A sample without any kept key attends everywhere (no NaN) and is then zeroed, output and gradient.
    mask = key_keep[:, None, None, :] | ~kept_any
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    return out * kept_any.to(out.dtype)


DISPATCHER = Dispatcher(OP_NAME, [
    Backend("cpp", _cpp_refuses, KERNEL.cpp_missing),
    Backend("triton", _triton_refuses, triton_missing),
    Backend("cuda", _cuda_refuses, _cuda_installed),
    Backend("reference", lambda *inputs: None),
    Backend("sdpa", lambda *inputs: None),   # after reference: only when forced
])


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_keep: torch.Tensor,
                     scale: Optional[float] = None, dropout_p: float = 0.0, seed: int = 0,
                     backend: Optional[str] = None) -> torch.Tensor:
    """Attention of every query over the keys its sample keeps; see the module docstring."""
    _check_inputs(q, k, v, key_keep, dropout_p)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"masked_attention: argument 'scale' must be finite, got {scale}")
    automatic = (backend or env.forced_backend(OP_NAME) or "auto").lower() == "auto"
    if automatic and sdpa_rule_applies(q, k, v, key_keep, dropout_p):
        DISPATCHER.select("sdpa", q, k, v, key_keep)   # records last_backend = "sdpa"
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)
    chosen = DISPATCHER.select(backend, q, k, v, key_keep)
    if chosen == "reference":
        return masked_attention_reference(q, k, v, key_keep, scale, dropout_p, seed)
    if chosen == "sdpa":
        return masked_attention_sdpa(q, k, v, key_keep, scale, dropout_p)
    q, k, v = _kernel_ready(q), _kernel_ready(k), _kernel_ready(v)
    dropout_p, seed = float(dropout_p), int(seed) & _MASK32
    # cpp and cuda are the same C++ op, dispatched on the tensors' device
    out, _ = KERNEL.forward(chosen)(q, k, v, key_keep, scale, dropout_p, seed)
    return out


__all__ = ["DISPATCHER", "masked_attention", "masked_attention_reference", "masked_attention_sdpa",
           "dropout_keep_mask", "sdpa_rule_applies", "SDPA_RULE_MAX_WORK",
           "SDPA_RULE_BF16_MIN_HEAD_DIM"]

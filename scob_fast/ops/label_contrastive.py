"""Batched label-level contrastive loss: one op for SupCon, SADCL and Scob, never N x M in memory.

For anchors a_i [N, D] and candidates c_j [M, D] (both L2-normalised; the op does not normalise), with
integer labels y_i, y_j and s_ij = <a_i, c_j>, each anchor's loss is

    loss_i = log( sum_{j allowed} exp(g_ij) + exp(e_i') ) - ( sum_{p in P_i} h_ip + e_i' ) / |P_i|

    weight_mode="exp"   (SupCon-style, weights on the exponentials):
        h_ij = (s_ij + shift) / t,   g_ij = h_ij + log W[y_i, y_j]   (w * exp(h) = exp(h + log w))
    weight_mode="logit" (Scob's published form, weights on the logits):
        g_ij = h_ij = (s_ij + shift) * W[y_i, y_j] / t

- allowed j: candidate label >= 0 (label -1 marks an empty/ignored candidate), and j != i when
  `exclude_self` (the default when candidates are the anchors themselves);
- P_i: with positives="label", allowed candidates with the anchor's label, plus the extra positive;
  with positives="extra_only", the extra positive alone (same-class candidates stay in the
  denominator, which is Scob's InfoNCE with target index 0);
- e_i' = (e_i + shift) / t is the optional extra positive logit (Scob's momentum positive), which is
  in the denominator and counted once in P_i; absent, its terms vanish;
- an anchor with label -1, or with no positive, is excluded: its loss is 0, it gets no gradient,
  it is left out of the mean, and `return_counts=True` reports it as count 0 (never NaN).
Reductions: "mean" over anchors that are not excluded (0 when all are), "sum", "none" ([N]).

How the methods call it:
- SupCon (Khosla et al. 2020, L_out) / SADCL sample-to-sample:
      label_contrastive_loss(features, labels, temperature=0.2)
- SADCL prototype-to-sample (gradient to the prototypes too):
      label_contrastive_loss(label_features, classes, prototypes, torch.arange(C), temperature=0.07)
- Scob (momentum positive, prototype negatives weighted 1 - R^2 on the logit, +1 shift):
      label_contrastive_loss(z, y, protos, proto_labels, temperature=t, class_weights=1 - R**2,
                             extra_positive=zk, positives="extra_only", weight_mode="logit",
                             logit_shift=1.0)
  (proto_labels = -1 for empty bank slots; extra_positive may be the momentum features [N, D],
  whose dot with each anchor is taken here, or that dot itself [N]; either gets its gradient.)

Backends (first that can run wins; SCOB_FAST_LABEL_CONTRASTIVE_BACKEND or `backend=` forces one):
cpp (C++ CPU: MKL GEMM tiles + OpenMP online log-sum-exp), triton (fused GPU kernels), cuda (cuBLAS
tiles + CUDA epilogues), reference (dense PyTorch, the definition), dense (the same formula in a few
N x M PyTorch passes, autograd backward; CPU). Automatic choice: on CPU `dense_rule` picks dense while
2^14 <= N x M <= 2^20 and a backward follows or the C++ kernel's 256-anchor blocks cannot occupy
every thread; otherwise the priority order. `last_backend("label_contrastive")` says which ran.
Gradients flow to anchors, candidates and the extra positive; class weights are treated as
constants (they are a statistic). Kernel backends and dense compute in float32 (float64 for float64
inputs) and return a float32 loss for bfloat16/float16 inputs.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from scob_fast import env
from scob_fast.ops._dispatch import Backend, Dispatcher
from scob_fast.ops._kernel_op import register_kernel_op, triton_missing

__all__ = ["label_contrastive_loss", "label_contrastive_loss_reference", "DISPATCHER", "dense_rule"]

OP_NAME = "label_contrastive"
WEIGHT_MODES = ("exp", "logit")
POSITIVES = ("label", "extra_only")
REDUCTIONS = ("mean", "sum", "none")
FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


# ----------------------------------------------------------------------------------------------
# Argument checks shared by the op and the reference
# ----------------------------------------------------------------------------------------------

def _check_features(name: str, t, rows: Optional[int], dim: Optional[int]) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"label_contrastive_loss: {name} must be a Tensor, got {type(t).__name__}")
    if t.dim() != 2:
        raise ValueError(f"label_contrastive_loss: {name} must be 2-D [rows, D], got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"label_contrastive_loss: {name} must be float32, float64, bfloat16 or float16, got {t.dtype}")
    if rows is not None and t.shape[0] != rows:
        raise ValueError(f"label_contrastive_loss: {name} must have {rows} rows, got shape {tuple(t.shape)}")
    if dim is not None and t.shape[1] != dim:
        raise ValueError(f"label_contrastive_loss: {name} must be [*, {dim}] (the anchors' D), got shape {tuple(t.shape)}")


def _check_labels(name: str, t, size: int, device: torch.device) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"label_contrastive_loss: {name} must be a Tensor, got {type(t).__name__}")
    if t.dim() != 1 or t.shape[0] != size:
        raise ValueError(f"label_contrastive_loss: {name} must be [{size}], got shape {tuple(t.shape)}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"label_contrastive_loss: {name} must hold integer labels, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"label_contrastive_loss: {name} must be on {device} (the anchors' device), got {t.device}")


def _check_values(cond: Tensor, message: str) -> None:
    """Value checks that need the data: immediate on CPU, asynchronous (no sync) on accelerators."""
    if torch.compiler.is_compiling():
        return
    if cond.device.type == "cpu":
        if not bool(cond):
            raise ValueError(f"label_contrastive_loss: {message}")
    else:
        torch._assert_async(cond, f"label_contrastive_loss: {message}")


def _validate(anchors, anchor_labels, candidates, candidate_labels, temperature, class_weights, extra_positive,
              positives, weight_mode, reduction):
    """Checks every argument (errors name it) and returns (candidates, candidate_labels, self_mode)."""
    _check_features("anchors", anchors, None, None)
    n, d = anchors.shape
    device = anchors.device
    _check_labels("anchor_labels", anchor_labels, n, device)
    self_mode = candidates is None
    if self_mode:
        if candidate_labels is not None:
            raise ValueError("label_contrastive_loss: candidate_labels given without candidates")
        candidates, candidate_labels = anchors, anchor_labels
    else:
        _check_features("candidates", candidates, None, d)
        if candidates.dtype != anchors.dtype:
            raise TypeError(f"label_contrastive_loss: candidates must have the anchors' dtype {anchors.dtype}, "
                            f"got {candidates.dtype}")
        if candidates.device != device:
            raise ValueError(f"label_contrastive_loss: candidates must be on {device}, got {candidates.device}")
        if candidate_labels is None:
            raise ValueError("label_contrastive_loss: candidate_labels are required with candidates "
                             "(use -1 for candidates to ignore)")
        _check_labels("candidate_labels", candidate_labels, candidates.shape[0], device)
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature > 0:
        raise ValueError(f"label_contrastive_loss: temperature must be a number > 0, got {temperature!r}")
    if positives not in POSITIVES:
        raise ValueError(f"label_contrastive_loss: positives must be one of {POSITIVES}, got {positives!r}")
    if weight_mode not in WEIGHT_MODES:
        raise ValueError(f"label_contrastive_loss: weight_mode must be one of {WEIGHT_MODES}, got {weight_mode!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"label_contrastive_loss: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if positives == "extra_only" and extra_positive is None:
        raise ValueError("label_contrastive_loss: positives='extra_only' needs extra_positive")
    if extra_positive is not None:
        if not isinstance(extra_positive, Tensor) or not extra_positive.dtype.is_floating_point:
            raise TypeError("label_contrastive_loss: extra_positive must be a floating-point Tensor")
        if extra_positive.device != device:
            raise ValueError(f"label_contrastive_loss: extra_positive must be on {device}, got {extra_positive.device}")
        if tuple(extra_positive.shape) not in ((n,), (n, d)):
            raise ValueError(f"label_contrastive_loss: extra_positive must be [{n}] (logits) or [{n}, {d}] "
                             f"(features), got shape {tuple(extra_positive.shape)}")
    if class_weights is not None:
        if not isinstance(class_weights, Tensor) or not class_weights.dtype.is_floating_point:
            raise TypeError("label_contrastive_loss: class_weights must be a floating-point Tensor")
        if class_weights.dim() != 2 or class_weights.shape[0] != class_weights.shape[1]:
            raise ValueError(f"label_contrastive_loss: class_weights must be [C, C], got shape "
                             f"{tuple(class_weights.shape)}")
        if class_weights.device != device:
            raise ValueError(f"label_contrastive_loss: class_weights must be on {device}, got {class_weights.device}")
        num_classes = class_weights.shape[0]
        for name, labels in (("anchor_labels", anchor_labels), ("candidate_labels", candidate_labels)):
            if labels.numel():
                _check_values(labels.max() < num_classes,
                              f"{name} must be < C = {num_classes} (the size of class_weights)")
        if weight_mode == "exp" and class_weights.numel():
            _check_values(class_weights.min() >= 0, "class_weights must be >= 0 with weight_mode='exp'")
    return candidates, candidate_labels, self_mode


def _reduce(loss: Tensor, count: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    return total / (count > 0).sum().clamp(min=1).to(loss.dtype)


# ----------------------------------------------------------------------------------------------
# Reference: the definition, dense N x M in plain PyTorch
# ----------------------------------------------------------------------------------------------

def label_contrastive_loss_reference(anchors: Tensor, anchor_labels: Tensor, candidates: Optional[Tensor] = None,
                                     candidate_labels: Optional[Tensor] = None, *, temperature: float,
                                     class_weights: Optional[Tensor] = None, extra_positive: Optional[Tensor] = None,
                                     positives: str = "label", weight_mode: str = "exp", logit_shift: float = 0.0,
                                     exclude_self: Optional[bool] = None, reduction: str = "mean",
                                     return_counts: bool = False):
    """Dense pure-PyTorch definition of `label_contrastive_loss` (same arguments, computed in the inputs' dtype)."""
    candidates, candidate_labels, self_mode = _validate(
        anchors, anchor_labels, candidates, candidate_labels, temperature, class_weights, extra_positive,
        positives, weight_mode, reduction)
    exclude_self = self_mode if exclude_self is None else bool(exclude_self)
    y_a, y_c = anchor_labels.long(), candidate_labels.long()
    n, m = anchors.shape[0], candidates.shape[0]
    sims = anchors @ candidates.T
    ignored = y_a < 0
    allowed = (y_c >= 0)[None, :] & ~ignored[:, None]
    if exclude_self:
        diagonal = torch.arange(min(n, m), device=anchors.device)
        allowed[diagonal, diagonal] = False
    positive = allowed & (y_a[:, None] == y_c[None, :]) if positives == "label" else torch.zeros_like(allowed)

    z = (sims + logit_shift) / temperature
    if class_weights is not None:
        w = class_weights.detach().to(sims.dtype)[y_a.clamp(min=0)][:, y_c.clamp(min=0)]
    if weight_mode == "logit":
        g = h = z * w if class_weights is not None else z
    else:
        h = z
        g = z + w.log() if class_weights is not None else z
    g = g.masked_fill(~allowed, float("-inf"))
    numerator = torch.where(positive, h, torch.zeros_like(h)).sum(dim=1)
    count = positive.sum(dim=1)
    if extra_positive is not None:
        e = extra_positive if extra_positive.dim() == 1 else (anchors * extra_positive.to(anchors.dtype)).sum(dim=1)
        e = (e.to(sims.dtype) + logit_shift) / temperature
        g = torch.cat([e[:, None], g], dim=1)
        numerator = numerator + e
        count = count + (~ignored).long()
    valid = ~ignored & (count > 0)
    # Excluded rows may be all -inf; zero them so that their (unused) log-sum-exp has a finite gradient.
    g = g.masked_fill(~valid[:, None], 0.0)
    loss = torch.logsumexp(g, dim=1) - numerator / count.clamp(min=1).to(sims.dtype)
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    count = torch.where(valid, count, torch.zeros_like(count))
    out = _reduce(loss, count, reduction)
    return (out, count) if return_counts else out


# ----------------------------------------------------------------------------------------------
# Dense small-size path: the definition as few N x M passes of PyTorch as it takes, computed like the
# kernels (float32, float64 for float64 inputs); autograd gives the backward.
# ----------------------------------------------------------------------------------------------

def _logsumexp_rows(g: Tensor) -> Tensor:
    """log sum_j exp(g_ij) of each row; -inf for a row without a finite entry (no allowed candidate,
    or only weights of 0), whose gradient is then 0 rather than torch.logsumexp's NaN. No branch on
    the data, so torch.compile traces it whole."""
    if g.shape[1] == 0:   # no candidates at all
        return g.new_full(g.shape[:1], float("-inf")) + g.sum(dim=1)
    peak = g.detach().amax(dim=1, keepdim=True)
    peak = torch.where(torch.isfinite(peak), peak, 0.0)
    total = torch.exp(g - peak).sum(dim=1)
    alive = total > 0
    return torch.where(alive, torch.log(torch.where(alive, total, 1.0)) + peak.squeeze(1), float("-inf"))


def _dense_loss(anchors: Tensor, anchor_labels: Tensor, candidates: Tensor, candidate_labels: Tensor,
                class_weights: Optional[Tensor], extra_logit: Optional[Tensor], temperature: float,
                logit_shift: float, logit_form: bool, label_positives: bool,
                exclude_self: bool) -> tuple[Tensor, Tensor]:
    """(loss [N], count [N]) of the module docstring's formula, dense; candidates may be anchors (self mode)."""
    acc = _acc_dtype(anchors)
    a = anchors.to(acc)
    c = a if candidates is anchors else candidates.to(acc)
    y_a, y_c = anchor_labels.long(), candidate_labels.long()
    n = a.shape[0]
    inv_t = 1.0 / temperature
    z = torch.addmm(a.new_tensor(logit_shift * inv_t), a, c.T, alpha=inv_t)     # (s + shift) / t
    g = z
    if class_weights is not None:
        table = class_weights.to(acc)
        if logit_form:
            g = z * table[y_a.clamp(min=0)].index_select(1, y_c.clamp(min=0))
        else:   # w exp(z) = exp(z + log w); log 0 = -inf drops the term
            g = z + table.log()[y_a.clamp(min=0)].index_select(1, y_c.clamp(min=0))
    # Ignored candidates leave the denominator; added after any logit-form weight (0 x -inf = NaN).
    g = g + torch.where(y_c < 0, float("-inf"), 0.0).to(acc)
    if exclude_self:
        g.diagonal().fill_(float("-inf"))   # in place: the add above does not need g for its gradient
    lse = _logsumexp_rows(g)

    ignored = y_a < 0
    numerator = a.new_zeros(n)
    count = torch.zeros(n, dtype=torch.long, device=a.device)
    if label_positives:
        # same label as the anchor (so not ignored, when the anchor is not), not itself
        positive = y_a[:, None] == y_c[None, :]
        if exclude_self:
            positive.diagonal().fill_(False)
        count = positive.sum(dim=1)
        numerator = torch.where(positive, z, 0.0).sum(dim=1)
        if class_weights is not None and logit_form:   # positives share the anchor's label: W[y_i, y_i]
            numerator = numerator * table.diagonal()[y_a.clamp(min=0)]
    if extra_logit is not None:
        e = (extra_logit.to(acc) + logit_shift) * inv_t
        lse = torch.logaddexp(lse, e)
        numerator = numerator + e
        count = count + 1
    valid = ~ignored & (count > 0)
    loss = torch.where(valid, lse - numerator / count.clamp(min=1).to(acc), 0.0)
    return loss, torch.where(valid, count, 0)


# ----------------------------------------------------------------------------------------------
# Kernel ops: scob_fast::label_contrastive_{fwd,bwd} (C++: CPU, and CUDA in CUDA builds) and
# scob_fast::label_contrastive_triton_{fwd,bwd} (scob_fast/kernels/label_contrastive.py). Forward
# returns (loss [N], lse [N], count [N]): lse and count are what backward needs instead of the N x M
# probabilities.
# ----------------------------------------------------------------------------------------------

FORWARD_SCHEMA = (
    "(Tensor anchors, Tensor anchor_labels, Tensor candidates, Tensor candidate_labels, Tensor? class_weights, "
    "Tensor? extra_positive, float temperature, float logit_shift, bool logit_form, bool label_positives, "
    "bool exclude_self) -> (Tensor loss, Tensor lse, Tensor count)")
BACKWARD_SCHEMA = (
    "(Tensor grad_loss, Tensor anchors, Tensor anchor_labels, Tensor candidates, Tensor candidate_labels, "
    "Tensor? class_weights, Tensor? extra_positive, Tensor lse, Tensor count, float temperature, "
    "float logit_shift, bool logit_form, bool label_positives, bool exclude_self, bool need_anchors, "
    "bool need_candidates, bool need_extra) -> (Tensor grad_anchors, Tensor grad_candidates, Tensor grad_extra)")


def _acc_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _fake_forward(anchors, anchor_labels, candidates, candidate_labels, class_weights, extra_positive, temperature,
                  logit_shift, logit_form, label_positives, exclude_self):
    n = anchors.shape[0]
    acc = _acc_dtype(anchors)
    return anchors.new_empty(n, dtype=acc), anchors.new_empty(n, dtype=acc), anchors.new_empty(n, dtype=acc)


def _fake_backward(grad_loss, anchors, anchor_labels, candidates, candidate_labels, class_weights, extra_positive,
                   lse, count, temperature, logit_shift, logit_form, label_positives, exclude_self, need_anchors,
                   need_candidates, need_extra):
    grad_a = torch.empty_like(anchors) if need_anchors else anchors.new_empty(0)
    grad_c = torch.empty_like(candidates) if need_candidates else candidates.new_empty(0)
    grad_e = torch.empty_like(extra_positive) if (need_extra and extra_positive is not None) else anchors.new_empty(0)
    return grad_a, grad_c, grad_e


def _setup_context(ctx, inputs, output):
    (anchors, anchor_labels, candidates, candidate_labels, class_weights, extra_positive, temperature, logit_shift,
     logit_form, label_positives, exclude_self) = inputs
    _, lse, count = output
    ctx.save_for_backward(anchors, anchor_labels, candidates, candidate_labels, class_weights, extra_positive, lse,
                          count)
    ctx.settings = (temperature, logit_shift, logit_form, label_positives, exclude_self)
    ctx.mark_non_differentiable(lse, count)


def _backward(backward_op, ctx, grad_loss, grad_lse, grad_count):
    anchors, anchor_labels, candidates, candidate_labels, class_weights, extra_positive, lse, count = ctx.saved_tensors
    temperature, logit_shift, logit_form, label_positives, exclude_self = ctx.settings
    need = ctx.needs_input_grad
    need_extra = bool(need[5]) and extra_positive is not None
    if grad_loss is None or not (need[0] or need[2] or need_extra):
        return (None,) * 11
    grad_a, grad_c, grad_e = backward_op(
        grad_loss.contiguous(), anchors, anchor_labels, candidates, candidate_labels, class_weights, extra_positive,
        lse, count, temperature, logit_shift, logit_form, label_positives, exclude_self, bool(need[0]),
        bool(need[2]), need_extra)
    return (grad_a if need[0] else None, None, grad_c if need[2] else None, None, None,
            grad_e if need_extra else None) + (None,) * 5


KERNEL = register_kernel_op(OP_NAME, forward_schema=FORWARD_SCHEMA, backward_schema=BACKWARD_SCHEMA,
                            fake_forward=_fake_forward, fake_backward=_fake_backward,
                            setup_context=_setup_context, backward=_backward)


# ----------------------------------------------------------------------------------------------
# Backends and dispatch
# ----------------------------------------------------------------------------------------------

def _cuda_build_error() -> Optional[str]:
    missing = KERNEL.cpp_missing()
    if missing:
        return missing
    if not KERNEL.cuda:
        return "scob_fast._C was built without CUDA (CPU torch or no toolkit)"
    return None


def _refuse_cpp(*tensors) -> Optional[str]:
    if any(t.device.type != "cpu" for t in tensors):
        return "needs CPU tensors"
    return None


def _refuse_triton(*tensors) -> Optional[str]:
    device = tensors[0].device.type
    if device == "cpu" and not env.triton_interpreting():
        return "needs CUDA tensors (CPU tensors only under TRITON_INTERPRET=1)"
    if device not in ("cpu", "cuda"):
        return f"needs CUDA tensors, got {device}"
    if any(t.dtype == torch.float64 for t in tensors):
        return "float64 is not supported (use cpp, cuda or reference)"
    return None


def _refuse_cuda(*tensors) -> Optional[str]:
    if any(t.device.type != "cuda" for t in tensors):
        return "needs CUDA tensors"
    return None


# The dense path's size rule (measured with bench/label_contrastive.py and its --quick grid).
DENSE_MIN_PAIRS = 1 << 14      # N x M below: every path costs ~0.5 ms of op overhead; the kernel stays
DENSE_MAX_PAIRS = 1 << 20      # N x M above: the kernels' linear memory (dense holds a few 4 MiB N x M arrays)
KERNEL_BLOCK_ROWS = 256        # csrc/label_contrastive/label_contrastive_cpu.cpp kTileN: one thread per block


def dense_rule(n: int, m: int, threads: int, backward: bool) -> Optional[str]:
    """None when the automatic choice is the dense path, else why not. It runs while N x M is
    moderate and either a backward follows (the C++ backward recomputes the similarities, a fourth
    GEMM, to stay linear in memory; dense keeps them: forward+backward 1.1x-1.3x faster than the
    kernel at N = M = 512-1024, D = 256 and 1024, one thread, bench/label_contrastive.py --quick) or
    the C++ kernel, which gives each thread whole blocks of 256 anchors, would leave threads idle
    (N = 512 on 16 threads: 2 busy; the issue reports 0.48x the dense reference there)."""
    if n * m < DENSE_MIN_PAIRS:
        return f"N x M = {n * m} < {DENSE_MIN_PAIRS}: overhead-bound, the kernel's single call is as fast"
    if n * m > DENSE_MAX_PAIRS:
        return f"N x M = {n * m} > {DENSE_MAX_PAIRS} (the kernels never hold N x M)"
    blocks = -(-n // KERNEL_BLOCK_ROWS)
    if not backward and blocks >= threads:
        return (f"forward only, and the cpp kernel's {blocks} block(s) of {KERNEL_BLOCK_ROWS} anchors occupy all "
                f"{threads} thread(s)")
    return None


def _refuse_dense(*tensors) -> Optional[str]:
    if any(t.device.type != "cpu" for t in tensors):
        return "needs CPU tensors"
    return None


DISPATCHER = Dispatcher(OP_NAME, [
    Backend("cpp", _refuse_cpp, KERNEL.cpp_missing),
    Backend("triton", _refuse_triton, triton_missing),
    Backend("cuda", _refuse_cuda, _cuda_build_error),
    Backend("reference", lambda *tensors: None),
    Backend("dense", _refuse_dense),   # after reference: chosen automatically by `dense_rule` only
])


# ----------------------------------------------------------------------------------------------
# Public function
# ----------------------------------------------------------------------------------------------

def label_contrastive_loss(anchors: Tensor, anchor_labels: Tensor, candidates: Optional[Tensor] = None,
                           candidate_labels: Optional[Tensor] = None, *, temperature: float,
                           class_weights: Optional[Tensor] = None, extra_positive: Optional[Tensor] = None,
                           positives: str = "label", weight_mode: str = "exp", logit_shift: float = 0.0,
                           exclude_self: Optional[bool] = None, reduction: str = "mean", return_counts: bool = False,
                           backend: Optional[str] = None):
    """Label-level contrastive loss (see the module docstring for the exact formula).

    anchors [N, D], anchor_labels [N] (int, -1 = ignore the anchor); candidates [M, D] and
    candidate_labels [M] (-1 = ignore the candidate), default: the anchors themselves, each anchor
    excluded from its own candidates (SupCon). temperature > 0 (keyword, required).
    class_weights: [C, C] weights indexed [anchor label, candidate label] (constants, no gradient).
    extra_positive: [N] extra positive similarity per anchor, or [N, D] features whose dot product
    with each anchor is that similarity. positives: "label" or "extra_only". weight_mode: "exp"
    (w * exp(logit)) or "logit" (exp(w * logit), Scob). logit_shift: added to every similarity before
    the temperature (Scob: 1.0; it cancels in the "exp" form). exclude_self: candidate i is not a
    candidate of anchor i (default True exactly when candidates is None). reduction: "mean" over
    anchors with a positive, "sum" or "none". return_counts: also return the [N] positive counts
    (0 = excluded anchor). backend: force "cpp", "triton", "cuda", "reference" or "dense".
    Non-contiguous inputs are accepted (copied once). Returns a float32 loss for 16-bit inputs.
    """
    candidates, candidate_labels, self_mode = _validate(
        anchors, anchor_labels, candidates, candidate_labels, temperature, class_weights, extra_positive,
        positives, weight_mode, reduction)
    exclude_self = self_mode if exclude_self is None else bool(exclude_self)
    tensors = [anchors] if self_mode else [anchors, candidates]
    automatic = (backend or env.forced_backend(OP_NAME) or "auto").lower() == "auto"
    if automatic and _refuse_dense(*tensors) is None:
        differentiable = [anchors, candidates] + ([extra_positive] if extra_positive is not None else [])
        backward = torch.is_grad_enabled() and any(t.requires_grad for t in differentiable)
        if dense_rule(anchors.shape[0], candidates.shape[0], torch.get_num_threads(), backward) is None:
            backend = "dense"
    chosen = DISPATCHER.select(backend, *tensors)
    if chosen == "reference":
        return label_contrastive_loss_reference(
            anchors, anchor_labels, None if self_mode else candidates, None if self_mode else candidate_labels,
            temperature=temperature, class_weights=class_weights, extra_positive=extra_positive, positives=positives,
            weight_mode=weight_mode, logit_shift=logit_shift, exclude_self=exclude_self, reduction=reduction,
            return_counts=return_counts)

    acc = _acc_dtype(anchors)
    anchors = anchors.contiguous()
    candidates = anchors if self_mode else candidates.contiguous()
    candidate_labels = anchor_labels if self_mode else candidate_labels
    extra_logit = None
    if extra_positive is not None:
        if extra_positive.dim() == 2:
            # Autograd takes this dot's gradient to the anchors (and to the features, if they need one).
            extra_logit = (anchors.to(acc) * extra_positive.to(acc)).sum(dim=1)
        else:
            extra_logit = extra_positive.to(acc).contiguous()
    weights = class_weights.detach().contiguous() if class_weights is not None else None
    if chosen == "dense":
        loss, count = _dense_loss(anchors, anchor_labels, candidates, candidate_labels, weights, extra_logit,
                                  float(temperature), float(logit_shift), weight_mode == "logit",
                                  positives == "label", exclude_self)
        out = _reduce(loss, count, reduction)
        return (out, count) if return_counts else out
    # cpp and cuda are the same C++ op, dispatched on the tensors' device
    loss, _, count = KERNEL.forward(chosen)(
        anchors, anchor_labels, candidates, candidate_labels, weights, extra_logit, float(temperature),
        float(logit_shift), weight_mode == "logit", positives == "label", exclude_self)
    out = _reduce(loss, count, reduction)
    return (out, count.long()) if return_counts else out

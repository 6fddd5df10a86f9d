"""Triton bodies of the label-level contrastive loss (scob_fast.ops.label_contrastive holds the op).

Flash-attention-style streaming: a program owns BLOCK_N anchors, walks the candidates BLOCK_M at a
time, builds each similarity tile with tl.dot over BLOCK_D slices of D, and folds it into a running
log-sum-exp and positive sum per anchor. Backward recomputes every tile: one kernel owns anchor rows
and accumulates d anchors, another owns candidate rows and accumulates d candidates, so no program
writes to rows it does not own (no atomics). Memory: inputs, gradients and O(N) row state.

`forward` / `backward` take the arguments of torch.ops.scob_fast.label_contrastive_{fwd,bwd}: they are
the bodies of scob_fast::label_contrastive_triton_{fwd,bwd} (scob_fast/ops/_kernel_op.py), which share
the C++ ops' schemas, fake kernels and autograd. Block sizes, num_warps and num_stages come from
`launch_config` per GPU target and dtype, checked ahead of time by scripts/aot_compile_check.py.
"""
from __future__ import annotations

import re
from typing import Optional

import torch
import triton
import triton.language as tl

from scob_fast import env
from scob_fast.kernels import targets

@triton.jit
def _pair_terms(s, offs_n, offs_m, y_a, y_c, w_ptr, num_classes, m_total, inv_t, shift,
                HAS_W: tl.constexpr, LOGIT_FORM: tl.constexpr, LABEL_POS: tl.constexpr, EXCL_SELF: tl.constexpr):
    """Denominator logit g (-inf where not allowed), numerator logit h, dg/ds and the positive mask."""
    allowed = (y_a[:, None] >= 0) & (y_c[None, :] >= 0) & (offs_m[None, :] < m_total)
    if EXCL_SELF:
        allowed = allowed & (offs_n[:, None] != offs_m[None, :])
    z = (s + shift) * inv_t
    if HAS_W:
        # Table rows are indexed by the anchor's label; it holds W (logit form) or log W (exp form).
        w = tl.load(w_ptr + y_a[:, None] * num_classes + y_c[None, :], mask=allowed, other=0.0)
    if LOGIT_FORM:
        if HAS_W:
            g = z * w
            dg = w * inv_t
        else:
            g = z
            dg = tl.zeros_like(z) + inv_t
        h = g
    else:
        h = z
        if HAS_W:
            g = z + w
        else:
            g = z
        dg = tl.zeros_like(z) + inv_t
    if LABEL_POS:
        positive = allowed & (y_a[:, None] == y_c[None, :])
    else:
        positive = allowed & (offs_m[None, :] < 0)
    g = tl.where(allowed, g, float("-inf"))
    return g, h, dg, positive, allowed


@triton.jit
def _sim_tile(a_ptr, c_ptr, offs_n, offs_m, n_total, m_total, d_total,
              BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, DOT_F32: tl.constexpr):
    s = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    for d0 in range(0, d_total, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < d_total
        a = tl.load(a_ptr + offs_n[:, None] * d_total + offs_d[None, :],
                    mask=(offs_n[:, None] < n_total) & mask_d[None, :], other=0.0)
        c = tl.load(c_ptr + offs_m[:, None] * d_total + offs_d[None, :],
                    mask=(offs_m[:, None] < m_total) & mask_d[None, :], other=0.0)
        if DOT_F32:
            s += tl.dot(a.to(tl.float32), tl.trans(c.to(tl.float32)), input_precision="ieee")
        else:
            s += tl.dot(a, tl.trans(c))
    return s


@triton.jit
def _label_contrastive_fwd_kernel(a_ptr, c_ptr, ya_ptr, yc_ptr, w_ptr, e_ptr, loss_ptr, lse_ptr, count_ptr,
                                  n_total, m_total, d_total, num_classes, inv_t, shift,
                                  HAS_W: tl.constexpr, HAS_EXTRA: tl.constexpr, LOGIT_FORM: tl.constexpr,
                                  LABEL_POS: tl.constexpr, EXCL_SELF: tl.constexpr, DOT_F32: tl.constexpr,
                                  BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < n_total
    y_a = tl.load(ya_ptr + offs_n, mask=mask_n, other=-1)
    kept = y_a >= 0
    if HAS_EXTRA:
        e = tl.load(e_ptr + offs_n, mask=mask_n, other=0.0)  # already (e + shift) / t
        m_i = tl.where(kept, e, float("-inf"))
        l_i = tl.where(kept, 1.0, 0.0)
        pos_sum = tl.where(kept, e, 0.0)
        count = tl.where(kept, 1.0, 0.0)
    else:
        m_i = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_N], dtype=tl.float32)
        pos_sum = tl.zeros([BLOCK_N], dtype=tl.float32)
        count = tl.zeros([BLOCK_N], dtype=tl.float32)
    for m0 in range(0, m_total, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        y_c = tl.load(yc_ptr + offs_m, mask=offs_m < m_total, other=-1)
        s = _sim_tile(a_ptr, c_ptr, offs_n, offs_m, n_total, m_total, d_total, BLOCK_N, BLOCK_M, BLOCK_D, DOT_F32)
        g, h, dg, positive, allowed = _pair_terms(s, offs_n, offs_m, y_a, y_c, w_ptr, num_classes, m_total, inv_t,
                                                  shift, HAS_W, LOGIT_FORM, LABEL_POS, EXCL_SELF)
        m_new = tl.maximum(m_i, tl.max(g, axis=1))
        # A row with nothing allowed so far has max -inf: subtract 0 instead (exp(-inf) = 0 either way).
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        l_i = l_i * tl.exp(m_i - m_safe) + tl.sum(tl.exp(g - m_safe[:, None]), axis=1)
        m_i = m_new
        pos_sum += tl.sum(tl.where(positive, h, 0.0), axis=1)
        count += tl.sum(positive.to(tl.float32), axis=1)
    lse = tl.where(m_i == float("-inf"), float("-inf"), m_i + tl.log(tl.where(l_i > 0.0, l_i, 1.0)))
    excluded = (y_a < 0) | (count == 0.0)
    loss = tl.where(excluded, 0.0, lse - pos_sum / tl.maximum(count, 1.0))
    tl.store(loss_ptr + offs_n, loss, mask=mask_n)
    tl.store(lse_ptr + offs_n, lse, mask=mask_n)
    tl.store(count_ptr + offs_n, tl.where(excluded, 0.0, count), mask=mask_n)


@triton.jit
def _grad_tile(s, offs_n, offs_m, y_a, y_c, lse, inv_count, grad, w_ptr, num_classes, m_total, inv_t, shift,
               HAS_W: tl.constexpr, LOGIT_FORM: tl.constexpr, LABEL_POS: tl.constexpr, EXCL_SELF: tl.constexpr):
    """d loss_i / d s_ij * grad_i = grad_i (softmax_ij - [j positive] / |P_i|) dg/ds, 0 where not allowed."""
    g, h, dg, positive, allowed = _pair_terms(s, offs_n, offs_m, y_a, y_c, w_ptr, num_classes, m_total, inv_t, shift,
                                              HAS_W, LOGIT_FORM, LABEL_POS, EXCL_SELF)
    live = allowed & (grad[:, None] != 0.0)
    # Rows without gradient may have lse = -inf; the where below drops whatever they compute.
    lse_safe = tl.where(lse == float("-inf"), 0.0, lse)
    prob = tl.exp(g - lse_safe[:, None])
    d = grad[:, None] * (prob - tl.where(positive, inv_count[:, None], 0.0)) * dg
    return tl.where(live, d, 0.0)


@triton.jit
def _label_contrastive_bwd_anchor_kernel(a_ptr, c_ptr, ya_ptr, yc_ptr, w_ptr, lse_ptr, inv_count_ptr, grad_ptr,
                                         da_ptr, n_total, m_total, d_total, num_classes, inv_t, shift,
                                         HAS_W: tl.constexpr, LOGIT_FORM: tl.constexpr, LABEL_POS: tl.constexpr,
                                         EXCL_SELF: tl.constexpr, DOT_F32: tl.constexpr, BLOCK_N: tl.constexpr,
                                         BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < n_total
    y_a = tl.load(ya_ptr + offs_n, mask=mask_n, other=-1)
    lse = tl.load(lse_ptr + offs_n, mask=mask_n, other=0.0)
    inv_count = tl.load(inv_count_ptr + offs_n, mask=mask_n, other=0.0)
    grad = tl.load(grad_ptr + offs_n, mask=mask_n, other=0.0)
    for m0 in range(0, m_total, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        y_c = tl.load(yc_ptr + offs_m, mask=offs_m < m_total, other=-1)
        s = _sim_tile(a_ptr, c_ptr, offs_n, offs_m, n_total, m_total, d_total, BLOCK_N, BLOCK_M, BLOCK_D, DOT_F32)
        ds = _grad_tile(s, offs_n, offs_m, y_a, y_c, lse, inv_count, grad, w_ptr, num_classes, m_total, inv_t, shift,
                        HAS_W, LOGIT_FORM, LABEL_POS, EXCL_SELF)
        for d0 in range(0, d_total, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            mask_d = offs_d < d_total
            c = tl.load(c_ptr + offs_m[:, None] * d_total + offs_d[None, :],
                        mask=(offs_m[:, None] < m_total) & mask_d[None, :], other=0.0)
            if DOT_F32:
                part = tl.dot(ds, c.to(tl.float32), input_precision="ieee")
            else:
                part = tl.dot(ds.to(c.dtype), c)
            # This program owns these anchor rows: a plain read-modify-write is race free.
            ptrs = da_ptr + offs_n[:, None] * d_total + offs_d[None, :]
            mask = mask_n[:, None] & mask_d[None, :]
            tl.store(ptrs, tl.load(ptrs, mask=mask, other=0.0) + part, mask=mask)


@triton.jit
def _label_contrastive_bwd_candidate_kernel(a_ptr, c_ptr, ya_ptr, yc_ptr, w_ptr, lse_ptr, inv_count_ptr, grad_ptr,
                                            dc_ptr, n_total, m_total, d_total, num_classes, inv_t, shift,
                                            HAS_W: tl.constexpr, LOGIT_FORM: tl.constexpr, LABEL_POS: tl.constexpr,
                                            EXCL_SELF: tl.constexpr, DOT_F32: tl.constexpr, BLOCK_N: tl.constexpr,
                                            BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < m_total
    y_c = tl.load(yc_ptr + offs_m, mask=mask_m, other=-1)
    for n0 in range(0, n_total, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < n_total
        y_a = tl.load(ya_ptr + offs_n, mask=mask_n, other=-1)
        lse = tl.load(lse_ptr + offs_n, mask=mask_n, other=0.0)
        inv_count = tl.load(inv_count_ptr + offs_n, mask=mask_n, other=0.0)
        grad = tl.load(grad_ptr + offs_n, mask=mask_n, other=0.0)
        s = _sim_tile(a_ptr, c_ptr, offs_n, offs_m, n_total, m_total, d_total, BLOCK_N, BLOCK_M, BLOCK_D, DOT_F32)
        ds = _grad_tile(s, offs_n, offs_m, y_a, y_c, lse, inv_count, grad, w_ptr, num_classes, m_total, inv_t, shift,
                        HAS_W, LOGIT_FORM, LABEL_POS, EXCL_SELF)
        for d0 in range(0, d_total, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            mask_d = offs_d < d_total
            a = tl.load(a_ptr + offs_n[:, None] * d_total + offs_d[None, :],
                        mask=mask_n[:, None] & mask_d[None, :], other=0.0)
            if DOT_F32:
                part = tl.dot(tl.trans(ds), a.to(tl.float32), input_precision="ieee")
            else:
                part = tl.dot(tl.trans(ds.to(a.dtype)), a)
            ptrs = dc_ptr + offs_m[:, None] * d_total + offs_d[None, :]
            mask = mask_m[:, None] & mask_d[None, :]
            tl.store(ptrs, tl.load(ptrs, mask=mask, other=0.0) + part, mask=mask)


KERNELS = ("fwd", "bwd_anchor", "bwd_candidate")
BLOCK_DS = (16, 32, 64)
# Launch configurations per kernel, per 16-bit ("16": bfloat16 and float16 alike) or float32 ("32")
# inputs and target group, one per BLOCK_D of BLOCK_DS, written
# "<BLOCK_N anchors>x<BLOCK_M candidates>w<num_warps>s<num_stages>": for each, the first of CANDIDATES
# (the most work per program first), each with num_stages 3, 2, 1, that compiles for that target
# (maxnreg 255, see targets.py) without a register spill and within its shared memory for both 16-bit
# dtypes and every flag combination (`scripts/aot_compile_check.py --search` makes these rows; the
# check compiles exactly what they select, and bench/results/aot_compile.json has the registers and
# shared memory of each).
CANDIDATES = ("64x64w4", "64x64w8", "64x32w4", "32x64w4", "32x32w4", "32x32w8", "16x32w4", "32x16w4", "16x16w4")
_CONFIGS = {
    # (kernel, inputs, targets):   BLOCK_D = 16, 32, 64
    ("fwd", "16", (80, 90)): ("64x64w8s3", "64x64w8s3", "64x64w4s2"),
    ("fwd", "16", (86, 89)): ("64x64w8s3", "64x64w8s3", "64x64w4s1"),
    ("fwd", "32", (80, 86, 89, 90)): ("64x64w8s2", "64x64w8s1", "64x64w4s1"),
    ("bwd_anchor", "16", (80, 86, 89)): ("64x64w8s3", "64x64w8s3", "64x64w4s1"),
    ("bwd_anchor", "16", (90,)): ("64x64w4s2", "64x64w8s3", "64x64w4s3"),
    ("bwd_anchor", "32", (80,)): ("64x64w8s3", "64x64w8s1", "32x32w4s3"),
    ("bwd_anchor", "32", (86, 89, 90)): ("64x64w8s3", "64x64w8s1", "32x32w4s1"),
    ("bwd_candidate", "16", (80, 86, 89)): ("64x64w4s3", "64x64w4s3", "64x64w4s1"),
    ("bwd_candidate", "16", (90,)): ("64x64w4s3", "64x64w4s3", "64x64w8s3"),
    ("bwd_candidate", "32", (80,)): ("64x64w8s3", "64x64w8s2", "32x32w8s3"),
    ("bwd_candidate", "32", (86, 89, 90)): ("64x64w8s3", "64x64w8s1", "32x32w8s1"),
}
_CONFIG_PATTERN = re.compile(r"(\d+)x(\d+)w(\d+)s(\d+)")


def parse_entry(entry: str) -> dict:
    """BLOCK_N, BLOCK_M, num_warps and num_stages of a table entry "<BLOCK_N>x<BLOCK_M>w<warps>s<stages>"."""
    bn, bm, warps, stages = map(int, _CONFIG_PATTERN.fullmatch(entry).groups())
    return dict(BLOCK_N=bn, BLOCK_M=bm, num_warps=warps, num_stages=stages)


def launch_config(kernel: str, dtype: torch.dtype, dim: int, target: Optional[int]) -> dict:
    """BLOCK_N (anchors), BLOCK_M (candidates), BLOCK_D, num_warps and num_stages of `kernel` (one of
    KERNELS) for features of `dtype` and width `dim` on `target` (a compute capability of
    targets.TARGETS; None: the CPU interpreter, whose one configuration its tests were written against)."""
    block_d = max(16, min(64, triton.next_power_of_2(dim)))
    if target is None:
        return dict(BLOCK_N=64, BLOCK_M=64, BLOCK_D=block_d, num_warps=4, num_stages=3)
    inputs = "32" if dtype == torch.float32 else "16"
    row = next(configs for (name, kind, group), configs in _CONFIGS.items()
               if name == kernel and kind == inputs and target in group)
    return dict(parse_entry(row[BLOCK_DS.index(block_d)]), BLOCK_D=block_d, maxnreg=targets.REGISTERS_PER_THREAD)


def _launch_config(kernel: str, a: torch.Tensor) -> dict:
    target = None if env.triton_interpreting() else targets.config_target(targets.arch_of(a.device))
    return launch_config(kernel, a.dtype, a.shape[1], target)


def _prepare(anchors, anchor_labels, candidates, candidate_labels, class_weights, extra_positive, temperature,
             logit_shift, logit_form):
    if anchors.dtype == torch.float64:
        raise TypeError("label_contrastive (triton): float64 is not supported; use the cpp or cuda backend")
    a = anchors.contiguous()
    c = a if candidates is anchors else candidates.contiguous()
    # int32 labels: the [BLOCK_N, BLOCK_M] label compares and weight-table offsets take half the
    # registers of int64 ones (class indices are far below 2^31).
    ya = anchor_labels.to(torch.int32).contiguous()
    yc = ya if candidate_labels is anchor_labels else candidate_labels.to(torch.int32).contiguous()
    dummy = torch.zeros(1, device=a.device, dtype=torch.float32)
    table, num_classes = dummy, 0
    if class_weights is not None:
        table = class_weights.to(torch.float32).contiguous()
        num_classes = table.shape[0]
        if not logit_form:
            table = table.log()  # w * exp(x) = exp(x + log w)
    extra = dummy
    if extra_positive is not None:
        extra = ((extra_positive.to(torch.float32) + logit_shift) / temperature).contiguous()
    # The interpreter's tl.dot mishandles bfloat16; on a GPU, float32 stays exact ("ieee") while
    # 16-bit inputs use the tensor cores with float32 accumulation.
    dot_f32 = env.triton_interpreting() or a.dtype == torch.float32
    return a, c, ya, yc, table, num_classes, extra, dot_f32


def forward(anchors, anchor_labels, candidates, candidate_labels, class_weights, extra_positive, temperature,
            logit_shift, logit_form, label_positives, exclude_self):
    a, c, ya, yc, table, num_classes, extra, dot_f32 = _prepare(
        anchors, anchor_labels, candidates, candidate_labels, class_weights, extra_positive, temperature,
        logit_shift, logit_form)
    n, d = a.shape
    m = c.shape[0]
    loss = torch.empty(n, device=a.device, dtype=torch.float32)
    lse = torch.empty_like(loss)
    count = torch.empty_like(loss)
    if n == 0:
        return loss, lse, count
    config = _launch_config("fwd", a)
    _label_contrastive_fwd_kernel[(triton.cdiv(n, config["BLOCK_N"]),)](
        a, c, ya, yc, table, extra, loss, lse, count, n, m, d, num_classes, 1.0 / temperature, float(logit_shift),
        HAS_W=class_weights is not None, HAS_EXTRA=extra_positive is not None, LOGIT_FORM=bool(logit_form),
        LABEL_POS=bool(label_positives), EXCL_SELF=bool(exclude_self), DOT_F32=dot_f32, **config)
    return loss, lse, count


def backward(grad_loss, anchors, anchor_labels, candidates, candidate_labels, class_weights, extra_positive, lse,
             count, temperature, logit_shift, logit_form, label_positives, exclude_self, need_anchors,
             need_candidates, need_extra):
    a, c, ya, yc, table, num_classes, extra, dot_f32 = _prepare(
        anchors, anchor_labels, candidates, candidate_labels, class_weights, extra_positive, temperature,
        logit_shift, logit_form)
    n, d = a.shape
    m = c.shape[0]
    lse = lse.to(torch.float32).contiguous()
    count = count.to(torch.float32)
    # Excluded anchors (count 0) get no gradient whatever flows into their (zero) loss.
    grad = grad_loss.to(torch.float32).masked_fill(count == 0, 0.0).contiguous()
    inv_count = count.clamp(min=1.0).reciprocal().contiguous()
    flags = dict(HAS_W=class_weights is not None, LOGIT_FORM=bool(logit_form), LABEL_POS=bool(label_positives),
                 EXCL_SELF=bool(exclude_self), DOT_F32=dot_f32)
    scalars = (n, m, d, num_classes, 1.0 / temperature, float(logit_shift))
    grad_a = grad_c = anchors.new_empty(0)
    if need_anchors:
        da = torch.zeros(n, d, device=a.device, dtype=torch.float32)
        if n and m:
            config = _launch_config("bwd_anchor", a)
            _label_contrastive_bwd_anchor_kernel[(triton.cdiv(n, config["BLOCK_N"]),)](
                a, c, ya, yc, table, lse, inv_count, grad, da, *scalars, **flags, **config)
        grad_a = da.to(anchors.dtype)
    if need_candidates:
        dc = torch.zeros(m, d, device=a.device, dtype=torch.float32)
        if n and m:
            config = _launch_config("bwd_candidate", a)
            _label_contrastive_bwd_candidate_kernel[(triton.cdiv(m, config["BLOCK_M"]),)](
                a, c, ya, yc, table, lse, inv_count, grad, dc, *scalars, **flags, **config)
        grad_c = dc.to(candidates.dtype)
    grad_e = anchors.new_empty(0)
    if need_extra and extra_positive is not None:
        # d loss_i / d e_i = (softmax weight of the extra positive - 1 / |P_i|) / t
        grad_e = (grad * ((extra - lse).exp() - inv_count) / temperature).masked_fill(count == 0, 0.0)
        grad_e = grad_e.to(extra_positive.dtype)
    return grad_a, grad_c, grad_e

"""Triton bodies of masked attention (flash-attention style, over each sample's kept keys only).

The keep mask is compacted once per call into, per sample, the list of kept key positions and their
count; the kernels then loop over kept keys only, loading K / V rows through that index list, so a
masked key costs nothing. Forward: online softmax per block of queries, saves lse. Backward (recompute):
one kernel per block of kept keys accumulates dK, dV over all queries and scatters them to the kept
rows; one kernel per block of queries accumulates dQ over the kept keys. Dropout uses the same
counter hash as the C++ kernels and the PyTorch reference.

Block sizes, num_warps and num_stages come from `launch_config` per GPU target (compute capability)
and dtype: scripts/aot_compile_check.py compiles every configuration it can return for sm_80, sm_86,
sm_89 and sm_90 without a GPU and fails on a spill or on shared memory above the target's limit.

Imported only when the triton backend runs. Verified on the CPU with TRITON_INTERPRET=1 (where `tl.dot`
is given float32 operands: the interpreter mishandles bfloat16 dots); not yet timed on a GPU.
"""
from __future__ import annotations

import re
from typing import Optional

import torch
import triton
import triton.language as tl

from scob_fast import env
from scob_fast.kernels import targets

_MASK32 = 0xFFFFFFFF


@triton.jit
def _mix32(x):
    # lowbias32 on uint32 values: the multiplies wrap mod 2^32 and the shifts are logical.
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def _dropout_bits(bh, offs_m, kidx, L, seed):
    # The reference's hash of counter = (bh * L + m) * L + k (an int64), built from the counter's
    # 32-bit halves so that no 64-bit [BLOCK_M, BLOCK_N] tile is live (registers): the row part once
    # per query, then the key added to the low half with its carry into the high half.
    row = (bh.to(tl.int64) * L + offs_m.to(tl.int64)) * L
    row_lo = row.to(tl.uint32)
    row_hi = (row >> 32).to(tl.uint32)
    lo = row_lo[:, None] + kidx.to(tl.uint32)[None, :]
    hi = row_hi[:, None] + (lo < row_lo[:, None]).to(tl.uint32)
    return _mix32(_mix32(hi + seed.to(tl.uint32)) ^ lo)


@triton.jit
def _dropout_keep(bh, offs_m, kidx, L, seed, threshold):
    return _dropout_bits(bh, offs_m, kidx, L, seed) >= threshold.to(tl.uint32)


@triton.jit
def _masked_attention_fwd_kernel(
        Q, K, V, IDX, CNT, O, LSE,
        sqb, sqh, sql, skb, skh, skl, svb, svh, svl,
        H, L, D, scale, seed, threshold, keep_scale,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        DROPOUT: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < L
    d_ok = offs_d < D
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sql + offs_d[None, :],
                mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    if DOT_F32:
        q = q.to(tl.float32)
    n = tl.load(CNT + b)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(0, n, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_ok = offs_n < n
        kidx = tl.load(IDX + b * L + offs_n, mask=n_ok, other=0)
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(K + b * skb + h * skh + kidx[:, None] * skl + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V + b * svb + h * svh + kidx[:, None] * svl + offs_d[None, :], mask=kv_mask, other=0.0)
        if DOT_F32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
        s = tl.where(n_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if DROPOUT:
            keep = _dropout_keep(bh, offs_m, kidx, L, seed, threshold)
            p = tl.where(keep, p * keep_scale, 0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    # A sample that keeps no key: l = 0, output 0 (documented semantics), lse = -inf (never read).
    nonempty = l_i > 0.0
    out = acc / tl.where(nonempty, l_i, 1.0)[:, None]
    lse = tl.where(nonempty, m_i + tl.log(tl.where(nonempty, l_i, 1.0)), float("-inf"))
    o_rows = O + bh * L * D + offs_m[:, None] * D + offs_d[None, :]
    tl.store(o_rows, out.to(O.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
    tl.store(LSE + bh * L + offs_m, lse, mask=m_ok)


@triton.jit
def _masked_attention_bwd_dkdv_kernel(
        Q, K, V, DO, LSE, DELTA, IDX, CNT, DK, DV,
        sqb, sqh, sql, skb, skh, skl, svb, svh, svl,
        H, L, D, scale, seed, threshold, keep_scale,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        DROPOUT: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr):
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    n = tl.load(CNT + b)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < n
    d_ok = offs_d < D
    kidx = tl.load(IDX + b * L + offs_n, mask=n_ok, other=0)
    kv_mask = n_ok[:, None] & d_ok[None, :]
    k = tl.load(K + b * skb + h * skh + kidx[:, None] * skl + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + b * svb + h * svh + kidx[:, None] * svl + offs_d[None, :], mask=kv_mask, other=0.0)
    if DOT_F32:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    # Blocks past this sample's kept count have no work: an empty query loop.
    m_end = tl.where(pid_n * BLOCK_N < n, L, 0)
    for start_m in range(0, m_end, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        m_ok = offs_m < L
        row_mask = m_ok[:, None] & d_ok[None, :]
        q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sql + offs_d[None, :], mask=row_mask, other=0.0)
        do = tl.load(DO + bh * L * D + offs_m[:, None] * D + offs_d[None, :], mask=row_mask, other=0.0)
        if DOT_F32:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        lse = tl.load(LSE + bh * L + offs_m, mask=m_ok, other=0.0)
        delta = tl.load(DELTA + bh * L + offs_m, mask=m_ok, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
        p = tl.exp(tl.minimum(s - lse[:, None], 0.0))
        p = tl.where(m_ok[:, None] & n_ok[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        if DROPOUT:
            keep = _dropout_keep(bh, offs_m, kidx, L, seed, threshold)
            pz = tl.where(keep, p * keep_scale, 0.0)
            dp = tl.where(keep, dp * keep_scale, 0.0)
        else:
            pz = p
        dv += tl.dot(tl.trans(pz).to(do.dtype), do, input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=PRECISION)
    dk = dk * scale
    rows = bh * L * D + kidx[:, None] * D + offs_d[None, :]
    tl.store(DK + rows, dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + rows, dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _masked_attention_bwd_dq_kernel(
        Q, K, V, DO, LSE, DELTA, IDX, CNT, DQ,
        sqb, sqh, sql, skb, skh, skl, svb, svh, svl,
        H, L, D, scale, seed, threshold, keep_scale,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        DROPOUT: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < L
    d_ok = offs_d < D
    row_mask = m_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sql + offs_d[None, :], mask=row_mask, other=0.0)
    do = tl.load(DO + bh * L * D + offs_m[:, None] * D + offs_d[None, :], mask=row_mask, other=0.0)
    if DOT_F32:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(LSE + bh * L + offs_m, mask=m_ok, other=0.0)
    delta = tl.load(DELTA + bh * L + offs_m, mask=m_ok, other=0.0)
    n = tl.load(CNT + b)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(0, n, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_ok = offs_n < n
        kidx = tl.load(IDX + b * L + offs_n, mask=n_ok, other=0)
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(K + b * skb + h * skh + kidx[:, None] * skl + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V + b * svb + h * svh + kidx[:, None] * svl + offs_d[None, :], mask=kv_mask, other=0.0)
        if DOT_F32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
        p = tl.exp(tl.minimum(s - lse[:, None], 0.0))
        p = tl.where(m_ok[:, None] & n_ok[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        if DROPOUT:
            keep = _dropout_keep(bh, offs_m, kidx, L, seed, threshold)
            dp = tl.where(keep, dp * keep_scale, 0.0)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    dq = dq * scale
    tl.store(DQ + bh * L * D + offs_m[:, None] * D + offs_d[None, :], dq.to(DQ.dtype.element_ty), mask=row_mask)


def _compact(key_keep: torch.Tensor):
    """Per sample: kept key positions first (ascending, int32 [B, L]) and how many (int32 [B])."""
    order = torch.argsort((~key_keep).to(torch.int8), dim=1, stable=True).to(torch.int32).contiguous()
    counts = key_keep.sum(dim=1, dtype=torch.int32).contiguous()
    return order, counts


KERNELS = ("fwd", "bwd_dkdv", "bwd_dq")
BLOCK_DS = (16, 32, 64, 128, 256)
# Launch configurations per kernel, per 16-bit ("16", bfloat16 and float16 alike) or float32 ("32")
# inputs, dropout off / on and target group, one per BLOCK_D of BLOCK_DS, written
# "<BLOCK_M>x<BLOCK_N>w<num_warps>s<num_stages>". Each is the first of CANDIDATES (the most work per
# program first), each with num_stages 3, 2, 1, that compiles for that target (maxnreg 255, see
# targets.py) without a register spill and within its shared memory, for both 16-bit dtypes. Made by
# `scripts/aot_compile_check.py --search --ops masked_attention --dtypes bfloat16,float16` and, for the
# float32 rows, `--dtypes float32 --prune 128` (BLOCK_D 256 starts from the BLOCK_D 128 entry: a full
# search there compiles dozens of spilling tiles at minutes each); the check compiles exactly what
# they select, and bench/results/aot_compile.json has the registers and shared memory of each. float32
# runs IEEE dots on the FMA units (no tensor cores): its operands and products take twice the
# registers, hence its smaller tiles, down to 16 x 16 with 8 warps at BLOCK_D 256 (the 4-warp 16 x 16
# tile spills there: ptxas uses all 255 registers, the 8-warp one about 95).
CANDIDATES = ("64x64w4", "64x64w8", "64x32w4", "64x32w8", "32x64w4", "32x64w8", "32x32w4", "32x32w8",
              "16x32w4", "16x32w8", "32x16w4", "32x16w8", "16x16w4", "16x16w8")
_CONFIGS = {
    # (kernel, inputs, dropout, targets):   BLOCK_D = 16, 32, 64, 128, 256
    ("fwd", "16", False, (80, 90)): ("64x64w4s3", "64x64w4s3", "64x64w4s3", "64x64w4s3", "64x64w4s3"),
    ("fwd", "16", False, (86, 89)): ("64x64w4s3", "64x64w4s3", "64x64w4s3", "64x64w4s3", "64x64w8s1"),
    ("fwd", "16", True, (80,)): ("64x64w4s3", "64x64w4s3", "64x64w4s2", "64x64w4s3", "64x64w8s3"),
    ("fwd", "16", True, (86, 89)): ("64x64w4s3", "64x64w4s3", "64x64w4s1", "64x64w4s3", "64x64w8s1"),
    ("fwd", "16", True, (90,)): ("64x64w4s3", "64x64w4s3", "64x64w4s3", "64x64w4s3", "64x64w4s2"),
    ("fwd", "32", False, (80,)): ("64x64w4s3", "64x64w4s3", "64x64w8s3", "64x32w8s3", "32x32w8s1"),
    ("fwd", "32", False, (86, 89)): ("64x64w4s3", "64x64w4s1", "64x64w8s3", "64x32w8s3", "16x32w8s1"),
    ("fwd", "32", False, (90,)): ("64x64w4s3", "64x64w4s3", "64x64w8s3", "64x32w8s3", "16x32w8s1"),
    ("fwd", "32", True, (80,)): ("64x64w4s1", "64x64w4s3", "64x32w8s3", "64x32w8s3", "16x32w8s1"),
    ("fwd", "32", True, (86, 89)): ("64x64w8s3", "64x64w4s1", "64x32w8s3", "64x32w8s3", "16x32w8s1"),
    ("fwd", "32", True, (90,)): ("64x64w4s3", "64x64w4s1", "64x32w8s3", "64x32w8s3", "16x32w8s1"),
    ("bwd_dkdv", "16", False, (80,)): ("64x64w4s3", "64x64w4s3", "64x64w4s3", "64x64w8s3", "64x64w8s2"),
    ("bwd_dkdv", "16", False, (86, 89)): ("64x64w4s3", "64x64w4s3", "64x64w4s3", "64x64w8s2", "32x32w4s3"),
    ("bwd_dkdv", "16", False, (90,)): ("64x64w4s3", "64x64w4s3", "64x64w4s3", "64x64w4s3", "32x64w8s3"),
    ("bwd_dkdv", "16", True, (80,)): ("64x64w4s3", "64x64w4s3", "64x64w4s1", "64x64w8s3", "64x64w8s1"),
    ("bwd_dkdv", "16", True, (86, 89)): ("64x64w4s3", "64x64w4s3", "64x32w4s3", "64x64w8s2", "32x32w4s3"),
    ("bwd_dkdv", "16", True, (90,)): ("64x64w4s3", "64x64w4s3", "64x64w4s3", "64x32w4s3", "32x64w8s3"),
    ("bwd_dkdv", "32", False, (80,)): ("64x64w4s2", "64x64w4s1", "32x64w8s1", "64x32w8s1", "16x32w8s1"),
    ("bwd_dkdv", "32", False, (86, 89)): ("64x64w8s3", "64x64w4s1", "32x64w8s1", "16x32w8s1", "16x16w8s1"),
    ("bwd_dkdv", "32", False, (90,)): ("64x64w4s2", "64x64w4s1", "32x64w8s1", "16x32w8s1", "16x16w8s1"),
    ("bwd_dkdv", "32", True, (80,)): ("64x64w4s1", "64x64w8s1", "32x64w8s3", "64x32w8s2", "32x32w8s1"),
    ("bwd_dkdv", "32", True, (86, 89)): ("64x64w8s2", "64x32w8s3", "32x32w4s1", "32x32w8s1", "16x16w8s2"),
    ("bwd_dkdv", "32", True, (90,)): ("64x64w4s1", "64x64w8s1", "32x32w4s1", "32x32w8s1", "16x16w8s1"),
    ("bwd_dq", "16", False, (80,)): ("64x64w4s3", "64x64w4s3", "64x64w4s1", "64x64w4s3", "64x64w8s3"),
    ("bwd_dq", "16", False, (86, 89)): ("64x64w4s3", "64x64w4s3", "64x64w4s2", "64x64w4s3", "64x32w4s1"),
    ("bwd_dq", "16", False, (90,)): ("64x64w4s3", "64x64w4s3", "64x64w4s3", "64x64w4s3", "64x64w8s3"),
    ("bwd_dq", "16", True, (80,)): ("64x64w4s3", "64x64w4s3", "64x64w8s3", "64x64w8s3", "64x64w8s2"),
    ("bwd_dq", "16", True, (86, 89)): ("64x64w4s3", "64x64w4s3", "64x64w8s3", "64x64w4s3", "64x32w8s1"),
    ("bwd_dq", "16", True, (90,)): ("64x64w4s3", "64x64w4s3", "64x64w4s3", "64x64w8s3", "64x32w8s3"),
    ("bwd_dq", "32", False, (80,)): ("64x64w4s3", "64x64w4s1", "64x32w8s3", "64x32w8s3", "32x32w8s1"),
    ("bwd_dq", "32", False, (86, 89)): ("64x64w4s3", "64x64w4s1", "64x32w8s3", "64x32w8s1", "32x16w4s3"),
    ("bwd_dq", "32", False, (90,)): ("64x64w4s3", "64x64w4s1", "64x32w8s1", "32x64w8s1", "16x16w8s3"),
    ("bwd_dq", "32", True, (80,)): ("64x64w4s1", "64x64w8s3", "64x32w8s3", "64x32w8s3", "32x32w8s1"),
    ("bwd_dq", "32", True, (86, 89)): ("64x64w4s1", "64x64w8s3", "64x32w8s3", "32x64w8s1", "32x16w4s3"),
    ("bwd_dq", "32", True, (90,)): ("64x64w4s1", "64x64w8s1", "64x32w8s1", "32x64w8s1", "16x16w8s3"),
}
_CONFIG_PATTERN = re.compile(r"(\d+)x(\d+)w(\d+)s(\d+)")


def parse_entry(entry: str) -> dict:
    """BLOCK_M, BLOCK_N, num_warps and num_stages of a table entry "<BLOCK_M>x<BLOCK_N>w<warps>s<stages>"."""
    bm, bn, warps, stages = map(int, _CONFIG_PATTERN.fullmatch(entry).groups())
    return dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages)


def launch_config(kernel: str, dtype: torch.dtype, head_dim: int, dropout: bool, target: Optional[int]) -> dict:
    """BLOCK_M, BLOCK_N, BLOCK_D, num_warps and num_stages of `kernel` (one of KERNELS) for inputs of
    `dtype` and head dim `head_dim` on `target` (a compute capability of targets.TARGETS; None: the
    CPU interpreter, whose one configuration the interpreter tests were written against)."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    if target is None:
        return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_D=block_d, num_warps=4, num_stages=3)
    inputs = "32" if dtype == torch.float32 else "16"
    row = next(configs for (name, kind, drop, group), configs in _CONFIGS.items()
               if name == kernel and kind == inputs and drop == bool(dropout) and target in group)
    return dict(parse_entry(row[BLOCK_DS.index(block_d)]), BLOCK_D=block_d, maxnreg=targets.REGISTERS_PER_THREAD)


def _meta(kernel: str, q: torch.Tensor, dropout_p: float) -> dict:
    """Everything `kernel` is launched with besides its tensors and scalars."""
    interpreting = env.triton_interpreting()
    target = None if interpreting else targets.config_target(targets.arch_of(q.device))
    # The interpreter's tl.dot mishandles bfloat16: it gets float32 operands. On a GPU, float32 inputs
    # keep full precision ("ieee"; TF32 would miss the 1e-5 contract), 16-bit ones use the tensor cores.
    dot_f32 = interpreting or q.dtype == torch.float32
    return dict(launch_config(kernel, q.dtype, q.shape[-1], dropout_p > 0.0, target),
                DROPOUT=dropout_p > 0.0, DOT_F32=dot_f32, PRECISION="ieee" if dot_f32 else "tf32")


def _dropout_scalars(dropout_p: float, seed: int):
    return (int(seed) & _MASK32, min(int(dropout_p * 4294967296.0), _MASK32),
            1.0 / (1.0 - dropout_p) if dropout_p > 0.0 else 1.0)


def _strides(q, k, v):
    return (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2))


def forward(q, k, v, key_keep, scale: float, dropout_p: float, seed: int):
    B, H, L, D = q.shape
    out = torch.empty((B, H, L, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, L), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        lse.zero_()
        return out, lse
    index, counts = _compact(key_keep)
    meta = _meta("fwd", q, dropout_p)
    grid = (triton.cdiv(L, meta["BLOCK_M"]), B * H)
    _masked_attention_fwd_kernel[grid](q, k, v, index, counts, out, lse, *_strides(q, k, v),
                                       H, L, D, scale, *_dropout_scalars(dropout_p, seed), **meta)
    return out, lse


def backward(grad_out, q, k, v, key_keep, out, lse, scale: float, dropout_p: float, seed: int):
    B, H, L, D = q.shape
    dq = torch.empty((B, H, L, D), dtype=q.dtype, device=q.device)
    dk = torch.zeros((B, H, L, D), dtype=q.dtype, device=q.device)
    dv = torch.zeros((B, H, L, D), dtype=q.dtype, device=q.device)
    if dq.numel() == 0:
        return dq, dk, dv
    grad_out = grad_out.contiguous()
    # Softmax backward's row term: sum_j P_ij dP_ij = rowsum(dO * O) (also with dropout).
    delta = (grad_out.float() * out.float()).sum(-1).contiguous()
    index, counts = _compact(key_keep)
    args = (H, L, D, scale, *_dropout_scalars(dropout_p, seed))
    meta = _meta("bwd_dkdv", q, dropout_p)
    grid_kv = (triton.cdiv(L, meta["BLOCK_N"]), B * H)
    _masked_attention_bwd_dkdv_kernel[grid_kv](q, k, v, grad_out, lse, delta, index, counts, dk, dv,
                                               *_strides(q, k, v), *args, **meta)
    meta = _meta("bwd_dq", q, dropout_p)
    grid_q = (triton.cdiv(L, meta["BLOCK_M"]), B * H)
    _masked_attention_bwd_dq_kernel[grid_q](q, k, v, grad_out, lse, delta, index, counts, dq,
                                            *_strides(q, k, v), *args, **meta)
    return dq, dk, dv

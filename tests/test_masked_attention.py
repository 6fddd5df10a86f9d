"""masked_attention: every backend against the PyTorch reference, forward and the three input gradients.

The C++ backend runs the full grid of the issue (L up to 784); Triton runs under TRITON_INTERPRET=1
(set by conftest.py) on small shapes only. bfloat16 follows the flash-attention rule: the kernel's error
against the float32 reference must be at most 2x the error of plain PyTorch attention computed in
bfloat16 (both printed with -s).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from scob_fast import _ext, env
from scob_fast.ops import BackendUnavailable, last_backend
from scob_fast.ops.masked_attention import (DISPATCHER, dropout_keep_mask, masked_attention,
                                            masked_attention_reference)

# (atol, rtol) for backends whose compute type equals the input type.
TOLERANCES = {torch.float32: (1e-5, 1e-5), torch.float64: (1e-10, 1e-10)}
BF16_ERROR_FACTOR = 2.0  # kernel error <= 2 x error of PyTorch in bfloat16 (+ BF16_ATOL)
BF16_ATOL = 2e-3
KEEP_FRACTIONS = [0.0, 0.05, 0.3, 1.0]

needs_cpp = pytest.mark.skipif(not _ext.cpp_available(), reason=str(_ext.load_error()))


def _assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float) -> None:
    """allclose that says how many elements differ, where, and about NaN / inf mismatches."""
    actual, expected = actual.detach().double(), expected.detach().double()
    bad_nan = torch.isnan(actual) != torch.isnan(expected)
    bad_inf = torch.isinf(actual) != torch.isinf(expected)
    diff = (actual - expected).abs()
    bad = (diff > atol + rtol * expected.abs()) | bad_nan | bad_inf
    if bad.any():
        idx = bad.nonzero()[:5].tolist()
        raise AssertionError(
            f"{name}: {int(bad.sum())}/{bad.numel()} elements differ (atol={atol}, rtol={rtol}); "
            f"max |diff| {diff.nan_to_num(float('inf')).max().item():.3e}; first at {idx}: "
            f"{[actual[tuple(i)].item() for i in idx]} vs {[expected[tuple(i)].item() for i in idx]}; "
            f"NaN mismatches {int(bad_nan.sum())}, inf mismatches {int(bad_inf.sum())}")


def _inputs(B, H, L, D, keep_fraction, dtype, seed=0, empty_sample=True):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, L, D, generator=g).to(dtype).requires_grad_() for _ in range(3))
    if keep_fraction >= 1.0:
        keep = torch.ones(B, L, dtype=torch.bool)
    else:
        keep = torch.rand(B, L, generator=g) < keep_fraction
        if keep_fraction > 0.0:
            keep[:, 0] = True  # the fraction-0 case covers empty samples; here every sample keeps a key ...
            if empty_sample and B > 1:
                keep[-1] = False  # ... except the last, which keeps none
    grad = torch.randn(B, H, L, D, generator=g).to(dtype)
    return q, k, v, keep, grad


def _run(fn, q, k, v, keep, grad):
    out = fn(q, k, v, keep)
    grads = torch.autograd.grad(out, (q, k, v), grad)
    return (out, *grads)


def _bf16_torch(q, k, v, keep):
    """Plain PyTorch attention with every step in bfloat16 (the baseline error for the 2x rule)."""
    keeps_any = keep.any(-1)
    safe = keep | ~keeps_any[:, None]
    s = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    s = s.masked_fill(~safe[:, None, None, :], float("-inf"))
    return (s.softmax(-1) @ v) * keeps_any[:, None, None, None]


def _check_backend(backend, B, H, L, D, keep_fraction, dtype, dropout_p=0.0):
    q, k, v, keep, grad = _inputs(B, H, L, D, keep_fraction, dtype, seed=B * 1000 + L + D)
    got = _run(lambda *a: masked_attention(*a, dropout_p=dropout_p, seed=7, backend=backend), q, k, v, keep, grad)
    assert last_backend("masked_attention") == backend
    names = ("out", "grad_q", "grad_k", "grad_v")
    if dtype in TOLERANCES:
        want = _run(lambda *a: masked_attention_reference(*a, dropout_p=dropout_p, seed=7), q, k, v, keep, grad)
        for name, a, b in zip(names, got, want):
            assert a.dtype == dtype
            _assert_close(f"{backend} {name}", a, b, *TOLERANCES[dtype])
        return
    # bfloat16: compare against the float32 reference on the same (bfloat16-rounded) inputs.
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    want = _run(lambda *a: masked_attention_reference(*a, dropout_p=dropout_p, seed=7), q32, k32, v32, keep,
                grad.float())
    base = _run(_bf16_torch, q, k, v, keep, grad)
    for name, a, b, c in zip(names, got, want, base):
        assert a.dtype == dtype and torch.isfinite(a).all(), name
        kernel_err = (a.float() - b).abs().max().item()
        torch_err = (c.float() - b).abs().max().item()
        print(f"{backend} bf16 {name}: kernel err {kernel_err:.3e}, PyTorch-bf16 err {torch_err:.3e}")
        assert kernel_err <= BF16_ERROR_FACTOR * torch_err + BF16_ATOL, (name, kernel_err, torch_err)


# --------------------------------------------------------------------------------------------
# C++ CPU backend: the grid (each B, H, L, D value appears with every keep fraction).

CPP_SHAPES = [(1, 1, 1, 32), (3, 8, 17, 64), (1, 8, 196, 32), (3, 1, 196, 64), (3, 8, 784, 64), (1, 1, 784, 32)]
# bfloat16 on every shape but the largest (whose L=784 case the (1, 1, 784, 32) shape already covers).
CPP_CASES = [(dtype, *shape) for dtype in (torch.float32, torch.bfloat16) for shape in CPP_SHAPES
             if not (dtype == torch.bfloat16 and shape == (3, 8, 784, 64))]


@needs_cpp
@pytest.mark.parametrize("keep_fraction", KEEP_FRACTIONS)
@pytest.mark.parametrize("dtype, B, H, L, D", CPP_CASES)
def test_cpp_matches_reference(B, H, L, D, keep_fraction, dtype):
    _check_backend("cpp", B, H, L, D, keep_fraction, dtype)


@needs_cpp
@pytest.mark.parametrize("B, H, L, D", [(3, 8, 17, 32), (3, 2, 196, 64)])
def test_cpp_dropout_matches_reference(B, H, L, D):
    _check_backend("cpp", B, H, L, D, 0.3, torch.float32, dropout_p=0.25)


@needs_cpp
def test_cpp_noncontiguous_inputs():
    """[B, L, H, D] projections viewed as [B, H, L, D] are read in place and give the same result."""
    B, H, L, D = 2, 4, 33, 32
    g = torch.Generator().manual_seed(1)
    qkv = torch.randn(B, L, 3, H, D, generator=g, requires_grad=True)
    keep = torch.rand(B, L, generator=g) < 0.5
    keep[:, 0] = True
    grad = torch.randn(B, H, L, D, generator=g)

    def split(t):
        return t.permute(2, 0, 3, 1, 4).unbind(0)

    out = masked_attention(*split(qkv), keep, backend="cpp")
    (g1,) = torch.autograd.grad(out, qkv, grad)
    ref = masked_attention_reference(*split(qkv), keep)
    (g2,) = torch.autograd.grad(ref, qkv, grad)
    _assert_close("out", out, ref, *TOLERANCES[torch.float32])
    _assert_close("grad", g1, g2, *TOLERANCES[torch.float32])


@needs_cpp
@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
def test_cpp_gradcheck_float64(dropout_p):
    q, k, v, keep, _ = _inputs(3, 2, 7, 4, 0.5, torch.float64, seed=3)
    assert keep.any(-1).tolist() == [True, True, False]
    fn = lambda q, k, v: masked_attention(q, k, v, keep, dropout_p=dropout_p, seed=11, backend="cpp")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-7)
    _assert_close("float64 out", fn(q, k, v), masked_attention_reference(q, k, v, keep, dropout_p=dropout_p, seed=11),
                  *TOLERANCES[torch.float64])


def _signature(op) -> str:
    return str(op.default._schema).split("(", 1)[1]


@needs_cpp
def test_cpp_opcheck():
    # The Triton ops are declared in Python with the schemas of csrc/: they must not drift apart.
    ops = torch.ops.scob_fast
    assert _signature(ops.masked_attention_fwd) == _signature(ops.masked_attention_triton_fwd)
    assert _signature(ops.masked_attention_bwd) == _signature(ops.masked_attention_triton_bwd)
    q, k, v, keep, _ = _inputs(2, 2, 9, 8, 0.5, torch.float32, seed=4)
    torch.library.opcheck(torch.ops.scob_fast.masked_attention_fwd.default, (q, k, v, keep, 0.3, 0.0, 0))
    torch.library.opcheck(torch.ops.scob_fast.masked_attention_fwd.default, (q, k, v, keep, 0.3, 0.2, 5))
    out, lse = torch.ops.scob_fast.masked_attention_fwd(q, k, v, keep, 0.3, 0.0, 0)
    grad = torch.randn_like(out)
    # The backward op is not itself differentiable (no double backward): schema and fake kernel only.
    torch.library.opcheck(torch.ops.scob_fast.masked_attention_bwd.default,
                          (grad, q.detach(), k.detach(), v.detach(), keep, out.detach(), lse, 0.3, 0.0, 0),
                          test_utils=("test_schema", "test_faketensor"))


@needs_cpp
def test_torch_compile_traces_the_op():
    q, k, v, keep, grad = _inputs(2, 2, 16, 8, 0.5, torch.float32, seed=5)

    def fn(q, k, v, keep):
        return masked_attention(q, k, v, keep, backend="cpp") * 2.0

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    for name, a, b in zip(("out", "dq", "dk", "dv"), _run(compiled, q, k, v, keep, grad), _run(fn, q, k, v, keep, grad)):
        _assert_close(f"compiled {name}", a, b, *TOLERANCES[torch.float32])


# --------------------------------------------------------------------------------------------
# Triton backend (interpreter; small shapes)

needs_triton = pytest.mark.skipif(DISPATCHER.availability()["triton"] is not None or not env.triton_interpreting(),
                                  reason="triton missing or not interpreting")


@needs_triton
@pytest.mark.parametrize("keep_fraction", KEEP_FRACTIONS)
@pytest.mark.parametrize("B, H, L, D", [(1, 1, 1, 32), (3, 8, 17, 64), (3, 1, 17, 32)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_matches_reference(B, H, L, D, keep_fraction, dtype):
    _check_backend("triton", B, H, L, D, keep_fraction, dtype)


@needs_triton
def test_triton_matches_reference_l196():
    _check_backend("triton", 1, 1, 196, 64, 0.3, torch.float32)


@needs_triton
def test_triton_dropout_matches_reference():
    _check_backend("triton", 2, 2, 17, 32, 0.5, torch.float32, dropout_p=0.25)


@needs_triton
def test_triton_opcheck():
    q, k, v, keep, _ = _inputs(2, 1, 9, 16, 0.5, torch.float32, seed=6)
    torch.library.opcheck(torch.ops.scob_fast.masked_attention_triton_fwd.default, (q, k, v, keep, 0.25, 0.0, 0),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


# --------------------------------------------------------------------------------------------
# Reference semantics, dispatch and errors

def test_reference_matches_dense_softmax_and_zero_rows():
    q, k, v, keep, grad = _inputs(3, 2, 12, 8, 0.5, torch.float32, seed=8)
    s = (q @ k.transpose(-1, -2)) / 8 ** 0.5
    dense = s.masked_fill(~keep[:, None, None, :], float("-inf")).softmax(-1) @ v
    out = masked_attention_reference(q, k, v, keep)
    _assert_close("kept samples", out[:2], dense[:2], 1e-6, 1e-6)
    assert torch.isnan(dense[2]).all() and (out[2] == 0).all()
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad)
    for t in (dq, dk, dv):
        assert torch.isfinite(t).all() and (t[2] == 0).all()


def test_dropout_mask_rate_and_determinism():
    mask = dropout_keep_mask(2, 4, 64, 0.3, seed=123)
    assert abs(mask.float().mean().item() - 0.7) < 0.01
    assert torch.equal(mask, dropout_keep_mask(2, 4, 64, 0.3, seed=123))
    assert not torch.equal(mask, dropout_keep_mask(2, 4, 64, 0.3, seed=124))


@needs_cpp
def test_auto_dispatch_and_env_override(monkeypatch):
    q, k, v, keep, _ = _inputs(1, 1, 5, 8, 1.0, torch.float32)
    masked_attention(q, k, v, keep)
    assert last_backend("masked_attention") == "cpp"
    monkeypatch.setenv("SCOB_FAST_MASKED_ATTENTION_BACKEND", "reference")
    masked_attention(q, k, v, keep)
    assert last_backend("masked_attention") == "reference"


def test_forced_backend_that_cannot_run_says_why():
    q, k, v, keep, _ = _inputs(1, 1, 5, 8, 1.0, torch.float32)
    with pytest.raises(BackendUnavailable, match="cuda"):
        masked_attention(q, k, v, keep, backend="cuda")
    with pytest.raises(ValueError, match="unknown backend"):
        masked_attention(q, k, v, keep, backend="fastest")


@pytest.mark.parametrize("change, pattern", [
    (lambda a: a.update(key_keep=a["key_keep"].float()), "'key_keep' must be a bool"),
    (lambda a: a.update(key_keep=a["key_keep"][:, :-1]), r"'key_keep' must have shape \[B, L\]"),
    (lambda a: a.update(k=a["k"][:, :, :-1]), "'k' has shape"),
    (lambda a: a.update(v=a["v"].double()), "'v' has dtype"),
    (lambda a: a.update(q=a["q"][0]), "'q' must be 4-D"),
    (lambda a: a.update(dropout_p=1.0), "'dropout_p'"),
])
def test_bad_inputs_name_the_argument(change, pattern):
    q, k, v, keep, _ = _inputs(2, 1, 5, 8, 1.0, torch.float32)
    args = dict(q=q, k=k, v=v, key_keep=keep)
    change(args)
    with pytest.raises((ValueError, TypeError), match=pattern):
        masked_attention(**args)


@needs_cpp
def test_cpp_op_checks_name_the_argument():
    q, k, v, keep, _ = _inputs(2, 1, 5, 8, 1.0, torch.float32)
    with pytest.raises(RuntimeError, match="masked_attention: argument 'key_keep'"):
        torch.ops.scob_fast.masked_attention_fwd(q, k, v, keep.int(), 1.0, 0.0, 0)
    with pytest.raises(RuntimeError, match="argument 'k'.*contiguous"):
        torch.ops.scob_fast.masked_attention_fwd(q, k.transpose(2, 3).contiguous().transpose(2, 3), v, keep, 1.0, 0.0, 0)


# --------------------------------------------------------------------------------------------
# The model-side modules

def _torch_encoder(d_model, nhead, ff, layers):
    layer = nn.TransformerEncoderLayer(d_model, nhead, ff, dropout=0.0, activation=nn.LeakyReLU(),
                                       batch_first=True, norm_first=False)
    return nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)


@pytest.mark.parametrize("backend", [None, "reference"])
def test_encoder_matches_torch_transformer(backend):
    from scob_fast.models.masked_encoder import MaskedTransformerEncoder
    torch.manual_seed(0)
    B, L, d, nhead, ff = 4, 49, 64, 8, 128
    ours = MaskedTransformerEncoder(d, nhead, ff, dropout=0.0, num_layers=2, backend=backend).eval()
    theirs = _torch_encoder(d, nhead, ff, 2).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)  # same names both ways
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(B, L, d)
    keep = torch.rand(B, L) < 0.4
    keep[:, 3] = True
    keep_empty = keep.clone()
    keep_empty[1] = False

    out = ours(x, keep_empty)
    assert torch.isfinite(out).all()
    ref = theirs(x, src_key_padding_mask=~keep_empty)
    rows = keep_empty.any(-1)
    _assert_close("encoder out", out[rows], ref[rows], 2e-5, 2e-5)

    grad = torch.randn(B, L, d)
    gx1 = torch.autograd.grad(ours(x.requires_grad_(), keep), [x, *ours.parameters()], grad)
    gx2 = torch.autograd.grad(theirs(x, src_key_padding_mask=~keep), [x, *theirs.parameters()], grad)
    names = ["x"] + [n for n, _ in ours.named_parameters()]
    for name, a, b in zip(names, gx1, gx2):
        _assert_close(f"grad {name}", a, b, 5e-5, 5e-5)


def test_encoder_backend_switch_and_no_mask():
    from scob_fast.models.masked_encoder import MaskedTransformerEncoder
    torch.manual_seed(1)
    enc = MaskedTransformerEncoder(32, 4, 64, dropout=0.0, num_layers=2).eval()
    x = torch.randn(2, 10, 32)
    enc.backend = "reference"
    ref = enc(x)
    assert last_backend("masked_attention") == "reference"
    assert all(layer.self_attn.backend == "reference" for layer in enc.layers)
    enc.backend = None
    _assert_close("auto vs reference", enc(x), ref, 1e-5, 1e-5)
    theirs = _torch_encoder(32, 4, 64, 2).eval()
    theirs.load_state_dict(enc.state_dict())
    _assert_close("no mask", enc(x), theirs(x), 2e-5, 2e-5)


@needs_cpp
def test_encoder_training_dropout_same_for_cpp_and_reference():
    from scob_fast.models.masked_encoder import MaskedTransformerEncoder
    torch.manual_seed(2)
    enc = MaskedTransformerEncoder(32, 4, 64, dropout=0.1, num_layers=2).train()
    x = torch.randn(2, 20, 32)
    keep = torch.rand(2, 20) < 0.5
    keep[:, 0] = True
    outs = []
    for backend in ("cpp", "reference"):
        enc.backend = backend
        torch.manual_seed(3)
        outs.append(enc(x, keep))
    _assert_close("train-mode cpp vs reference", outs[0], outs[1], 2e-5, 2e-5)
    torch.manual_seed(4)
    assert not torch.allclose(enc(x, keep), outs[0])  # a new seed draws a new dropout pattern


@pytest.mark.parametrize("keep_fraction", KEEP_FRACTIONS)
@pytest.mark.parametrize("B, H, L, D", [(1, 1, 1, 32), (3, 8, 17, 64), (3, 2, 196, 32)])
def test_sdpa_backend_matches_reference_and_is_not_automatic_with_masked_keys(B, H, L, D, keep_fraction):
    _check_backend("sdpa", B, H, L, D, keep_fraction, torch.float32)
    q, k, v, keep, _ = _inputs(1, 1, 5, 32, 0.5, torch.float32, seed=0)
    with torch.no_grad():
        masked_attention(q, k, v, keep, backend=None)
    assert last_backend("masked_attention") != "sdpa"


# --------------------------------------------------------------------------------------------
# The automatic CPU rule: forward-only, dropout 0, no key masked, and float32 with B*H*L*L*D below
# 2^21, bfloat16 with head dim >= 64 or float16 -> torch's SDPA without a mask; anything else -> the
# priority order (cpp here). Outputs are checked against
# softmax(s q k^T) v written out below (no key is masked, so that is the whole definition),
# gradients against the reference.

def _dense_attention(q, k, v):
    q, k, v = q.double(), k.double(), v.double()
    return torch.softmax((q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5, dim=-1) @ v


RULE_SHAPES = [(1, 1, 1, 32), (3, 8, 17, 64), (2, 8, 196, 64), (1, 2, 784, 64)]


# (B, H, L, D) and what a float32 forward-only call that masks no key runs: SDPA strictly below 2^21
# multiply-adds in the score product, the C++ kernel from there on (the boundary on both sides).
# bfloat16 runs SDPA from head dim 64 on and the C++ kernel below it, at every size.
RULE_CASES = [((1, 1, 1, 32), "sdpa"), ((3, 8, 17, 64), "sdpa"), ((3, 8, 64, 16), "sdpa"),
              ((4, 8, 64, 15), "sdpa"), ((4, 8, 64, 16), "cpp"), ((2, 8, 196, 64), "cpp"), ((1, 2, 784, 64), "cpp")]


@needs_cpp
@pytest.mark.parametrize("shape, expected", RULE_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_auto_forward_only_without_masked_keys_runs_sdpa_when_small(shape, expected, dtype):
    B, H, L, D = shape
    if dtype == torch.bfloat16:
        expected = "sdpa" if D >= 64 else "cpp"
    q, k, v, keep, _ = _inputs(B, H, L, D, 1.0, dtype, seed=L + D)
    with torch.no_grad():
        out = masked_attention(q, k, v, keep)
    assert last_backend("masked_attention") == expected
    assert out.dtype == dtype and out.shape == q.shape
    want = _dense_attention(q, k, v)
    if dtype == torch.float32:
        _assert_close(f"auto {expected} out", out, want, 1e-5, 1e-5)
    else:   # the 2x-of-PyTorch-bfloat16 rule of the kernels
        kernel_err = (out.double() - want).abs().max().item()
        torch_err = (_bf16_torch(q.detach(), k.detach(), v.detach(), keep).double() - want).abs().max().item()
        assert kernel_err <= BF16_ERROR_FACTOR * torch_err + BF16_ATOL, (kernel_err, torch_err)


@needs_cpp
@pytest.mark.parametrize("B, H, L, D", RULE_SHAPES)
def test_auto_with_gradients_runs_cpp_and_matches_reference(B, H, L, D):
    q, k, v, keep, grad = _inputs(B, H, L, D, 1.0, torch.float32, seed=B + L)
    got = _run(lambda *a: masked_attention(*a), q, k, v, keep, grad)
    assert last_backend("masked_attention") == "cpp"
    _assert_close("auto out", got[0], _dense_attention(q, k, v), 1e-5, 1e-5)
    want = _run(masked_attention_reference, q, k, v, keep, grad)
    for name, a, b in zip(("out", "grad_q", "grad_k", "grad_v"), got, want):
        _assert_close(f"auto {name}", a, b, *TOLERANCES[torch.float32])


@needs_cpp
@pytest.mark.parametrize("case, expected", [
    ("all kept, no grad", "sdpa"),
    ("all kept, inference_mode", "sdpa"),
    ("all kept, grad mode but no input needs a gradient", "sdpa"),
    ("all kept, inputs need gradients", "cpp"),
    ("all kept, dropout", "cpp"),
    ("one key masked", "cpp"),
    ("a sample keeps nothing", "cpp"),
    ("forced cpp", "cpp"),
    ("forced auto", "sdpa"),
    ("env forces reference", "reference"),
    ("float64", "cpp"),
    ("bfloat16", "cpp"),
    ("float16", "sdpa"),
])
def test_auto_rule_cases(monkeypatch, case, expected):
    B, H, L, D = 2, 2, 9, 8
    q, k, v, keep, _ = _inputs(B, H, L, D, 1.0, torch.float32, seed=3)
    q, k, v = q.detach(), k.detach(), v.detach()
    kwargs, context = {}, torch.no_grad()
    if case == "all kept, inference_mode":
        context = torch.inference_mode()
    elif case == "all kept, grad mode but no input needs a gradient":
        context = torch.enable_grad()
    elif case == "all kept, inputs need gradients":
        q.requires_grad_()
        context = torch.enable_grad()
    elif case == "all kept, dropout":
        kwargs = dict(dropout_p=0.1, seed=1)
    elif case == "one key masked":
        keep[1, 4] = False
    elif case == "a sample keeps nothing":
        keep[0] = False
    elif case == "forced cpp":
        kwargs = dict(backend="cpp")
    elif case == "forced auto":
        kwargs = dict(backend="auto")
    elif case == "env forces reference":
        monkeypatch.setenv("SCOB_FAST_MASKED_ATTENTION_BACKEND", "reference")
    elif case in ("float64", "bfloat16", "float16"):
        q, k, v = (t.to(getattr(torch, case)) for t in (q, k, v))
    with context:
        out = masked_attention(q, k, v, keep, **kwargs)
    assert last_backend("masked_attention") == expected
    if "dropout" not in case:   # against the definition in float64 on the same (rounded) inputs
        tol = {torch.bfloat16: 1e-2, torch.float16: 2e-3}.get(q.dtype, 1e-5)
        _assert_close(case, out, masked_attention_reference(q.double(), k.double(), v.double(), keep), tol, tol)


@needs_cpp
@pytest.mark.parametrize("masked_key", [False, True])
def test_cpp_forward_allocates_kept_key_panels_only_when_it_gathers(masked_key):
    # float32 with every key kept is read in place: the peak is the output plus small buffers, where
    # the K and V panels alone would be twice the output. One masked key brings the panels back.
    from bench._common import peak_memory_bytes
    B, H, L, D = 8, 8, 256, 64
    q, k, v, keep, _ = _inputs(B, H, L, D, 1.0, torch.float32, seed=11)
    q, k, v = q.detach(), k.detach(), v.detach()
    if masked_key:
        keep[0, 5] = False
    out_bytes = B * H * L * D * 4
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # one worker's score scratch (under 0.5 MiB here) instead of one per thread
    try:
        with torch.no_grad():
            peak = peak_memory_bytes(lambda: masked_attention(q, k, v, keep, backend="cpp"))
    finally:
        torch.set_num_threads(threads)
    if masked_key:
        assert peak >= out_bytes + 2 * out_bytes * (L - 1) // L, peak / out_bytes
    else:
        assert peak < 1.5 * out_bytes, peak / out_bytes


@needs_cpp
def test_rule_benchmark_records_what_the_rule_ran(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bench.masked_attention_rule", "--shapes", "2,2,9,8;1,2,16,64",
                           "--rounds", "1", "--budget-s", "0", "--out-dir", str(tmp_path)],
                          cwd=Path(__file__).resolve().parent.parent,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "masked_attention_rule.json").read_text())["results"]
    ran = {(r["dtype"], r["D"]): r["ran"] for r in rows if r["backend"] == "auto"}
    assert ran == {("float32", 8): "sdpa", ("float32", 64): "sdpa", ("bfloat16", 8): "cpp", ("bfloat16", 64): "sdpa"}
    assert all(isinstance(r["speedup"], float) and r["median_ms"] > 0 for r in rows)


@needs_cpp
def test_auto_rule_is_not_applied_while_compiling():
    q, k, v, keep, _ = _inputs(2, 2, 16, 8, 1.0, torch.float32, seed=5)
    q, k, v = q.detach(), k.detach(), v.detach()
    compiled = torch.compile(lambda q, k, v, keep: masked_attention(q, k, v, keep) * 2.0, backend="aot_eager",
                             fullgraph=True)   # fullgraph: reading key_keep would be a graph break
    with torch.no_grad():
        out = compiled(q, k, v, keep)
    _assert_close("compiled auto", out, 2.0 * _dense_attention(q, k, v), 1e-5, 1e-5)


def test_encoder_eval_without_mask_runs_sdpa():
    from scob_fast.models.masked_encoder import MaskedTransformerEncoder
    torch.manual_seed(6)
    enc = MaskedTransformerEncoder(32, 4, 64, dropout=0.1, num_layers=1).eval()
    x = torch.randn(2, 10, 32)
    theirs = _torch_encoder(32, 4, 64, 1).eval()
    theirs.load_state_dict(enc.state_dict())
    with torch.no_grad():
        out = enc(x)
        assert last_backend("masked_attention") == "sdpa"
        _assert_close("eval encoder, auto", out, theirs(x), 2e-5, 2e-5)

"""The Triton kernels' launch configurations per GPU target, without a GPU, and on one when there is.

- the selection functions (scob_fast/kernels/<op>.py `launch_config`) for every target and dtype:
  well-formed choices, and each one is a configuration scripts/aot_compile_check.py compiled for that
  target without a spill and within the target's shared memory (bench/results/aot_compile.json);
- one real ahead-of-time compile for sm_90 (skipped when Triton's CUDA backend cannot load here);
- the dropout hash built from 32-bit halves against the 64-bit counter formula (interpreter or GPU);
- on a GPU with TRITON_INTERPRET=0: the kernels of this device's configurations against a dense
  formula written here, and the driver's register / spill / shared-memory figures of what was
  compiled against the AOT record (tests/conftest.py sets TRITON_INTERPRET=1 unless it is set: run
  these with TRITON_INTERPRET=0, as scripts/gpu_check.sh does).
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scob_fast import env
from scob_fast.kernels import label_contrastive as lc_kernels
from scob_fast.kernels import masked_attention as ma_kernels
from scob_fast.kernels import targets

ROOT = Path(__file__).resolve().parent.parent
AOT_RESULTS = ROOT / "bench" / "results" / "aot_compile.json"
# Per-block opt-in shared memory, KB, of the CUDA C++ Programming Guide's table (see targets.py).
GUIDE_SHARED_KB = {80: 163, 86: 99, 89: 99, 90: 227}
DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _next_power_of_2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def _cuda_backend_missing():
    """None when Triton can compile for CUDA here (its backend loads and its ptxas exists)."""
    try:
        from triton import knobs
        from triton.backends.compiler import GPUTarget
        from triton.compiler import make_backend
        make_backend(GPUTarget("cuda", 90, 32))
        ptxas = knobs.nvidia.ptxas.path
    except Exception as exc:  # noqa: BLE001 - any failure means: cannot compile here
        return f"Triton's CUDA backend does not load: {type(exc).__name__}: {exc}"
    return None if ptxas and os.access(ptxas, os.X_OK) else f"Triton's ptxas is missing ({ptxas})"


ON_GPU = torch.cuda.is_available() and not env.triton_interpreting()
needs_gpu = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU and TRITON_INTERPRET=0 (scripts/gpu_check.sh)")


# ------------------------------------------------------------------------------------------------
# Selection functions, per target and dtype

def test_shared_memory_limits_are_the_guides():
    assert targets.SHARED_MEMORY_PER_BLOCK == {t: kb * 1024 for t, kb in GUIDE_SHARED_KB.items()}
    assert targets.TARGETS == (80, 86, 89, 90)


@pytest.mark.parametrize("arch, expected", [(80, 80), (86, 86), (89, 89), (90, 90), (75, 86), (87, 86),
                                            (100, 86), (120, 86), (None, None)])
def test_unchecked_devices_use_the_smallest_shared_memory_configs(arch, expected):
    assert targets.config_target(arch) == expected


MA_CASES = list(itertools.product(targets.TARGETS, DTYPES, (1, 8, 16, 17, 33, 64, 100, 128, 200, 256), (False, True),
                                  ma_kernels.KERNELS))


@pytest.mark.parametrize("target, dtype, head_dim, dropout, kernel", MA_CASES)
def test_masked_attention_config_is_well_formed(target, dtype, head_dim, dropout, kernel):
    cfg = ma_kernels.launch_config(kernel, dtype, head_dim, dropout, target)
    assert cfg["BLOCK_D"] == max(16, _next_power_of_2(head_dim))
    for name in ("BLOCK_M", "BLOCK_N"):
        assert cfg[name] in (16, 32, 64, 128), (name, cfg)
    assert cfg["num_warps"] in (2, 4, 8) and cfg["num_stages"] in (1, 2, 3, 4), cfg
    assert cfg["maxnreg"] == 255, cfg   # ptxas gets the full register budget (targets.py)
    # The two 16-bit types differ only in the tensor-core instruction: one configuration.
    if dtype != torch.float32:
        other = torch.float16 if dtype == torch.bfloat16 else torch.bfloat16
        assert cfg == ma_kernels.launch_config(kernel, other, head_dim, dropout, target)


LC_CASES = list(itertools.product(targets.TARGETS, DTYPES, (1, 16, 17, 32, 64, 100, 256, 2048), lc_kernels.KERNELS))


@pytest.mark.parametrize("target, dtype, dim, kernel", LC_CASES)
def test_label_contrastive_config_is_well_formed(target, dtype, dim, kernel):
    cfg = lc_kernels.launch_config(kernel, dtype, dim, target)
    assert cfg["BLOCK_D"] == max(16, min(64, _next_power_of_2(dim)))
    for name in ("BLOCK_M", "BLOCK_N"):
        assert cfg[name] in (16, 32, 64, 128), (name, cfg)
    assert cfg["num_warps"] in (2, 4, 8) and cfg["num_stages"] in (1, 2, 3, 4), cfg


@pytest.mark.parametrize("dtype", DTYPES)
def test_interpreter_keeps_its_configuration(dtype):
    # TRITON_INTERPRET=1 (no target): the blocks the interpreter tests were written against.
    for kernel, head_dim, dropout in itertools.product(ma_kernels.KERNELS, (8, 64, 256), (False, True)):
        cfg = ma_kernels.launch_config(kernel, dtype, head_dim, dropout, None)
        assert (cfg["BLOCK_M"], cfg["BLOCK_N"]) == (64, 64) and "maxnreg" not in cfg
    for kernel, dim in itertools.product(lc_kernels.KERNELS, (8, 256)):
        cfg = lc_kernels.launch_config(kernel, dtype, dim, None)
        assert (cfg["BLOCK_N"], cfg["BLOCK_M"], cfg["num_warps"]) == (64, 64, 4)


def _aot_records():
    if not AOT_RESULTS.is_file():
        pytest.fail(f"{AOT_RESULTS} is missing: run scripts/aot_compile_check.py")
    data = json.loads(AOT_RESULTS.read_text())
    assert data["summary"]["complete"], "regenerate with: scripts/aot_compile_check.py (all targets, ops, dtypes)"
    return data["results"]


def _launched(record: dict) -> tuple:
    cx = record["constexprs"]
    return (cx["BLOCK_M"], cx["BLOCK_N"], cx["BLOCK_D"], record["num_warps"], record["num_stages"], record["maxnreg"])


def _selected(record: dict) -> tuple:
    arch, dtype = int(record["target"][3:]), getattr(torch, record["dtype"])
    if record["op"] == "masked_attention":
        kernel = record["kernel"].replace("_masked_attention_", "").replace("_kernel", "")
        cfg = ma_kernels.launch_config(kernel, dtype, record["dim"], record["dropout"], arch)
    else:
        kernel = record["kernel"].replace("_label_contrastive_", "").replace("_kernel", "")
        cfg = lc_kernels.launch_config(kernel, dtype, record["dim"], arch)
    return (cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_D"], cfg["num_warps"], cfg["num_stages"], cfg["maxnreg"])


def test_every_selected_config_was_compiled_within_the_limits():
    records = _aot_records()
    seen = set()
    for r in records:
        where = f"{r['target']} {r['kernel']} {r['dtype']} dim={r['dim']}"
        assert "error" not in r, f"{where}: {r['error']}"
        # The table and the check agree: a changed table needs a new AOT run.
        assert _launched(r) == _selected(r), f"{where}: launch_config changed since bench/results/aot_compile.json"
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, f"{where}: spills"
        assert 0 < r["shared"] <= GUIDE_SHARED_KB[int(r["target"][3:])] * 1024, f"{where}: shared {r['shared']}"
        assert 0 < r["registers"] <= 255 and r["problems"] == [], where
        seen.add((r["op"], r["target"], r["dtype"], r["dim"], r["kernel"], r.get("dropout")))
    # ... and it covered every target, dtype, block width and kernel.
    ma_names = {f"_masked_attention_{k}_kernel" for k in ma_kernels.KERNELS}
    lc_names = {f"_label_contrastive_{k}_kernel" for k in lc_kernels.KERNELS}
    for t, dtype in itertools.product(targets.TARGETS, ("bfloat16", "float16", "float32")):
        for dim, dropout, name in itertools.product((16, 32, 64, 128, 256), (False, True), ma_names):
            assert ("masked_attention", f"sm_{t}", dtype, dim, name, dropout) in seen
        for dim, name in itertools.product((16, 32, 256), lc_names):
            assert ("label_contrastive", f"sm_{t}", dtype, dim, name, None) in seen


@pytest.mark.skipif(_cuda_backend_missing() is not None, reason=str(_cuda_backend_missing()))
def test_one_real_aot_compile(tmp_path):
    environ = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "aot.json"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "aot_compile_check.py"), "--targets", "86",
                             "--ops", "label_contrastive", "--dtypes", "bfloat16", "--limit", "1", "--jobs", "1",
                             "--out", str(out)], capture_output=True, text=True, env=environ, timeout=600)
    if result.returncode == 2:
        pytest.skip(result.stdout.strip())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (record,) = json.loads(out.read_text())["results"]
    assert record["target"] == "sm_86" and record["kernel"] == "_label_contrastive_fwd_kernel"
    assert 0 < record["registers"] <= 255 and record["spill_stores"] == 0
    assert 0 < record["shared"] <= 99 * 1024
    assert _launched(record) == _selected(record)


# ------------------------------------------------------------------------------------------------
# The dropout hash from 32-bit halves (scob_fast/kernels/masked_attention.py `_dropout_bits`)

def _lowbias32(x: int) -> int:
    """lowbias32 of a uint32, transcribed from the integer-hash formula with Python integers."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def _expected_bits(bh: int, rows, keys, L: int, seed: int) -> list[list[int]]:
    out = []
    for m in rows:
        line = []
        for k in keys:
            counter = (bh * L + m) * L + k
            line.append(_lowbias32(_lowbias32(((counter >> 32) + seed) & 0xFFFFFFFF) ^ (counter & 0xFFFFFFFF)))
        out.append(line)
    return out


@pytest.mark.skipif(not (env.triton_interpreting() or ON_GPU), reason="needs the Triton interpreter or a GPU")
@pytest.mark.parametrize("bh, L, seed", [(0, 17, 0), (3, 196, 12345), (900, 70000, 0xFFFFFFFF), (70, 513000, 7)])
def test_dropout_bits_match_the_64_bit_counter(bh, L, seed):
    import triton
    import triton.language as tl

    @triton.jit
    def probe(rows_ptr, keys_ptr, out_ptr, bh, L, seed, M: tl.constexpr, N: tl.constexpr):
        rows = tl.load(rows_ptr + tl.arange(0, M))
        keys = tl.load(keys_ptr + tl.arange(0, N))
        bits = ma_kernels._dropout_bits(bh, rows, keys, L, seed)
        tl.store(out_ptr + tl.arange(0, M)[:, None] * N + tl.arange(0, N)[None, :], bits.to(tl.int64))

    # Rows and keys whose counters sit on either side of a 2^32 boundary (a carry into the high half):
    # counter (bh L + m) L + k crosses j 2^32 at key k = j 2^32 - (bh L + m) L of row m.
    rows, keys = [0, 1, L // 2, L - 1], [0, 1, L // 3, L - 1]
    for j in range(((bh * L * L) >> 32) + 1, (((bh + 1) * L * L) >> 32) + 1):
        row = (j << 32) // L
        if len(rows) < 16 and 0 <= row - bh * L < L:
            rows.append(row - bh * L)
            keys += [k for k in ((j << 32) - row * L - 1, (j << 32) - row * L) if 0 <= k < L][:16 - len(keys)]
    rows += [0] * (_next_power_of_2(len(rows)) - len(rows))
    keys += [0] * (_next_power_of_2(len(keys)) - len(keys))
    device = "cuda" if ON_GPU else "cpu"
    rows_t = torch.tensor(rows, dtype=torch.int32, device=device)
    keys_t = torch.tensor(keys, dtype=torch.int32, device=device)
    out = torch.empty(len(rows), len(keys), dtype=torch.int64, device=device)
    probe[(1,)](rows_t, keys_t, out, bh, L, seed, M=len(rows), N=len(keys))
    assert out.cpu().tolist() == _expected_bits(bh, rows, keys, L, seed)


# ------------------------------------------------------------------------------------------------
# On a GPU: this device's configurations run, match a dense formula, and fit as the AOT check said

def _dense_attention(q, k, v, keep, scale, dropout_p, seed):
    """softmax over kept keys of scale * q k^T (zero rows where a sample keeps nothing), dropout by the
    lowbias32 counter hash, times v; float64."""
    q, k, v = q.double(), k.double(), v.double()
    B, H, L, _ = q.shape
    keeps_any = keep.any(dim=1)
    s = (q @ k.transpose(-1, -2)) * scale
    # An empty sample attends everywhere and is multiplied by 0 (no NaN in its gradients).
    s = s.masked_fill(~(keep | ~keeps_any[:, None])[:, None, None, :], float("-inf"))
    p = torch.softmax(s, dim=-1) * keeps_any[:, None, None, None]
    if dropout_p > 0:
        counter = torch.arange(B * H * L * L, device=q.device, dtype=torch.int64).view(B, H, L, L)
        mask32 = 0xFFFFFFFF

        def mix(x):
            x = x ^ (x >> 16)
            x = (x * 0x7FEB352D) & mask32
            x = x ^ (x >> 15)
            x = (x * 0x846CA68B) & mask32
            return x ^ (x >> 16)
        bits = mix(mix(((counter >> 32) + seed) & mask32) ^ (counter & mask32))
        p = p * (bits >= int(dropout_p * 2 ** 32)) / (1 - dropout_p)
    return p @ v


# atol, rtol against the float64 formula: float32 runs IEEE dots; 16-bit inputs round P and dS to 16 bits.
GPU_TOLERANCES = {torch.float32: (2e-5, 1e-4), torch.bfloat16: (3e-2, 3e-2), torch.float16: (5e-3, 5e-3)}
# The shapes of scripts/aot_compile_check.py (Scob's layout: views of one [B, L, 3, H, D] projection),
# so that each kernel compiled here has the AOT record's specialisation.
AOT_B, AOT_H, AOT_L = 2, 2, 196


@needs_gpu
@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("head_dim", [16, 32, 64, 128, 256])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_masked_attention_matches_dense_formula(dtype, head_dim, dropout):
    from scob_fast.ops.masked_attention import masked_attention
    g = torch.Generator(device="cuda").manual_seed(head_dim)
    qkv = torch.randn(AOT_B, AOT_L, 3, AOT_H, head_dim, device="cuda", generator=g).to(dtype)
    q, k, v = (qkv[:, :, i].permute(0, 2, 1, 3).detach().requires_grad_() for i in range(3))
    keep = torch.rand(AOT_B, AOT_L, device="cuda", generator=g) < 0.5
    keep[-1] = False  # a sample that keeps no key: zero output and gradients
    grad = torch.randn(AOT_B, AOT_H, AOT_L, head_dim, device="cuda", generator=g).to(dtype)
    out = masked_attention(q, k, v, keep, dropout_p=dropout, seed=11, backend="triton")
    got = (out, *torch.autograd.grad(out, (q, k, v), grad))
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    want_out = _dense_attention(q64, k64, v64, keep, head_dim ** -0.5, dropout, 11)
    want = (want_out, *torch.autograd.grad(want_out, (q64, k64, v64), grad.double()))
    atol, rtol = GPU_TOLERANCES[dtype]
    for name, a, b in zip(("out", "grad_q", "grad_k", "grad_v"), got, want):
        assert a.dtype == dtype and torch.isfinite(a).all(), name
        err = (a.double() - b).abs().max().item()
        assert err <= atol + rtol * b.abs().max().item(), (name, err, b.abs().max().item())


def _compiled(fn):
    """The kernels Triton's JIT compiled for `fn` on the current device in this process."""
    import triton
    device = triton.runtime.driver.active.get_current_device()
    return list(fn.device_caches[device][0].values()) if device in fn.device_caches else []


@needs_gpu
def test_gpu_compiled_kernels_fit_and_match_the_aot_record():
    from scob_fast.ops.label_contrastive import label_contrastive_loss
    from scob_fast.ops.masked_attention import masked_attention
    g = torch.Generator(device="cuda").manual_seed(0)
    for dtype, head_dim, dropout in itertools.product(DTYPES, (16, 32, 64, 128, 256), (0.0, 0.1)):
        qkv = torch.randn(AOT_B, AOT_L, 3, AOT_H, head_dim, device="cuda", generator=g).to(dtype)
        q, k, v = (qkv[:, :, i].permute(0, 2, 1, 3).detach().requires_grad_() for i in range(3))
        keep = torch.rand(AOT_B, AOT_L, device="cuda", generator=g) < 0.5
        masked_attention(q, k, v, keep, dropout_p=dropout, seed=7, backend="triton").sum().backward()
    for dtype, dim, (has_w, logit) in itertools.product(DTYPES, (16, 32, 256), ((False, False), (True, True))):
        a = torch.randn(256, dim, device="cuda", generator=g).to(dtype).requires_grad_()
        c = torch.randn(80, dim, device="cuda", generator=g).to(dtype).requires_grad_()
        ya, yc = torch.randint(0, 20, (256,), device="cuda"), torch.randint(0, 20, (80,), device="cuda")
        w = torch.rand(20, 20, device="cuda") + 0.5 if has_w else None
        label_contrastive_loss(a, ya, c, yc, temperature=0.2, class_weights=w, weight_mode="logit" if logit else "exp",
                               backend="triton").backward()
    arch = targets.arch_of(torch.device("cuda"))
    limit = torch.cuda.get_device_properties(0).shared_memory_per_block_optin
    aot = {}
    if arch in targets.TARGETS and AOT_RESULTS.is_file():
        for r in json.loads(AOT_RESULTS.read_text())["results"]:
            if r["target"] == f"sm_{arch}" and "registers" in r:
                aot.setdefault((r["kernel"], json.dumps(r["constexprs"], sort_keys=True)), set()).add(r["registers"])
    functions = [ma_kernels._masked_attention_fwd_kernel, ma_kernels._masked_attention_bwd_dkdv_kernel,
                 ma_kernels._masked_attention_bwd_dq_kernel, lc_kernels._label_contrastive_fwd_kernel,
                 lc_kernels._label_contrastive_bwd_anchor_kernel, lc_kernels._label_contrastive_bwd_candidate_kernel]
    compared = 0
    for fn in functions:
        kernels = _compiled(fn)
        assert kernels, f"{fn.__name__} was not compiled"
        for kernel in kernels:
            assert kernel.n_spills == 0, (fn.__name__, kernel.n_regs, kernel.n_spills)
            assert kernel.metadata.shared <= limit, (fn.__name__, kernel.metadata.shared, limit)
            constexprs = {name: value for (index,), value in kernel.src.constants.items()
                          if (name := fn.arg_names[index]) in {p.name for p in fn.params if p.is_constexpr}}
            expected = aot.get((fn.__name__, json.dumps(constexprs, sort_keys=True)))
            if expected:
                compared += 1
                assert kernel.n_regs in expected, (fn.__name__, constexprs, kernel.n_regs, expected)
    if arch in targets.TARGETS:
        assert compared > 0, "no compiled kernel matched an AOT record"

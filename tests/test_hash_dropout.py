"""hash_dropout: every backend against the reference (exact: the mask is integer arithmetic and the
scaling one multiply), forward and backward, over shapes, dtypes and drop rates; the keep rate;
the module's nn.Dropout behaviour; dispatch."""
from __future__ import annotations

import pytest
import torch

from scob_fast import _ext
from scob_fast.ops import last_backend
from scob_fast.ops.counter_hash import keep_mask
from scob_fast.ops.hash_dropout import HashDropout, hash_dropout, hash_dropout_reference

needs_cpp = pytest.mark.skipif(not _ext.cpp_available(), reason="scob_fast._C not built")
BACKENDS = [pytest.param("cpp", marks=needs_cpp), "reference"]
# 4095 / 4096 / 4097 and 3 x 4096 + 5 straddle the C++ kernel's 4096-element blocks
SHAPES = [(7,), (4095,), (4096,), (4097,), (3, 4096 + 5 // 3 + 1), (2, 64, 33), (16, 16, 128)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9])
def test_forward_matches_the_definition(backend, shape, dtype, p):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    got = hash_dropout(x, p, seed=77, backend=backend)
    assert last_backend("hash_dropout") == backend
    keep = keep_mask(x.numel(), p, 77).view(shape)
    # written independently of the op: the survivors are x times 1 / (1 - p) in x's dtype, the rest 0
    want = torch.where(keep, x * (1.0 / (1.0 - p)), torch.zeros((), dtype=dtype))
    assert got.dtype == dtype and got.shape == x.shape
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@needs_cpp
@pytest.mark.parametrize("layout", ["transposed", "sliced", "channels_last"])
def test_non_contiguous_inputs_use_row_major_indices(layout):
    base = torch.randn(4, 6, 10, 12)
    x = {"transposed": base.transpose(1, 3), "sliced": base[:, ::2, 1:],
         "channels_last": base.contiguous(memory_format=torch.channels_last)}[layout]
    got = hash_dropout(x, 0.3, seed=5, backend="cpp")
    torch.testing.assert_close(got, hash_dropout_reference(x.contiguous(), 0.3, 5), rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_is_the_same_mask(backend, dtype):
    x = torch.randn(3, 50, 40).to(dtype).requires_grad_(True)
    grad = torch.randn(3, 50, 40).to(dtype)
    hash_dropout(x, 0.25, seed=9, backend=backend).backward(grad)
    keep = keep_mask(x.numel(), 0.25, 9).view(x.shape)
    torch.testing.assert_close(x.grad, torch.where(keep, grad * (1.0 / 0.75), torch.zeros((), dtype=dtype)),
                               rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend):
    x = torch.randn(5, 37, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: hash_dropout(t, 0.4, 123, backend=backend), (x,))


@needs_cpp
def test_opcheck():
    x = torch.randn(8, 300, requires_grad=True)
    torch.library.opcheck(torch.ops.scob_fast.hash_dropout.default, (x, 0.2, 31))


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_keep_rate_and_independence_of_seeds(p):
    n = 200_000
    a, b = keep_mask(n, p, 1), keep_mask(n, p, 2)
    # binomial standard deviation of the mean is <= 0.0012 at n = 2e5: 5 sigma
    assert abs(float(a.float().mean()) - (1 - p)) < 0.006
    both = float((a & b).float().mean())
    assert abs(both - (1 - p) ** 2) < 0.006
    assert torch.equal(a, keep_mask(n, p, 1))
    # neighbouring elements are not correlated
    pairs = float((a[1:] & a[:-1]).float().mean())
    assert abs(pairs - (1 - p) ** 2) < 0.006


@needs_cpp
def test_module_behaves_as_dropout():
    layer = HashDropout(0.3)
    x = torch.randn(4, 9, 16)
    assert layer.state_dict() == {} and "p=0.3" in repr(layer)
    layer.eval()
    assert layer(x) is x
    layer.train()
    torch.manual_seed(3)
    first = layer(x)
    torch.manual_seed(3)
    assert torch.equal(first, layer(x))          # repeatable under torch.manual_seed
    assert not torch.equal(first, layer(x))      # a new seed on every call
    assert HashDropout(0.0).train()(x) is x
    dropped = float((first == 0).float().mean())
    assert 0.2 < dropped < 0.4


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="argument 'p'"):
        hash_dropout(torch.randn(3), 1.0, 0)
    with pytest.raises(ValueError, match="argument 'x'"):
        hash_dropout(torch.arange(3), 0.1, 0)
    with pytest.raises(ValueError, match="p must be in"):
        HashDropout(-0.1)


@needs_cpp
def test_forcing(monkeypatch):
    x = torch.randn(100)
    monkeypatch.setenv("SCOB_FAST_BACKEND", "triton")        # forces the other ops: this one picks its own
    hash_dropout(x, 0.1, 0)
    assert last_backend("hash_dropout") == "cpp"
    monkeypatch.setenv("SCOB_FAST_BACKEND", "reference")
    hash_dropout(x, 0.1, 0)
    assert last_backend("hash_dropout") == "reference"
    monkeypatch.setenv("SCOB_FAST_HASH_DROPOUT_BACKEND", "triton")
    with pytest.raises(ValueError, match="unknown backend 'triton'"):
        hash_dropout(x, 0.1, 0)

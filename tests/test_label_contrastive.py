"""label_contrastive_loss: every backend against the dense reference, forward and both input gradients."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from scob_fast import _ext
from scob_fast.ops import BackendUnavailable, last_backend
from scob_fast.ops import label_contrastive as lc
from scob_fast.ops.label_contrastive import label_contrastive_loss, label_contrastive_loss_reference

# (atol, rtol) of a kernel against the reference computed in the same dtype; 16-bit inputs are
# judged against a float32 reference by the 2x-of-plain-PyTorch rule instead (test_low_precision).
TOLERANCES = {torch.float64: (1e-9, 1e-7), torch.float32: (2e-5, 2e-4)}

needs_cpp = pytest.mark.skipif(not _ext.cpp_available(), reason=str(_ext.load_error()))
needs_triton = pytest.mark.skipif(lc.DISPATCHER.availability()["triton"] is not None, reason="triton is not installed")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available() or lc.DISPATCHER.availability()["cuda"] is not None,
                                reason="needs a GPU and scob_fast._C built with CUDA")

# Kernel backends and the device their tensors live on (Triton runs in its interpreter on CPU here).
KERNELS = [pytest.param("cpp", "cpu", marks=needs_cpp, id="cpp"),
           pytest.param("triton", "cuda" if torch.cuda.is_available() else "cpu", marks=needs_triton, id="triton"),
           pytest.param("cuda", "cuda", marks=needs_cuda, id="cuda")]
# ... and the dense PyTorch path (CPU), which the flag and shape tests cover as well.
PATHS = KERNELS + [pytest.param("dense", "cpu", id="dense")]


def assert_close(actual, expected, atol, rtol, name):
    """allclose that says how many elements differ, where, and by how much (NaN/inf mismatches too)."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    bad = ~torch.isclose(actual, expected, atol=atol, rtol=rtol, equal_nan=True)
    if bad.any():
        where = bad.nonzero()[:5].tolist()
        finite = torch.isfinite(actual) & torch.isfinite(expected)
        diff = (actual - expected).abs()[finite].max().item() if finite.any() else float("nan")
        nan_mismatch = int((torch.isnan(actual) != torch.isnan(expected)).sum())
        raise AssertionError(f"{name}: {int(bad.sum())}/{bad.numel()} elements differ (atol={atol}, rtol={rtol}); "
                             f"max |diff| {diff:.3g}; first at {where}: {actual[bad][:5].tolist()} vs "
                             f"{expected[bad][:5].tolist()}; NaN mismatches {nan_mismatch}")


def make_case(n, m, d, c, *, self_mode=False, weights=False, extra=None, dtype=torch.float32, device="cpu",
              density=1.0, seed=0):
    """Normalised features, labels in [0, C) with a share (1 - density) set to -1 (ignored)."""
    g = torch.Generator().manual_seed(seed)
    case = {"anchors": F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)}
    labels = torch.randint(0, c, (n,), generator=g)
    case["anchor_labels"] = torch.where(torch.rand(n, generator=g) < density, labels, -1)
    if not self_mode:
        case["candidates"] = F.normalize(torch.randn(m, d, generator=g, dtype=torch.float64), dim=1)
        labels = torch.randint(0, c, (m,), generator=g)
        case["candidate_labels"] = torch.where(torch.rand(m, generator=g) < density, labels, -1)
    if weights:
        case["class_weights"] = torch.rand(c, c, generator=g, dtype=torch.float64)
    if extra == "logit":
        case["extra_positive"] = torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1
    elif extra == "features":
        case["extra_positive"] = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    for key, value in case.items():
        value = value.to(device)
        case[key] = value.to(dtype) if value.dtype.is_floating_point and key != "class_weights" else value
    return case


DIFFERENTIABLE = ("anchors", "candidates", "extra_positive")


def run(fn, case, grad_keys=DIFFERENTIABLE, **kwargs):
    """Loss with reduction='none' and the gradients of a random weighting of it."""
    inputs = {k: (v.detach().clone().requires_grad_(k in grad_keys) if k in DIFFERENTIABLE else v)
              for k, v in case.items()}
    loss = fn(**inputs, **kwargs, reduction="none")
    weights = torch.linspace(0.5, 1.5, loss.numel(), dtype=torch.float64).to(loss.device, loss.dtype)
    if loss.numel():
        (loss * weights).sum().backward()
    grads = {k: inputs[k].grad for k in DIFFERENTIABLE if k in inputs and k in grad_keys}
    return loss.detach(), grads


def compare(backend, case, atol, rtol, **kwargs):
    got, got_grads = run(lambda **a: label_contrastive_loss(**a, backend=backend), case, **kwargs)
    assert last_backend("label_contrastive") == backend
    want, want_grads = run(label_contrastive_loss_reference, case, **kwargs)
    assert_close(got, want, atol, rtol, f"{backend} loss")
    assert torch.isfinite(got).all(), "loss must never be NaN/inf here"
    for key, expected in want_grads.items():
        actual = got_grads[key]
        if expected is None:
            # the reference's autograd leaves a gradient unset when nothing reached it (M = 0, ...)
            assert actual is None or not actual.any(), f"{backend} d{key} should be zero"
            continue
        assert_close(actual, expected, atol, rtol, f"{backend} d{key}")


# ----------------------------------------------------------------------------------------------
# Shapes: N, M in {1, 7, 64, 1000}, D in {16, 128, 256}, C in {1, 5, 80}
# ----------------------------------------------------------------------------------------------

SIZES = [1, 7, 64, 1000]


@needs_cpp
@pytest.mark.parametrize("c", [1, 5, 80])
@pytest.mark.parametrize("d", [16, 128, 256])
@pytest.mark.parametrize("n, m", list(itertools.product(SIZES, SIZES)))
def test_cpp_shapes(n, m, d, c):
    # Cycle the configuration with the shape so that every flag meets large and tiny sizes.
    k = (n * 7 + m * 3 + d + c) % 4
    case = make_case(n, m, d, c, weights=k in (1, 3), extra=(None, "logit", "features", "logit")[k], seed=n + m + d)
    compare("cpp", case, *TOLERANCES[torch.float32], temperature=0.5,
            weight_mode="logit" if k == 3 else "exp", logit_shift=1.0 if k == 3 else 0.0,
            positives="extra_only" if k == 2 else "label")


@needs_cpp
@pytest.mark.parametrize("c", [1, 5, 80])
@pytest.mark.parametrize("d", [16, 128, 256])
@pytest.mark.parametrize("n", SIZES)
def test_cpp_shapes_self(n, d, c):
    case = make_case(n, n, d, c, self_mode=True, weights=c > 1, extra="logit" if d == 128 else None, seed=n + d)
    compare("cpp", case, *TOLERANCES[torch.float32], temperature=0.2)


@needs_triton
@pytest.mark.parametrize("c", [1, 5, 80])
@pytest.mark.parametrize("d", [16, 128, 256])
@pytest.mark.parametrize("n, m", [(1, 1), (1, 64), (7, 7), (64, 1), (64, 7), (7, 64), (64, 64)])
def test_triton_shapes(n, m, d, c):
    k = (n + m + d + c) % 4
    case = make_case(n, m, d, c, weights=k in (1, 3), extra=(None, "logit", "features", "logit")[k], seed=n + m + d)
    compare("triton", case, *TOLERANCES[torch.float32], temperature=0.5,
            weight_mode="logit" if k == 3 else "exp", logit_shift=1.0 if k == 3 else 0.0,
            positives="extra_only" if k == 2 else "label")


@needs_triton
def test_triton_large_interpreted():
    # N = 1000 for Triton: 16 anchor programs, 3 candidate tiles, partial last tiles both ways
    # (1000 x 1000 takes ~15 s in the interpreter; the C++ tests cover it)
    case = make_case(1000, 130, 16, 80, weights=True, extra="logit", seed=3)
    compare("triton", case, *TOLERANCES[torch.float32], temperature=0.5)


# ----------------------------------------------------------------------------------------------
# Every flag combination, every backend
# ----------------------------------------------------------------------------------------------

FLAGS = [dict(self_mode=s, weights=w, extra=e, weight_mode=mode, positives=p, density=dens)
         for s, w, e, mode, p, dens in itertools.product([True, False], [False, True], [None, "logit"],
                                                         ["exp", "logit"], ["label", "extra_only"], [1.0, 0.6])
         if not (p == "extra_only" and e is None)]


@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
@pytest.mark.parametrize("backend, device", PATHS)
def test_flags(backend, device, flags):
    flags = dict(flags)
    self_mode, weight_mode, positives = flags.pop("self_mode"), flags.pop("weight_mode"), flags.pop("positives")
    case = make_case(37, 70, 16, 5, self_mode=self_mode, device=device, seed=len(str(flags)), **flags)
    compare(backend, case, *TOLERANCES[torch.float32], temperature=0.3, weight_mode=weight_mode,
            positives=positives, logit_shift=1.0 if weight_mode == "logit" else 0.5)


@pytest.mark.parametrize("backend, device", PATHS)
@pytest.mark.parametrize("exclude_self", [True, False])
def test_exclude_self_explicit(backend, device, exclude_self):
    # explicit candidates aligned with the anchors (e.g. a second view), with and without excluding j == i
    case = make_case(40, 50, 16, 3, device=device, seed=7)
    compare(backend, case, *TOLERANCES[torch.float32], temperature=0.4, exclude_self=exclude_self)
    self_case = make_case(40, 40, 16, 3, self_mode=True, device=device, seed=8)
    compare(backend, self_case, *TOLERANCES[torch.float32], temperature=0.4, exclude_self=exclude_self)


@pytest.mark.parametrize("backend, device", PATHS)
def test_candidates_without_gradient(backend, device):
    # Scob's bank is detached: only the anchors (and the extra positive) get gradients
    case = make_case(20, 30, 16, 4, weights=True, extra="features", device=device, seed=9)
    compare(backend, case, *TOLERANCES[torch.float32], grad_keys=("anchors",), temperature=1.0,
            weight_mode="logit", logit_shift=1.0, positives="extra_only")


# ----------------------------------------------------------------------------------------------
# Precision: float64 exactness and gradcheck (C++), 16-bit against plain PyTorch
# ----------------------------------------------------------------------------------------------

@needs_cpp
@pytest.mark.parametrize("flags", [dict(self_mode=True), dict(weights=True, extra="logit"),
                                   dict(weights=True, extra="logit", weight_mode="logit", positives="extra_only"),
                                   dict(self_mode=True, weights=True, extra="features", weight_mode="logit")],
                         ids=["supcon", "exp-weights-extra", "scob", "self-logit-extra"])
def test_cpp_float64_and_gradcheck(flags):
    flags = dict(flags)
    kw = dict(temperature=0.3, weight_mode=flags.pop("weight_mode", "exp"), positives=flags.pop("positives", "label"),
              logit_shift=1.0)
    case = make_case(9, 11, 5, 3, dtype=torch.float64, density=0.8, seed=11, **flags)
    compare("cpp", case, *TOLERANCES[torch.float64], **kw)

    names = [k for k in DIFFERENTIABLE if k in case]
    fixed = {k: v for k, v in case.items() if k not in names}

    def fn(*tensors):
        return label_contrastive_loss(**dict(zip(names, tensors)), **fixed, **kw, reduction="none", backend="cpp")

    inputs = tuple(case[k].clone().requires_grad_() for k in names)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend, device", KERNELS)
def test_low_precision(backend, device, dtype):
    """Kernel error against a float32 reference <= 2x plain PyTorch's error in the same dtype."""
    case = make_case(64, 100, 64, 5, weights=True, extra="logit", dtype=dtype, device=device, seed=12)
    case32 = {k: (v.float() if v.dtype == dtype else v) for k, v in case.items()}
    kw = dict(temperature=0.2)
    want, want_grads = run(label_contrastive_loss_reference, case32, **kw)
    got, got_grads = run(lambda **a: label_contrastive_loss(**a, backend=backend), case, **kw)
    plain, plain_grads = run(label_contrastive_loss_reference, case, **kw)
    assert got.dtype == torch.float32 and got_grads["anchors"].dtype == dtype
    for name, x, y, z in [("loss", got, plain, want)] + [(f"d{k}", got_grads[k], plain_grads[k], want_grads[k])
                                                         for k in want_grads]:
        kernel_err = (x.float() - z).abs().max().item()
        plain_err = (y.float() - z).abs().max().item()
        print(f"{backend} {dtype} {name}: kernel err {kernel_err:.3g}, plain {dtype} PyTorch err {plain_err:.3g}")
        # the floor covers the rounding of the returned 16-bit gradient itself
        assert kernel_err <= 2 * plain_err + 1e-3 * z.abs().max().item(), name


# ----------------------------------------------------------------------------------------------
# Definition checks: the reference against hand-computed SupCon and Scob's published InfoNCE
# ----------------------------------------------------------------------------------------------

def test_reference_supcon_by_hand():
    # Three 2-D unit vectors, labels [0, 0, 1], t = 0.5 (Khosla et al. 2020, L_out).
    a = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1])
    t = 0.5
    s = [[1.0, 0.6, 0.0], [0.6, 1.0, 0.8], [0.0, 0.8, 1.0]]
    # anchors 0 and 1 have one positive each (each other); anchor 2 has none and is excluded
    l0 = -math.log(math.exp(s[0][1] / t) / (math.exp(s[0][1] / t) + math.exp(s[0][2] / t)))
    l1 = -math.log(math.exp(s[1][0] / t) / (math.exp(s[1][0] / t) + math.exp(s[1][2] / t)))
    loss, counts = label_contrastive_loss_reference(a, y, temperature=t, reduction="none", return_counts=True)
    assert torch.allclose(loss, torch.tensor([l0, l1, 0.0], dtype=torch.float64), atol=1e-12)
    assert counts.tolist() == [1, 1, 0]
    mean = label_contrastive_loss_reference(a, y, temperature=t)
    assert abs(mean.item() - (l0 + l1) / 2) < 1e-12


def test_reference_supcon_two_positives_by_hand():
    # mean over positives of -log(exp(s_ip/t) / sum_{j != i} exp(s_ij/t)), 4 anchors, labels [0, 0, 0, 1]
    a = F.normalize(torch.tensor([[1.0, 0.2], [0.8, 0.6], [0.3, 1.0], [-1.0, 0.4]], dtype=torch.float64), dim=1)
    y = torch.tensor([0, 0, 0, 1])
    t = 0.7
    s = (a @ a.T).tolist()
    expected = []
    for i in range(3):
        denominator = sum(math.exp(s[i][j] / t) for j in range(4) if j != i)
        positives = [j for j in range(3) if j != i]
        expected.append(sum(-math.log(math.exp(s[i][p] / t) / denominator) for p in positives) / len(positives))
    loss = label_contrastive_loss_reference(a, y, temperature=t)
    assert abs(loss.item() - sum(expected) / 3) < 1e-12


def _scob_published(z, zk, y, protos, proto_valid, weights, t):
    """Scob's InfoNCE as published: logits [cos(z,zk), cos(z,proto_c)...] + 1, times [1, W[y, c]],
    / t, cross-entropy with target 0 (empty bank slots left out)."""
    logits = torch.cat([(z * zk).sum(1, keepdim=True), z @ protos[proto_valid].T], dim=1) + 1
    w = torch.cat([torch.ones(len(y), 1, dtype=z.dtype), weights[y][:, proto_valid]], dim=1)
    return F.cross_entropy(logits * w / t, torch.zeros(len(y), dtype=torch.long))


def test_reference_scob_by_hand():
    # One anchor, two prototypes (classes 0 and 1), anchor class 0, R = [[1, 1], [0.5, 1]] hard-zeroed
    # below 1 -> W = 1 - R^2 = [[0, 0], [1, 0]]: the own prototype keeps weight 0 on its logit.
    z = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    zk = torch.tensor([[0.8, 0.6]], dtype=torch.float64)
    protos = torch.tensor([[0.6, 0.8], [0.0, 1.0]], dtype=torch.float64)
    r = torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    w = 1 - torch.where(r < 1, torch.zeros_like(r), r) ** 2
    t = 0.5
    pos = (0.8 + 1) * 1 / t
    l_own = (0.6 + 1) * 0.0 / t
    l_other = (0.0 + 1) * 1.0 / t
    expected = -math.log(math.exp(pos) / (math.exp(pos) + math.exp(l_own) + math.exp(l_other)))
    got = label_contrastive_loss_reference(z, torch.tensor([0]), protos, torch.tensor([0, 1]), temperature=t,
                                           class_weights=w, extra_positive=zk, positives="extra_only",
                                           weight_mode="logit", logit_shift=1.0)
    assert abs(got.item() - expected) < 1e-12
    assert abs(_scob_published(z, zk, torch.tensor([0]), protos, torch.tensor([True, True]), w, t).item()
               - expected) < 1e-12


@pytest.mark.parametrize("backend", ["reference", "dense", pytest.param("cpp", marks=needs_cpp)])
def test_scob_published_infonce(backend):
    g = torch.Generator().manual_seed(5)
    b, c, d, t = 8, 20, 32, 1.0
    z = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    zk = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    protos = F.normalize(torch.randn(c, d, generator=g, dtype=torch.float64), dim=1)
    valid = torch.rand(c, generator=g) < 0.7
    y = torch.randint(0, c, (b,), generator=g)
    r = torch.rand(c, c, generator=g, dtype=torch.float64)
    r = (r + r.T) / 2
    r[torch.rand(c, c, generator=g) < 0.2] = 1.0
    r.fill_diagonal_(1.0)
    w = 1 - torch.where(r < 1, torch.zeros_like(r), r) ** 2
    expected = _scob_published(z, zk, y, protos, valid, w, t)
    (grad_expected,) = torch.autograd.grad(expected, z)
    labels = torch.where(valid, torch.arange(c), -1)
    got = label_contrastive_loss(z, y, protos, labels, temperature=t, class_weights=w, extra_positive=zk,
                                 positives="extra_only", weight_mode="logit", logit_shift=1.0, backend=backend)
    (grad_got,) = torch.autograd.grad(got, z)
    assert_close(got, expected, 1e-12, 1e-10, "scob loss")
    assert_close(grad_got, grad_expected, 1e-12, 1e-10, "scob dz")


# ----------------------------------------------------------------------------------------------
# Excluded anchors, reductions, counts
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["reference", "dense", pytest.param("cpp", marks=needs_cpp),
                                     pytest.param("triton", marks=needs_triton)])
def test_anchors_without_positive(backend):
    a = F.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(1)), dim=1).requires_grad_()
    unique = torch.arange(6)
    loss, counts = label_contrastive_loss(a, unique, temperature=0.1, return_counts=True, backend=backend)
    assert loss.item() == 0.0 and counts.tolist() == [0] * 6
    loss.backward()
    assert torch.equal(a.grad, torch.zeros_like(a))

    # two of six have a positive, one is ignored (-1): the mean is over the two
    labels = torch.tensor([0, 0, 1, 2, -1, 3])
    a.grad = None
    per_anchor, counts = label_contrastive_loss(a, labels, temperature=0.1, reduction="none", return_counts=True,
                                                backend=backend)
    assert counts.tolist() == [1, 1, 0, 0, 0, 0]
    assert torch.isfinite(per_anchor).all() and (per_anchor[2:] == 0).all()
    mean = label_contrastive_loss(a, labels, temperature=0.1, backend=backend)
    total = label_contrastive_loss(a, labels, temperature=0.1, reduction="sum", backend=backend)
    assert torch.allclose(mean, per_anchor[:2].mean()) and torch.allclose(total, per_anchor.sum())


@pytest.mark.parametrize("backend", ["reference", "dense", pytest.param("cpp", marks=needs_cpp)])
def test_empty_and_ignored_candidates(backend):
    a = F.normalize(torch.randn(5, 8, generator=torch.Generator().manual_seed(2)), dim=1)
    y = torch.tensor([0, 1, 2, 0, 1])
    # all candidates ignored, no extra positive: every anchor excluded, loss 0 (not NaN)
    bank = torch.zeros(3, 8)
    loss = label_contrastive_loss(a, y, bank, torch.full((3,), -1), temperature=0.5, backend=backend)
    assert loss.item() == 0.0
    # with a momentum positive and an empty bank the only term is the positive itself: loss log(1) = 0
    e = torch.ones(5)
    loss = label_contrastive_loss(a, y, bank, torch.full((3,), -1), temperature=0.5, extra_positive=e,
                                  positives="extra_only", weight_mode="logit", logit_shift=1.0, backend=backend)
    assert abs(loss.item()) < 1e-6
    # M = 0 candidates behaves the same
    loss = label_contrastive_loss(a, y, torch.zeros(0, 8), torch.zeros(0, dtype=torch.long), temperature=0.5,
                                  extra_positive=e, backend=backend)
    assert abs(loss.item()) < 1e-6


@needs_cpp
def test_extra_positive_features_equal_logits():
    case = make_case(12, 20, 16, 4, weights=True, extra="features", seed=4)
    feats = case["extra_positive"].clone().requires_grad_()
    a1 = case["anchors"].clone().requires_grad_()
    l1 = label_contrastive_loss(a1, case["anchor_labels"], case["candidates"], case["candidate_labels"],
                                temperature=0.3, extra_positive=feats, backend="cpp")
    l1.backward()
    a2 = case["anchors"].clone().requires_grad_()
    f2 = case["extra_positive"].clone().requires_grad_()
    logit = (a2 * f2).sum(1)
    l2 = label_contrastive_loss(a2, case["anchor_labels"], case["candidates"], case["candidate_labels"],
                                temperature=0.3, extra_positive=logit, backend="cpp")
    l2.backward()
    assert_close(l1, l2, 1e-6, 1e-6, "loss")
    assert_close(a1.grad, a2.grad, 1e-6, 1e-5, "danchors")
    assert_close(feats.grad, f2.grad, 1e-6, 1e-5, "dextra")


@needs_cpp
def test_non_contiguous_inputs():
    base = make_case(30, 30, 32, 4, seed=6)
    wide = torch.randn(30, 64)
    wide[:, ::2] = base["anchors"]
    a = wide[:, ::2]
    assert not a.is_contiguous()
    got = label_contrastive_loss(a, base["anchor_labels"], temperature=0.3, backend="cpp")
    want = label_contrastive_loss_reference(a.contiguous(), base["anchor_labels"], temperature=0.3)
    assert_close(got, want, *TOLERANCES[torch.float32], "loss")


# ----------------------------------------------------------------------------------------------
# Registration, dispatch, errors
# ----------------------------------------------------------------------------------------------

def _op_args(case, **overrides):
    args = dict(class_weights=None, extra_positive=None, temperature=0.3, logit_shift=1.0, logit_form=False,
                label_positives=True, exclude_self=False)
    args.update(overrides)
    return (case["anchors"], case["anchor_labels"], case["candidates"], case["candidate_labels"],
            args["class_weights"], args["extra_positive"], args["temperature"], args["logit_shift"],
            args["logit_form"], args["label_positives"], args["exclude_self"])


@pytest.mark.parametrize("backend, device", KERNELS)
@pytest.mark.parametrize("logit_form", [False, True])
def test_opcheck(backend, device, logit_form):
    case = make_case(9, 13, 16, 3, weights=True, extra="logit", device=device, seed=13)
    for key in ("anchors", "candidates", "extra_positive"):
        case[key].requires_grad_()
    args = _op_args(case, class_weights=case["class_weights"], extra_positive=case["extra_positive"],
                    logit_form=logit_form)
    # The forward op that label_contrastive_loss calls for this backend, with its autograd.
    torch.library.opcheck(lc.KERNEL.forward(backend).default, args)


@needs_cpp
def test_opcheck_cpp_kernels():
    case = make_case(9, 13, 16, 3, weights=True, extra="logit", seed=14)
    # The Triton ops are declared in Python with the schemas of csrc/: they must not drift apart.
    ops = torch.ops.scob_fast
    for cpp, triton in ((ops.label_contrastive_fwd, ops.label_contrastive_triton_fwd),
                        (ops.label_contrastive_bwd, ops.label_contrastive_triton_bwd)):
        assert str(cpp.default._schema).split("(", 1)[1] == str(triton.default._schema).split("(", 1)[1]
    args = _op_args(case, class_weights=case["class_weights"], extra_positive=case["extra_positive"])
    torch.library.opcheck(torch.ops.scob_fast.label_contrastive_fwd.default, args)
    loss, lse, count = torch.ops.scob_fast.label_contrastive_fwd(*args)
    grad = torch.ones_like(loss)
    torch.library.opcheck(torch.ops.scob_fast.label_contrastive_bwd.default,
                          (grad, *args[:6], lse, count, *args[6:], True, True, True))


@needs_cpp
def test_torch_compile_graph():
    case = make_case(16, 24, 16, 4, weights=True, extra="logit", seed=15)

    def fn(a, c):
        return label_contrastive_loss(a, case["anchor_labels"], c, case["candidate_labels"], temperature=0.3,
                                      class_weights=case["class_weights"], extra_positive=case["extra_positive"],
                                      backend="cpp")

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    a = case["anchors"].clone().requires_grad_()
    c = case["candidates"].clone().requires_grad_()
    got = compiled(a, c)
    got.backward()
    want_a = case["anchors"].clone().requires_grad_()
    want_c = case["candidates"].clone().requires_grad_()
    want = fn(want_a, want_c)
    want.backward()
    assert_close(got, want, 1e-6, 1e-6, "loss")
    assert_close(a.grad, want_a.grad, 1e-6, 1e-5, "danchors")
    assert_close(c.grad, want_c.grad, 1e-6, 1e-5, "dcandidates")


@needs_cpp
def test_dispatch_auto_forced_and_env(monkeypatch):
    case = make_case(8, 8, 16, 2, self_mode=True, seed=16)
    monkeypatch.delenv("SCOB_FAST_LABEL_CONTRASTIVE_BACKEND", raising=False)
    monkeypatch.delenv("SCOB_FAST_BACKEND", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)   # forward only, one thread: the kernel
    label_contrastive_loss(case["anchors"], case["anchor_labels"], temperature=0.2)
    assert last_backend("label_contrastive") == "cpp"
    monkeypatch.setenv("SCOB_FAST_LABEL_CONTRASTIVE_BACKEND", "reference")
    label_contrastive_loss(case["anchors"], case["anchor_labels"], temperature=0.2)
    assert last_backend("label_contrastive") == "reference"
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match="cuda"):
            label_contrastive_loss(case["anchors"], case["anchor_labels"], temperature=0.2, backend="cuda")
    with pytest.raises(ValueError, match="unknown backend"):
        label_contrastive_loss(case["anchors"], case["anchor_labels"], temperature=0.2, backend="fortran")
    assert set(lc.DISPATCHER.names()) == {"cpp", "triton", "cuda", "reference", "dense"}


@pytest.mark.parametrize("backend", ["reference", "dense", pytest.param("cpp", marks=needs_cpp)])
def test_bad_inputs_name_the_argument(backend):
    a = F.normalize(torch.randn(4, 8), dim=1)
    y = torch.tensor([0, 1, 0, 1])
    c = F.normalize(torch.randn(5, 8), dim=1)
    yc = torch.tensor([0, 1, 2, -1, 1])
    call = lambda *args, **kw: label_contrastive_loss(*args, **{"temperature": 0.1, "backend": backend, **kw})  # noqa: E731
    cases = [
        ((a[0], y), {}, "anchors"),
        ((a.long(), y), {}, "anchors"),
        ((a, y[:3]), {}, "anchor_labels"),
        ((a, y.float()), {}, "anchor_labels"),
        ((a, y, c[:, :4], yc), {}, "candidates"),
        ((a, y, c.double(), yc), {}, "candidates"),
        ((a, y, c), {}, "candidate_labels"),
        ((a, y, c, yc[:4]), {}, "candidate_labels"),
        ((a, y), {"temperature": 0.0}, "temperature"),
        ((a, y), {"class_weights": torch.ones(2, 3)}, "class_weights"),
        ((a, y, c, yc), {"class_weights": torch.ones(2, 2)}, "candidate_labels must be < C"),
        ((a, y), {"class_weights": -torch.ones(2, 2)}, "class_weights must be >= 0"),
        ((a, y), {"extra_positive": torch.ones(3)}, "extra_positive"),
        ((a, y), {"positives": "extra_only"}, "needs extra_positive"),
        ((a, y), {"positives": "all"}, "positives"),
        ((a, y), {"weight_mode": "softmax"}, "weight_mode"),
        ((a, y), {"reduction": "max"}, "reduction"),
    ]
    for args, kwargs, needle in cases:
        with pytest.raises((ValueError, TypeError), match=needle):
            call(*args, **kwargs)


@needs_cpp
def test_cpp_op_checks_name_the_argument():
    a = torch.randn(4, 8)
    y = torch.zeros(4, dtype=torch.long)
    with pytest.raises(RuntimeError, match="label_contrastive: argument 'candidates'"):
        torch.ops.scob_fast.label_contrastive_fwd(a, y, torch.randn(3, 5), torch.zeros(3, dtype=torch.long), None,
                                                  None, 0.1, 0.0, False, True, False)
    with pytest.raises(RuntimeError, match="'anchor_labels'"):
        torch.ops.scob_fast.label_contrastive_fwd(a, y[:2], a, y, None, None, 0.1, 0.0, False, True, False)
    with pytest.raises(RuntimeError, match="'temperature'"):
        torch.ops.scob_fast.label_contrastive_fwd(a, y, a, y, None, None, -1.0, 0.0, False, True, False)


# ----------------------------------------------------------------------------------------------
# Memory and a short training run
# ----------------------------------------------------------------------------------------------

@needs_cpp
def test_memory_is_linear_in_n_plus_m():
    from bench._common import peak_memory_bytes

    n = m = 2000
    d = 32
    case = make_case(n, m, d, 80, weights=True, extra="logit", seed=17)

    def step(backend):
        a = case["anchors"].clone().requires_grad_()
        c = case["candidates"].clone().requires_grad_()
        label_contrastive_loss(a, case["anchor_labels"], c, case["candidate_labels"], temperature=0.2,
                               class_weights=case["class_weights"], extra_positive=case["extra_positive"],
                               backend=backend).backward()

    kernel = peak_memory_bytes(lambda: step("cpp"))
    reference = peak_memory_bytes(lambda: step("reference"))
    # one 256 x 2048 float32 tile per busy worker (at most one per block of 256 anchors)
    tiles = min(torch.get_num_threads(), -(-n // 256)) * 256 * 2048 * 4
    linear = 8 * (n + m) * d * 4  # inputs, their gradients and per-worker accumulators, with room to spare
    print(f"peak: cpp {kernel / 2**20:.1f} MiB, reference {reference / 2**20:.1f} MiB, N x M {n * m * 4 / 2**20} MiB")
    assert kernel <= linear + tiles
    assert reference > n * m * 4  # the reference does hold N x M: the comparison means something


@needs_cpp
def test_short_training_matches_reference():
    torch.manual_seed(0)
    data = torch.randn(48, 20)
    labels = torch.randint(0, 4, (48,))
    params = {}
    for backend in ("cpp", "reference"):
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16))
        protos = torch.nn.Parameter(F.normalize(torch.randn(4, 16), dim=1))
        opt = torch.optim.SGD([*model.parameters(), protos], lr=0.5)
        for _ in range(5):
            z = F.normalize(model(data), dim=1)
            loss = label_contrastive_loss(z, labels, temperature=0.2, backend=backend) + label_contrastive_loss(
                z, labels, F.normalize(protos, dim=1), torch.arange(4), temperature=0.1, backend=backend)
            opt.zero_grad()
            loss.backward()
            opt.step()
        params[backend] = (loss.item(), [p.detach().clone() for p in (*model.parameters(), protos)])
    assert abs(params["cpp"][0] - params["reference"][0]) < 1e-4
    for p, q in zip(params["cpp"][1], params["reference"][1]):
        assert_close(p, q, 1e-4, 1e-4, "parameter")


# ----------------------------------------------------------------------------------------------
# The dense path and its size rule
# ----------------------------------------------------------------------------------------------

def _loop_loss(a, y_a, c, y_c, t, w=None, e=None, positives="label", weight_mode="exp", shift=0.0,
               exclude_self=False):
    """The module docstring's formula anchor by anchor, pair by pair (float64 Python arithmetic)."""
    losses, counts = [], []
    for i in range(a.shape[0]):
        if y_a[i] < 0:
            losses.append(0.0)
            counts.append(0)
            continue
        denominator, numerator, count = [], 0.0, 0
        for j in range(c.shape[0]):
            if y_c[j] < 0 or (exclude_self and i == j):
                continue
            s = float(a[i] @ c[j])
            weight = 1.0 if w is None else float(w[y_a[i], y_c[j]])
            h = (s + shift) / t * (weight if weight_mode == "logit" else 1.0)
            if weight_mode == "exp":
                denominator.append(weight * math.exp(h))
            else:
                denominator.append(math.exp(h))
            if positives == "label" and y_c[j] == y_a[i]:
                numerator, count = numerator + h, count + 1
        if e is not None:
            extra = (float(e[i]) + shift) / t
            denominator.append(math.exp(extra))
            numerator, count = numerator + extra, count + 1
        if count == 0:
            losses.append(0.0)
            counts.append(0)
            continue
        losses.append(math.log(sum(denominator)) - numerator / count)
        counts.append(count)
    return torch.tensor(losses, dtype=torch.float64), counts


@pytest.mark.parametrize("flags", [
    dict(),
    dict(self_mode=True),
    dict(weights=True, extra="logit"),
    dict(weights=True, extra="logit", weight_mode="logit", positives="extra_only", shift=1.0),
    dict(self_mode=True, weights=True, weight_mode="logit", shift=1.0),
    dict(extra="logit", positives="extra_only"),
], ids=["pairs", "supcon", "exp-weights-extra", "scob", "self-logit", "extra-only"])
def test_dense_matches_the_formula_by_loops(flags):
    flags = dict(flags)
    self_mode, mode = flags.pop("self_mode", False), flags.pop("weight_mode", "exp")
    positives, shift = flags.pop("positives", "label"), flags.pop("shift", 0.0)
    case = make_case(9, 11, 5, 3, self_mode=self_mode, dtype=torch.float64, density=0.8, seed=21, **flags)
    c = case.get("candidates", case["anchors"])
    y_c = case.get("candidate_labels", case["anchor_labels"])
    want, want_counts = _loop_loss(case["anchors"], case["anchor_labels"].tolist(), c, y_c.tolist(), 0.3,
                                   case.get("class_weights"), case.get("extra_positive"), positives, mode, shift,
                                   exclude_self=self_mode)
    got, counts = label_contrastive_loss(**case, temperature=0.3, positives=positives, weight_mode=mode,
                                         logit_shift=shift, reduction="none", return_counts=True, backend="dense")
    assert last_backend("label_contrastive") == "dense"
    assert_close(got, want, 1e-12, 1e-10, "dense loss vs loops")
    assert counts.tolist() == want_counts


@pytest.mark.parametrize("flags", [dict(self_mode=True), dict(weights=True, extra="logit"),
                                   dict(weights=True, extra="features", weight_mode="logit", positives="extra_only"),
                                   dict(self_mode=True, weights=True, extra="features", weight_mode="logit")],
                         ids=["supcon", "exp-weights-extra", "scob", "self-logit-extra"])
def test_dense_float64_and_gradcheck(flags):
    flags = dict(flags)
    kw = dict(temperature=0.3, weight_mode=flags.pop("weight_mode", "exp"), positives=flags.pop("positives", "label"),
              logit_shift=1.0)
    case = make_case(9, 11, 5, 3, dtype=torch.float64, density=0.8, seed=11, **flags)
    compare("dense", case, *TOLERANCES[torch.float64], **kw)
    names = [k for k in DIFFERENTIABLE if k in case]
    fixed = {k: v for k, v in case.items() if k not in DIFFERENTIABLE}

    def fn(*tensors):
        return label_contrastive_loss(**dict(zip(names, tensors)), **fixed, **kw, reduction="none", backend="dense")

    assert torch.autograd.gradcheck(fn, tuple(case[k].clone().requires_grad_() for k in names), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("weight_mode", ["exp", "logit"])
def test_dense_zero_weights_keep_gradients_finite(weight_mode):
    # Every candidate of anchor 0's class pair has weight 0: in the exp form its denominator holds
    # only the extra positive (log 0 = -inf for all candidates), which must give finite gradients.
    case = make_case(6, 8, 4, 2, weights=True, extra="logit", dtype=torch.float64, seed=3)
    case["class_weights"] = torch.tensor([[0.0, 0.0], [0.5, 1.0]], dtype=torch.float64)
    kw = dict(temperature=0.5, weight_mode=weight_mode, positives="extra_only", logit_shift=1.0)
    compare("dense", case, *TOLERANCES[torch.float64], **kw)
    _, grads = run(lambda **a: label_contrastive_loss(**a, backend="dense"), case, **kw)
    assert all(torch.isfinite(g).all() for g in grads.values() if g is not None)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dense_low_precision_computes_in_float32(dtype):
    case = make_case(30, 40, 16, 4, weights=True, extra="logit", dtype=dtype, seed=5)
    got, got_grads = run(lambda **a: label_contrastive_loss(**a, backend="dense"), case, temperature=0.2)
    assert got.dtype == torch.float32
    upcast = {k: (v.float() if v.is_floating_point() and k != "class_weights" else v) for k, v in case.items()}
    want, want_grads = run(label_contrastive_loss_reference, upcast, temperature=0.2)
    assert_close(got, want, *TOLERANCES[torch.float32], "dense 16-bit loss vs float32 reference")
    for key, expected in want_grads.items():
        assert got_grads[key].dtype == dtype
        # the gradient is rounded to the input dtype once
        assert_close(got_grads[key].float(), expected, 1e-2, 1e-2, f"dense 16-bit d{key}")


@pytest.mark.parametrize("n, m, threads, backward, runs_dense", [
    (512, 512, 16, False, True),       # 2 blocks of 256 anchors, 16 threads: the kernel would idle 14
    (512, 512, 2, False, False),       # 2 blocks, 2 threads: the kernel's fused forward wins
    (256, 256, 1, True, True),         # a backward follows: keep the similarities (3 GEMMs, not 4)
    (1024, 1024, 1, True, True),       # N x M = 2^20, the largest
    (1025, 1024, 64, True, False),     # beyond: the kernels' linear memory
    (4096, 16, 1, False, False),       # 16 blocks on 1 thread, forward only
    (100, 100, 64, True, False),       # below 2^14 pairs: overhead-bound, the kernel's one call
])
def test_dense_rule(n, m, threads, backward, runs_dense):
    reason = lc.dense_rule(n, m, threads, backward)
    assert (reason is None) is runs_dense, reason


@needs_cpp
@pytest.mark.parametrize("case, expected", [
    ("gradients", "dense"),
    ("gradients to the extra positive only", "dense"),
    ("forward only, one thread", "cpp"),
    ("forward only, 16 threads", "dense"),
    ("no_grad, gradients requested", "cpp"),
    ("large", "cpp"),
    ("forced cpp", "cpp"),
    ("env forces reference", "reference"),
])
def test_auto_dispatch_size_rule(monkeypatch, case, expected):
    monkeypatch.delenv("SCOB_FAST_LABEL_CONTRASTIVE_BACKEND", raising=False)
    monkeypatch.delenv("SCOB_FAST_BACKEND", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16 if "16 threads" in case else 1)
    n, m = (1100, 1000) if case == "large" else (160, 120)
    data = make_case(n, m, 8, 4, extra="logit", seed=23)
    keys = {"gradients": ("anchors", "candidates"), "gradients to the extra positive only": ("extra_positive",),
            "no_grad, gradients requested": ("anchors",), "large": ("anchors",), "forced cpp": ("anchors",),
            "env forces reference": ("anchors",)}.get(case, ())
    inputs = {k: (v.detach().clone().requires_grad_(k in keys) if k in DIFFERENTIABLE else v) for k, v in data.items()}
    kwargs = {"backend": "cpp"} if case == "forced cpp" else {}
    if case == "env forces reference":
        monkeypatch.setenv("SCOB_FAST_LABEL_CONTRASTIVE_BACKEND", "reference")
    with torch.no_grad() if case.startswith("no_grad") else torch.enable_grad():
        loss = label_contrastive_loss(**inputs, temperature=0.3, **kwargs)
    assert last_backend("label_contrastive") == expected
    want = label_contrastive_loss_reference(**{k: v.detach() if k in DIFFERENTIABLE else v for k, v in data.items()},
                                            temperature=0.3)
    assert_close(loss, want, *TOLERANCES[torch.float32], f"{case} loss")
    if keys and loss.requires_grad:
        grads = torch.autograd.grad(loss, [inputs[k] for k in keys])
        ref_inputs = {k: (v.detach().clone().requires_grad_(k in keys) if k in DIFFERENTIABLE else v)
                      for k, v in data.items()}
        want_grads = torch.autograd.grad(label_contrastive_loss_reference(**ref_inputs, temperature=0.3),
                                         [ref_inputs[k] for k in keys])
        for key, a, b in zip(keys, grads, want_grads):
            assert_close(a, b, *TOLERANCES[torch.float32], f"{case} d{key}")


def test_dense_compiles_without_graph_break():
    case = make_case(12, 16, 8, 3, weights=True, extra="logit", density=0.7, seed=29)
    a = case["anchors"].clone().requires_grad_()

    def fn(a):
        return label_contrastive_loss(a, case["anchor_labels"], case["candidates"], case["candidate_labels"],
                                      temperature=0.2, class_weights=case["class_weights"],
                                      extra_positive=case["extra_positive"], backend="dense")

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    got = compiled(a)
    (grad_got,) = torch.autograd.grad(got, a)
    want = fn(a)
    (grad_want,) = torch.autograd.grad(want, a)
    assert_close(got, want, 1e-6, 1e-6, "compiled dense loss")
    assert_close(grad_got, grad_want, 1e-6, 1e-6, "compiled dense grad")

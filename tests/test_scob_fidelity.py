"""Scob as its authors' public code (github.com/iCVTEAM/Scob) trains it: each published switch against a
transcription of that code written here.

- Grad-CAM++: pytorch-grad-cam 1.4.8 (grad_cam_plusplus.py get_cam_weights, base_cam.py,
  utils/image.py scale_cam_image with cv2.resize INTER_LINEAR) + Scob's cam.py resize_mask /
  crop_corner / generate_binary_mask, with the sigmoid output as the target (main.py:320,
  models/__init__.py ImageClassifier returns torch.sigmoid).
- --published-bn: the train/eval modes main.py (lines 308-329) and chinopie (recipe.py
  run_train_phase / run_val_phase, utils.py set_train / set_eval) leave on each pass.
- --published-ema: separate, never-updated momentum heads (models/__init__.py fm2_*, move_k).
- --published-bank: losses.py loss_contrastive_infonce over main.py get_most_confident_feats (zeros
  for an empty class), and the NaN skip of main.py:354/363.
- the diagnostics hook, the loss terms, and the preset configs/scob-coco2014.yaml.
"""
import math
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scob_fast.engine.amp import AmpPolicy
from scob_fast.methods.base import HeadOptions, LearningRates, MethodContext
from scob_fast.methods.scob import Scob, ScobConfig, scob_contrastive_loss, scob_supervised_loss
from scob_fast.methods.scob import method as scob_method
from scob_fast.methods.scob.cam import cam_keep_masks, grad_cam_plus_plus, keep_masks_from_full, published_cam
from scob_fast.methods.scob.engine_choice import shared_clean_pass_valid
from scob_fast.methods.scob.losses import scob_supervised_terms
from scob_fast.methods.scob.prototype_bank import PrototypeBank
from scob_fast.models.backbone import FrozenBackbone

ROOT = Path(__file__).resolve().parent.parent
C, N, B, S = 5, 24, 4, 128


# -- transcription of pytorch-grad-cam 1.4.8 + Scob's cam.py (numpy float64) -------------------------

def cv2_linear_resize(img, width, height):
    """cv2.resize(img, (width, height)) with INTER_LINEAR on a float image: source x = (dx + 0.5) *
    scale - 0.5, index floor, below 0 -> 0, at or past the last pixel -> the last (weight 0)."""
    def axis(n_in, n_out):
        idx0, idx1, frac = [], [], []
        for d in range(n_out):
            f = (d + 0.5) * n_in / n_out - 0.5
            s = int(np.floor(f))
            f -= s
            if s < 0:
                s, f = 0, 0.0
            if s >= n_in - 1:
                s, f = n_in - 1, 0.0
            idx0.append(s)
            idx1.append(min(s + 1, n_in - 1))
            frac.append(f)
        return np.array(idx0), np.array(idx1), np.array(frac)
    y0, y1, fy = axis(img.shape[0], height)
    x0, x1, fx = axis(img.shape[1], width)
    rows = img[y0] * (1 - fy)[:, None] + img[y1] * fy[:, None]
    return rows[:, x0] * (1 - fx)[None] + rows[:, x1] * fx[None]


def scale_cam_image(cam, target_size=None, eps=1e-7):
    out = []
    for img in cam:
        img = img - img.min()
        img = img / (eps + img.max())
        if target_size is not None:
            img = cv2_linear_resize(img, *target_size)
        out.append(img)
    return np.array(out)


def public_grad_cam_pp(activations, grads, size, alpha_eps=1e-6, aggregate=True):
    g2 = grads ** 2
    g3 = g2 * grads
    sum_activations = activations.sum(axis=(2, 3))
    aij = g2 / (2 * g2 + sum_activations[:, :, None, None] * g3 + alpha_eps)
    aij = np.where(grads != 0, aij, 0)
    weights = (np.maximum(grads, 0) * aij).sum(axis=(2, 3))
    cam = (weights[:, :, None, None] * activations).sum(axis=1)
    cam = np.maximum(cam, 0)
    scaled = scale_cam_image(cam, (size, size))[:, None]           # compute_cam_per_layer
    if not aggregate:
        return scaled[:, 0]
    return scale_cam_image(np.maximum(scaled, 0).mean(axis=1))       # aggregate_multi_layers


def public_keep(masks, new_size, threshold=0.5):
    b, hw = masks.shape[0], masks.shape[1]
    k = hw // new_size
    pooled = masks.reshape(b, new_size, k, new_size, k).mean(axis=(2, 4))     # resize_mask avg_pool2d
    pooled[:, 0, 0] = pooled[:, 0, -1] = pooled[:, -1, 0] = pooled[:, -1, -1] = 0  # crop_corner
    return pooled, pooled >= threshold                                           # generate_binary_mask


def _activations_and_grads(seed, b=3, k=16, h=4, scale=1e-3):
    rng = np.random.default_rng(seed)
    a = np.maximum(rng.normal(0.5, 1.0, (b, k, h, h)), 0)
    g = rng.normal(0.0, scale, (b, k, h, h))
    g[rng.random(g.shape) < 0.1] = 0.0
    return a, g


@pytest.mark.parametrize("seed,scale", [(0, 1e-3), (1, 1e-2), (2, 3e-4), (3, 1.0)])
def test_published_cam_matches_pytorch_grad_cam_transcription(seed, scale):
    a, g = _activations_and_grads(seed, scale=scale)
    want = public_grad_cam_pp(a, g, S)
    got = published_cam(torch.from_numpy(a).float(), torch.from_numpy(g).float(), S).double().numpy()
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)
    for grid in (8, 4):
        pooled, keep = public_keep(want, grid)
        ours = keep_masks_from_full(torch.from_numpy(got).float(), [(grid, grid)])[0].view(-1, grid, grid).numpy()
        clear = np.abs(pooled - 0.5) > 1e-4
        assert clear.mean() > 0.9 and (ours == keep)[clear].all()
        # the same from the layer-resolution map, the way training and reporting.explain call it
        lowres = grad_cam_plus_plus(torch.from_numpy(a).float(), torch.from_numpy(g).float())
        again = cam_keep_masks(lowres, S, [(grid, grid)])[0].view(-1, grid, grid).numpy()
        assert (again == keep)[clear].all()


def test_the_cam_test_can_fail_on_eps_and_on_the_second_normalisation():
    a, g = _activations_and_grads(0, scale=1e-3)
    want = public_grad_cam_pp(a, g, S)
    assert np.abs(public_grad_cam_pp(a, g, S, alpha_eps=1e-7) - want).max() > 1e-3
    assert np.abs(public_grad_cam_pp(a, g, S, aggregate=False) - want).max() > 1e-3   # no second min-max


def test_resize_transcription_matches_cv2_when_installed():
    cv2 = pytest.importorskip("cv2")
    img = np.random.default_rng(0).random((4, 4)).astype(np.float32)
    np.testing.assert_allclose(cv2.resize(img, (128, 128)), cv2_linear_resize(img.astype(np.float64), 128, 128),
                               atol=1e-6)


# -- a small Scob on a tiny BatchNorm backbone (the real FrozenBackbone class, unfolded) ----------------

class TinyNetwork(nn.Module):
    """Two levels at strides 16 and 32 with BatchNorm, like the real backbones."""
    STAGE_NAMES = ("low", "high")

    def __init__(self):
        super().__init__()
        self.low = nn.Sequential(nn.Conv2d(3, 8, 16, stride=16), nn.BatchNorm2d(8), nn.ReLU())
        self.high = nn.Sequential(nn.Conv2d(8, 16, 2, stride=2), nn.BatchNorm2d(16), nn.ReLU())

    def features(self, x):
        low = self.low(x)
        return low, self.high(low)


class TinyBackbone(FrozenBackbone):
    channels = (8, 16)

    def __init__(self, seed=0):
        torch.manual_seed(seed)
        super().__init__("efficientnet_lite0", TinyNetwork(), fold_batchnorm=False)


def _ctx(backbone, observed, **config):
    base = dict(engine="reference", bank_size=2, lambda_cl=0.5, temperature=0.5, ema_alpha=0.9)
    base.update(config)
    return MethodContext(backbone=backbone, num_classes=C, num_samples=N, observed=observed,
                         config=ScobConfig(**base), device=torch.device("cpu"), amp=AmpPolicy("cpu", False),
                         image_size=S, heads=HeadOptions(dim=32, ffn=48, dropout=0.0),
                         lr=LearningRates(linear=1e-3, transformer=1e-3, projector=1e-2, classifier=1e-3,
                                          estimator=1e-2),
                         expected_positives=1.5, seed=0)


def _observed():
    observed = torch.zeros(N, C, dtype=torch.int8)
    observed[torch.arange(N), torch.arange(N) % C] = 1
    return observed


def _method(backbone=None, seed=0, **config):
    torch.manual_seed(seed)
    return Scob(_ctx(backbone if backbone is not None else TinyBackbone(), _observed(), **config))


def _batches(steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    observed = _observed()
    for _ in range(steps):
        index = torch.randperm(N, generator=g)[:B]
        yield {"image": torch.rand(B, 3, S, S, generator=g) * 4 - 2, "image_hard": torch.rand(B, 3, S, S, generator=g),
               "observed": observed[index].float(), "index": index}


# -- Grad-CAM++ target: the sigmoid output, in both engines --------------------------------------------

@pytest.mark.parametrize("engine", ["reference", "fast"])
def test_cam_gradient_is_that_of_the_sigmoid_output(engine, monkeypatch):
    method = _method(engine=engine)
    method.train()
    with torch.no_grad():  # saturate the classifier so that sigmoid' differs a lot between images
        method.net.classifier.bias.copy_(torch.tensor([4.0, -3.0, 0.0, 6.0, -5.0]))
    seen = []
    real = scob_method.published_cam
    monkeypatch.setattr(scob_method, "published_cam", lambda a, g, size: seen.append(g.clone()) or real(a, g, size))
    batch = next(_batches(1))
    classes = torch.tensor([0, 1, 3, 4])
    with torch.no_grad():
        f_low, f_high = method.backbone(batch["image"])
    if engine == "reference":
        method._cam_masks_reference(batch["image"], classes)
    else:
        method._cam_masks_fast(f_low, f_high, classes, (S, S))
    # independent: the whole model in eval mode, autograd of sigmoid(logit[b, class_b]) w.r.t. layer4
    method.net.eval()
    f_high = f_high.clone().requires_grad_(True)
    logits = method.net(f_low, f_high)
    want_sigmoid, = torch.autograd.grad(torch.sigmoid(logits).gather(1, classes[:, None]).sum(), f_high)
    want_logit, = torch.autograd.grad(method.net(f_low, f_high).gather(1, classes[:, None]).sum(), f_high)
    scale = want_sigmoid.abs().max()
    assert scale > 0
    torch.testing.assert_close(seen[0], want_sigmoid, rtol=1e-4, atol=1e-5 * float(scale))
    # sigmoid' <= 1/4, so the logit's gradient is at least 4x larger: a logit target would fail above
    assert (seen[0] - want_logit).abs().max() > 0.5 * want_logit.abs().max()


# -- --published-bn ------------------------------------------------------------------------------------

def public_bn_schedule(epochs_steps):
    """The modes of one run of the public loop, pass by pass: for every iteration (supervised, CAM,
    momentum, hard view) whether BN runs on batch statistics and whether the heads are in train mode,
    then one 'val' pass per epoch. chinopie: the model starts in train mode (a fresh nn.Module);
    run_train_phase calls set_train, which only puts frozen BN layers in eval; main.py puts the model
    in eval for the CAM (GradCamWrapper, line 309) and in train after it (line 329), which holds
    until run_val_phase's set_eval."""
    model_train, frozen_bn_train = True, True
    passes = []
    for steps in epochs_steps:
        frozen_bn_train = False                       # set_train: frozen BN -> eval; model mode unchanged
        for _ in range(steps):
            passes.append(("supervised", frozen_bn_train, model_train))
            model_train, frozen_bn_train = False, False         # model.eval() for the CAM
            passes.append(("cam", frozen_bn_train, model_train))
            model_train, frozen_bn_train = True, True           # model.train()
            passes.append(("momentum", frozen_bn_train, model_train))
            passes.append(("hard", frozen_bn_train, model_train))
        model_train, frozen_bn_train = False, False             # set_eval for the val phase
        passes.append(("val", frozen_bn_train, model_train))
    return passes


def test_published_bn_modes_pass_by_pass_match_the_public_loop():
    method = _method(published_bn=True)
    bn = method.backbone.network.low[1]
    seen = []
    bn.register_forward_pre_hook(lambda m, _: seen.append(["bn", m.training]))
    method.net.head_low.register_forward_pre_hook(lambda m, _: seen[-1].append(m.training))
    method.net.momentum_low.register_forward_pre_hook(lambda m, _: seen[-1].append(m.training))
    opt = torch.optim.Adam(method.param_groups())
    batches = _batches(5)
    plan = [3, 2]
    for epoch, steps in enumerate(plan):
        method.train()                    # what the trainer does before an epoch
        method.start_epoch(epoch)
        for _ in range(steps):
            method.train_step(next(batches), opt)
        method.eval()
        method.predict_logits(next(_batches(1, seed=9))["image"])
    want = public_bn_schedule(plan)
    assert len(seen) == len(want)
    for (_, bn_train, *heads), (name, want_bn, want_model) in zip(seen, want):
        assert bn_train == want_bn, name
        assert all(h == want_model for h in heads), name
    # running statistics: one update per pass on batch statistics (the count the public BN keeps)
    assert int(bn.num_batches_tracked) == sum(1 for _, t, _ in want if t)
    assert not bn.training and not method.backbone.batchnorm_training


def test_published_bn_resume_inside_an_epoch_keeps_the_schedule():
    method = _method(published_bn=True)
    seen = []
    method.backbone.network.low[1].register_forward_pre_hook(lambda m, _: seen.append(m.training))
    opt = torch.optim.Adam(method.param_groups())
    method.train()
    method.continue_epoch(1, 2)            # resumed at step 2 of epoch 2: not the epoch's first step
    method.train_step(next(_batches(1)), opt)
    assert seen == [True, False, True, True]


def test_published_bn_drifts_the_statistics_and_checkpoints_them():
    method = _method(published_bn=True)
    before = method.backbone.network.low[1].running_mean.clone()
    opt = torch.optim.Adam(method.param_groups())
    method.train()
    method.start_epoch(0)
    for batch in _batches(2):
        method.train_step(batch, opt)
    after = method.backbone.network.low[1].running_mean
    assert not torch.equal(before, after)
    state = method.state_dict_for_checkpoint()
    assert torch.equal(state["backbone.network.low.1.running_mean"], after)
    assert "backbone.network.low.0.weight" not in state           # the frozen weights stay out
    fresh = _method(published_bn=True)
    fresh.load_checkpoint_state(state)
    assert torch.equal(fresh.backbone.network.low[1].running_var, method.backbone.network.low[1].running_var)
    with pytest.raises(ValueError, match="trained without --published-bn"):
        fresh.load_checkpoint_state({k: v for k, v in state.items() if not k.startswith("backbone.")})
    assert not any(k.startswith("backbone.") for k in _method().state_dict_for_checkpoint())


def test_published_bn_needs_an_unfolded_backbone():
    assert Scob.needs_unfolded_batchnorm(ScobConfig(published_bn=True))
    assert not Scob.needs_unfolded_batchnorm(ScobConfig())
    folded = TinyBackbone()
    folded.folded = True
    with pytest.raises(ValueError, match="--published-bn: the backbone's BatchNorm is folded"):
        _method(backbone=folded, published_bn=True)


def test_shared_clean_pass_validity_and_the_fallback(caplog):
    backbone = TinyBackbone()
    assert shared_clean_pass_valid(backbone)
    assert not shared_clean_pass_valid(backbone, batchnorm_training=True)
    backbone.set_batchnorm_training(True)
    assert not shared_clean_pass_valid(backbone)
    backbone.set_batchnorm_training(False)
    backbone.network.low[0].weight.requires_grad_(True)            # a trainable backbone
    assert not shared_clean_pass_valid(backbone)
    backbone.network.low[0].weight.requires_grad_(False)
    backbone.network.high[1].train()                               # BN left in training mode
    assert not shared_clean_pass_valid(backbone)
    with caplog.at_level(logging.INFO, logger="scob_fast.methods"):
        method = _method(engine="fast", published_bn=True)
        method.active_engine()
        method.active_engine()
    lines = [r.getMessage() for r in caplog.records if "running the reference engine" in r.getMessage()]
    assert len(lines) == 1 and "--published-bn" in lines[0]
    assert method.active_engine() == "reference" and "reference engine" in method.describe()
    assert _method(engine="fast").active_engine() == "fast"


# -- --published-ema ---------------------------------------------------------------------------------

def _momentum(method):
    return torch.cat([p.detach().flatten() for p in method.net.momentum_parameters()])


def _trained(method):
    return torch.cat([p.detach().flatten() for p in method.net.head_low.parameters()]
                     + [p.detach().flatten() for p in method.net.head_high.parameters()])


def test_published_ema_momentum_heads_are_their_own_init_and_never_move():
    method = _method(published_ema=True, engine="fast")
    start = _momentum(method).clone()
    assert not torch.allclose(start, _trained(method)), "not a copy of the trained heads"
    default = _method(engine="fast")
    assert torch.equal(_trained(method), _trained(default)), "the rest of the model is initialised as without the flag"
    assert torch.equal(_momentum(default), _trained(default))
    assert torch.equal(start, _momentum(_method(published_ema=True, engine="fast"))), "same seed, same heads"
    ctx = _ctx(TinyBackbone(), _observed(), published_ema=True, engine="fast")
    ctx.seed = 1
    assert not torch.equal(start, _momentum(Scob(ctx))), "the run seed decides them"
    opt = torch.optim.Adam(method.param_groups())
    method.train()
    method.start_epoch(0)
    for batch in _batches(3):
        method.train_step(batch, opt)
    assert torch.equal(start, _momentum(method))
    assert not torch.equal(_trained(method), _trained(default)), "the trained heads did train"
    assert any(k.startswith("net.momentum_low.") for k in method.state_dict_for_checkpoint()), "checkpointed"


# -- --published-bank ---------------------------------------------------------------------------------

def public_infonce(feats1, feats2, targets, correlations, pq, tau):
    """losses.py loss_contrastive_infonce with hard_correlation=True, pq [C, 1, D] (top-1 per class)."""
    f1 = F.normalize(feats1, dim=1)
    f2 = F.normalize(feats2, dim=1)
    pq = F.normalize(pq, dim=2)
    b, c = f1.shape[0], pq.shape[0]
    corr = correlations.clone()
    corr[corr < 1] = 0
    sim = torch.zeros(b, c + 1, dtype=f1.dtype)
    sim[:, 0] = (f1 * f2).sum(1)
    sim[:, 1:] = f1 @ pq.view(c, -1).T
    sim += 1
    weights = torch.zeros_like(sim)
    weights[:, 0] = 1
    weights[:, 1:] = 1 - corr[targets] ** 2
    return F.cross_entropy(sim * weights / tau, torch.zeros(b, dtype=torch.long))


def test_published_bank_contrasts_empty_classes_as_zero_vectors():
    g = torch.Generator().manual_seed(0)
    z, zk = torch.randn(6, 8, generator=g, dtype=torch.float64), torch.randn(6, 8, generator=g, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 0, 3, 1])
    protos = torch.randn(C, 8, generator=g, dtype=torch.float64)
    valid = torch.tensor([True, True, False, True, False])
    r = torch.rand(C, C, generator=g, dtype=torch.float64)
    r.fill_diagonal_(1.0)
    r[0, 3] = 1.0
    w = 1 - torch.where(r >= 1, r, torch.zeros_like(r)) ** 2
    zeroed = torch.where(valid[:, None], protos, torch.zeros_like(protos))
    want = public_infonce(z, zk, targets, r, zeroed[:, None], tau=0.5)
    got = scob_contrastive_loss(z, zk, targets, zeroed, torch.ones(C, dtype=torch.bool), w, 0.5, backend="reference")
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-7)
    # the default leaves empty classes out of the softmax: the same as the public formula without them
    kept = valid.nonzero()[:, 0]
    default = scob_contrastive_loss(z, zk, targets, protos, valid, w, 0.5, backend="reference")
    sim = (F.normalize(z, dim=1) @ F.normalize(protos, dim=1)[kept].T + 1) * w[targets][:, kept] / 0.5
    pos = ((F.normalize(z, dim=1) * F.normalize(zk, dim=1)).sum(1) + 1) / 0.5
    manual = F.cross_entropy(torch.cat([pos[:, None], sim], 1), torch.zeros(6, dtype=torch.long))
    torch.testing.assert_close(default.double(), manual, rtol=1e-6, atol=1e-7)
    assert abs(float(default) - float(got)) > 1e-3


def test_per_sample_weights_reduce_to_the_published_infonce():
    """--negative-weights estimator uses a weight per (sample, class); with the rows W[targets] it is
    the public formula, and a class the estimator believes present (probability 1) drops out."""
    from scob_fast.methods.scob.losses import scob_contrastive_loss_per_sample
    g = torch.Generator().manual_seed(3)
    z, zk = torch.randn(6, 8, generator=g, dtype=torch.float64), torch.randn(6, 8, generator=g, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 0, 3, 1])
    protos = torch.randn(C, 8, generator=g, dtype=torch.float64)
    r = torch.rand(C, C, generator=g, dtype=torch.float64)
    r.fill_diagonal_(1.0)
    w = 1 - torch.where(r >= 1, r, torch.zeros_like(r)) ** 2
    every = torch.ones(C, dtype=torch.bool)
    want = public_infonce(z, zk, targets, r, protos[:, None], tau=0.5)
    got = scob_contrastive_loss_per_sample(z, zk, protos, every, w[targets], 0.5)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-7)
    # weight 0 for class 4 in every row: the same as the published loss with W[:, 4] = 0
    w4 = w.clone()
    w4[:, 4] = 0
    zeroed = w[targets].clone()
    zeroed[:, 4] = 0
    torch.testing.assert_close(scob_contrastive_loss_per_sample(z, zk, protos, every, zeroed, 0.5).double(),
                               public_infonce_weighted(z, zk, targets, w4, protos, 0.5), rtol=1e-6, atol=1e-7)
    assert abs(float(got) - float(scob_contrastive_loss_per_sample(z, zk, protos, every, zeroed, 0.5))) > 1e-4


def test_prototype_positive_is_the_two_positive_infonce():
    """--prototype-positive: transcription of -log((e^{l_k} + e^{l_y}) / sum_j e^{l_j}) with l_y the
    own class prototype's unweighted similarity; a class without a prototype keeps one positive."""
    from scob_fast.methods.scob.losses import scob_contrastive_loss_per_sample
    g = torch.Generator().manual_seed(5)
    z, zk = torch.randn(6, 8, generator=g, dtype=torch.float64), torch.randn(6, 8, generator=g, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 0, 3, 1])
    protos = torch.randn(C, 8, generator=g, dtype=torch.float64)
    weights = torch.rand(6, C, generator=g, dtype=torch.float64)
    valid = torch.ones(C, dtype=torch.bool)
    valid[1] = False
    tau = 0.7
    got = scob_contrastive_loss_per_sample(z, zk, protos, valid, weights, tau, own_classes=targets)
    f1, f2, pq = F.normalize(z, dim=1), F.normalize(zk, dim=1), F.normalize(protos, dim=1)
    want = 0.0
    for b in range(6):
        key = math.exp((float(f1[b] @ f2[b]) + 1) / tau)
        numerator, denominator = key, key
        for c in range(C):
            if not valid[c]:
                continue
            s = float(f1[b] @ pq[c]) + 1
            if c == int(targets[b]):
                numerator += math.exp(s / tau)
                denominator += math.exp(s / tau)
            else:
                denominator += math.exp(float(weights[b, c]) * s / tau)
        want -= math.log(numerator / denominator) / 6
    assert abs(float(got) - want) < 1e-6      # the loss computes in float32
    single = scob_contrastive_loss_per_sample(z, zk, protos, valid, weights, tau)
    assert float(got) < float(single) - 1e-3      # a second positive can only lower the loss here
    # gradients flow to z only (zk and the prototypes are constants of the step)
    z.requires_grad_(True)
    scob_contrastive_loss_per_sample(z, zk, protos, valid, weights, tau, own_classes=targets).backward()
    assert torch.isfinite(z.grad).all() and float(z.grad.abs().sum()) > 0


@pytest.mark.parametrize("engine", ["reference", "fast"])
@pytest.mark.parametrize("negatives", ["correlation", "estimator"])
def test_prototype_positive_in_the_step(engine, negatives, monkeypatch):
    """The step passes each image's target class as its own positive, with the weights the
    negative-weights choice gives, and the loss differs from the step without the option."""
    seen = []
    per_sample = scob_method.scob_contrastive_loss_per_sample

    def spy(z, zk, protos, valid, weights, tau, own_classes=None):
        seen.append((weights.clone(), None if own_classes is None else own_classes.clone()))
        return per_sample(z, zk, protos, valid, weights, tau, own_classes=own_classes)
    monkeypatch.setattr(scob_method, "scob_contrastive_loss_per_sample", spy)
    losses = {}
    for on in (False, True):
        method = _method(engine=engine, bank_size=B, negative_weights=negatives, prototype_positive=on)
        full = (torch.ones(B, 64, dtype=torch.bool), torch.ones(B, 16, dtype=torch.bool))
        _force_masks(method, [full, full])
        opt = torch.optim.Adam(method.param_groups())
        method.train()
        method.start_epoch(0)
        batches = list(_batches(2))
        method.train_step(batches[0], opt)
        losses[on] = float(method.train_step(batches[1], opt)["loss_cl"])
    weights, own = seen[-1]
    classes = method.last_cam["targets"]
    assert torch.equal(own, classes)
    expected = method.contrast_weights[classes]
    if negatives == "estimator":
        expected = expected * (1 - torch.sigmoid(method.estimator(batches[1]["index"]).detach().float()))
    torch.testing.assert_close(weights, expected)
    assert abs(losses[True] - losses[False]) > 1e-5


def public_infonce_weighted(z, zk, targets, w, protos, tau):
    """The public InfoNCE written with an explicit class-pair weight matrix (entries of W, not R)."""
    f1, f2, pq = F.normalize(z, dim=1), F.normalize(zk, dim=1), F.normalize(protos, dim=1)
    sim = torch.cat([(f1 * f2).sum(1, keepdim=True), f1 @ pq.T], 1) + 1
    weights = torch.cat([torch.ones(len(z), 1, dtype=z.dtype), w[targets]], 1)
    return F.cross_entropy(sim * weights / tau, torch.zeros(len(z), dtype=torch.long))


@pytest.mark.parametrize("engine", ["reference", "fast"])
def test_estimator_negative_weights_in_the_step(engine, monkeypatch):
    """The option's step weights prototype c for image b by W[y_b, c] (1 - estimator probability of
    c for b), from the global batch's own estimator rows, and differs from the published step."""
    seen = []
    per_sample = scob_method.scob_contrastive_loss_per_sample

    def spy(z, zk, protos, valid, weights, tau, own_classes=None):
        assert own_classes is None
        seen.append(weights.clone())
        return per_sample(z, zk, protos, valid, weights, tau)
    monkeypatch.setattr(scob_method, "scob_contrastive_loss_per_sample", spy)
    losses = {}
    for name in ("correlation", "estimator"):
        method = _method(engine=engine, bank_size=B, negative_weights=name)
        full = (torch.ones(B, 64, dtype=torch.bool), torch.ones(B, 16, dtype=torch.bool))
        _force_masks(method, [full, full])
        opt = torch.optim.Adam(method.param_groups())
        method.train()
        method.start_epoch(0)
        batches = list(_batches(2))
        method.train_step(batches[0], opt)
        before = torch.sigmoid(method.estimator(batches[1]["index"]).detach().float())
        stats = method.train_step(batches[1], opt)
        losses[name] = float(stats["loss_cl"])
    assert len(seen) == 2      # the correlation runs never call it
    # the supervised step of batch 1 moves its estimator rows first; the weights read them after it
    after = torch.sigmoid(method.estimator(batches[1]["index"]).detach().float())
    assert not torch.equal(before, after)
    classes = method.last_cam["targets"]
    torch.testing.assert_close(seen[-1], method.contrast_weights[classes] * (1 - after))
    assert abs(losses["estimator"] - losses["correlation"]) > 1e-5


def _force_masks(method, masks):
    """The CAM of each next step returns the next (keep_low, keep_high) of `masks`."""
    queue = list(masks)

    def take(*_):
        low, high = queue.pop(0)
        return low.clone(), high.clone()
    method._cam_masks_reference = take
    method._cam_masks_fast = take


@pytest.mark.parametrize("engine", ["reference", "fast"])
@pytest.mark.parametrize("published", [False, True])
def test_a_sample_without_kept_tokens(engine, published):
    """One sample keeps no high-level token: the public code gets NaN for it, skips the batch's
    contrastive step and does not store it; our default contrasts the batch and stores it."""
    method = _method(engine=engine, published_bank=published, bank_size=B)
    full = (torch.ones(B, 64, dtype=torch.bool), torch.ones(B, 16, dtype=torch.bool))
    holed = (full[0], full[1].clone())
    holed[1][2] = False
    _force_masks(method, [full, holed])
    opt = torch.optim.Adam(method.param_groups())
    method.train()
    method.start_epoch(0)
    batches = list(_batches(2))
    batches[0]["index"], batches[1]["index"] = torch.arange(4), torch.arange(4, 8)   # disjoint images
    for b in batches:
        b["observed"] = _observed()[b["index"]].float()
    first = method.train_step(batches[0], opt)
    assert float(first["cl_step"]) == 1.0
    projector = [p.detach().clone() for p in method.net.projector.parameters()]
    batch = batches[1]
    stats = method.train_step(batch, opt)
    stored = set(method.bank.image_index[method.bank.image_index >= 0].tolist())
    others = set(batch["index"].tolist()) - {int(batch["index"][2])}
    assert others <= stored
    assert (int(batch["index"][2]) in stored) == (not published)
    assert float(stats["cl_step"]) == (0.0 if published else 1.0)
    # the projector only trains in the contrastive step
    moved = any(not torch.equal(a, b) for a, b in zip(projector, method.net.projector.parameters()))
    assert moved == (not published)


@pytest.mark.parametrize("update", ["update", "update_sequential"])
def test_bank_keep_mask(update):
    bank = PrototypeBank(3, 2, 4)
    feats = torch.arange(16.0).view(4, 4)
    getattr(bank, update)(feats, torch.tensor([0, 0, 1, 2]), torch.tensor([0.9, 0.8, 0.7, 0.6]),
                          torch.tensor([10, 11, 12, 13]), keep=torch.tensor([True, False, True, False]))
    assert bank.image_index.tolist() == [[10, -1], [12, -1], [-1, -1]]


# -- diagnostics hook and loss terms ----------------------------------------------------------------

def test_last_cam_and_loss_terms_in_both_engines():
    ref, fast = _method(engine="reference"), _method(engine="fast")
    fast.load_state_dict(ref.state_dict())
    opts = [torch.optim.Adam(m.param_groups()) for m in (ref, fast)]
    for m in (ref, fast):
        m.train()
        m.start_epoch(0)
    for batch in _batches(2):
        stats = [m.train_step(dict(batch), o) for m, o in zip((ref, fast), opts)]
        for m, s in zip((ref, fast), stats):
            cam = m.last_cam
            assert cam["indices"] is batch["index"]
            assert cam["grids"] == [(8, 8), (4, 4)]
            assert [k.shape for k in cam["keep"]] == [(B, 64), (B, 16)] and cam["keep"][0].dtype == torch.bool
            assert cam["targets"].dtype == torch.long and cam["targets"].shape == (B,)
            assert not any(k.requires_grad for k in cam["keep"])
            torch.testing.assert_close(s["loss_classifier"] + s["loss_estimator"], s["loss_sup"])
            assert {"loss_sup", "loss_classifier", "loss_estimator", "loss_cl", "cl_step"} <= set(s)
        assert torch.equal(ref.last_cam["targets"], fast.last_cam["targets"])
        for a, b in zip(ref.last_cam["keep"], fast.last_cam["keep"]):
            assert torch.equal(a, b)


def test_supervised_terms_sum_to_the_loss():
    g = torch.Generator().manual_seed(0)
    logits, est = torch.randn(6, C, generator=g), torch.randn(6, C, generator=g)
    observed = torch.zeros(6, C)
    observed[torch.arange(6), torch.arange(6) % C] = 1
    a, b = scob_supervised_terms(logits, est, observed, 1.5)
    assert torch.equal(a + b, scob_supervised_loss(logits, est, observed, 1.5))
    p, e, y = torch.sigmoid(logits), torch.sigmoid(est), observed
    bce = -(e * p.log() + (1 - e) * (1 - p).log()).mean()
    epr = (-(y * p.log())).mean() + ((p.sum(1).mean() - 1.5) / C) ** 2
    torch.testing.assert_close(a, 0.5 * (bce + epr), rtol=1e-5, atol=1e-6)


# -- the preset --------------------------------------------------------------------------------------

def test_preset_parses_with_the_public_hyperparameters():
    from scob_fast.config import parse_args
    config = parse_args(["--config", str(ROOT / "configs/scob-coco2014.yaml"), "--backbone-weights", "w.pth"])
    d, m, o, a = config.data, config.model, config.optim, config.method
    assert (d.dataset, d.protocol, d.labels, d.image_size) == ("coco2014", "scob", "single", 448)
    assert (m.method, m.backbone, m.dim, m.ffn, m.dropout) == ("scob", "resnet50", 1024, 2048, 0.1)
    assert (o.epochs, o.batch_size, o.lr_step, o.weight_decay, o.expected_positives) == (20, 8, 16, 0.0, 3.9)
    assert (o.lr_linear, o.lr_transformer, o.lr_projector, o.lr_classifier, o.lr_estimator) == \
        (1e-3, 4e-5, 1e-2, 1e-3, 1e-2)
    assert (a.lambda_cl, a.temperature, a.ema_alpha, a.bank_size, a.cam_threshold) == (0.1, 1.0, 0.999, 2, 0.5)
    assert a.published_bn and a.published_ema and a.published_bank and not a.soft_correlation
    assert config.run.map_empty_class == "zero"
    assert Scob.needs_unfolded_batchnorm(a)


def test_explain_gives_the_training_masks():
    """reporting.explain asks Scob.explain: layer-resolution maps, and the keep masks that training
    computes (here against the reference engine's hook-library way, in eval mode)."""
    method = _method(engine="reference")
    method.train()
    batch = next(_batches(1))
    classes = torch.tensor([[0, 1], [2, 3], [4, 0], [1, 2]])
    maps = method.explain(batch["image"], classes)
    assert maps["cam"].shape == (B, 2, 4, 4) and maps["keep_low"].shape == (B, 2, 8, 8)
    assert maps["keep_high"].dtype == torch.bool and method.training
    for j in range(2):
        low, high = method._cam_masks_reference(batch["image"], classes[:, j])
        assert torch.equal(maps["keep_low"][:, j].flatten(1), low)
        assert torch.equal(maps["keep_high"][:, j].flatten(1), high)


@pytest.mark.parametrize("update", ["published", "joint"])
@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_estimator_blend_moves_unknown_entries_towards_the_classifier(share, update, monkeypatch):
    """--estimator-blend s: after the supervised step, the batch's unknown entries are
    (1 - s) sigmoid(g) + s p in probability, p the classifier's probabilities of that step;
    observed positives and other rows keep the values the gradient step gave them."""
    captured = {}
    blend = Scob._blend_estimator

    def spy(self, probabilities, batch):
        # the rows after the supervised gradient step, and the classifier's probabilities of that step
        captured["p"] = probabilities.clone()
        captured["rows"] = self.estimator.logits.detach().clone()
        return blend(self, probabilities, batch)
    monkeypatch.setattr(Scob, "_blend_estimator", spy)
    method = _method(estimator_blend=share, contrastive_update=update)
    opt = torch.optim.Adam(method.param_groups())
    method.train()
    method.start_epoch(0)
    batch = next(_batches(1))
    method.train_step(batch, opt)
    if share == 0.0:
        assert not captured, "--estimator-blend 0 (published) must not blend"
        return
    after = method.estimator.logits.detach()
    rows, index = captured["rows"], batch["index"]
    unknown = batch["observed"] <= 0
    want = torch.logit(((1 - share) * torch.sigmoid(rows[index]) + share * captured["p"]).clamp(1e-4, 1 - 1e-4))
    torch.testing.assert_close(after[index][unknown], want[unknown], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after[index][~unknown], rows[index][~unknown], rtol=0, atol=0)
    others = torch.ones(N, dtype=torch.bool)
    others[index] = False
    torch.testing.assert_close(after[others], rows[others], rtol=0, atol=0)


# -- --contrastive-update: the published two optimiser steps, or one step on the sum (ours) ----------

@pytest.mark.parametrize("engine", ["reference", "fast"])
@pytest.mark.parametrize("update", ["published", "joint"])
def test_contrastive_update_steps(update, engine, monkeypatch):
    """published: a supervised step, then a contrastive step of its own (main.py run_train_iter calls
    optimizer.step() twice); joint: one step whose loss is loss_sup + loss_cl and whose gradients
    reach both the classifier (supervised only) and the projector (contrastive only)."""
    method = _method(engine=engine, contrastive_update=update)
    amp = method.ctx.amp
    steps = []
    original = type(amp).step

    def spy(self, loss, optimizer):
        ok = original(self, loss, optimizer)
        steps.append({"loss": loss.detach().clone(),
                      "classifier": method.net.classifier.weight.grad is not None,
                      "projector": method.net.projector[0].weight.grad is not None})
        return ok
    monkeypatch.setattr(type(amp), "step", spy)
    opt = torch.optim.Adam(method.param_groups())
    method.train()
    method.start_epoch(0)
    contrasted = 0
    for batch in _batches(3):
        steps.clear()
        stats = method.train_step(batch, opt)
        ran = bool(stats["cl_step"])
        contrasted += ran
        if update == "joint":
            assert len(steps) == 1
            torch.testing.assert_close(steps[0]["loss"], stats["loss_sup"] + stats["loss_cl"])
            assert steps[0]["classifier"] and steps[0]["projector"] == ran
        else:
            assert len(steps) == 1 + ran
            torch.testing.assert_close(steps[0]["loss"], stats["loss_sup"])
            assert steps[0]["classifier"] and not steps[0]["projector"]
            if ran:
                torch.testing.assert_close(steps[1]["loss"], stats["loss_cl"])
                assert steps[1]["projector"] and not steps[1]["classifier"]
    assert contrasted >= 1, "the contrastive branch must run in this test"


def test_joint_update_takes_the_cam_from_the_heads_before_the_step(monkeypatch):
    """Joint: nothing has stepped when the CAM runs, so its gradients are those of the starting
    heads; published: the CAM sees the heads after the supervised step."""
    seen = []
    masks = Scob._masks_from_gradients

    def spy(self, f_high, gradients, *args):
        seen.append(gradients.detach().clone())
        return masks(self, f_high, gradients, *args)
    monkeypatch.setattr(Scob, "_masks_from_gradients", spy)
    batch = next(_batches(1))
    for update in ("published", "joint"):
        method = _method(contrastive_update=update)
        method.train()
        method.start_epoch(0)
        seen.clear()
        method._cam_masks_reference(batch["image"], batch["observed"].argmax(dim=1))
        method.train_step(dict(batch), torch.optim.SGD(method.param_groups(), lr=1.0))
        start, in_step = seen
        assert torch.allclose(start, in_step, rtol=1e-5, atol=1e-7) == (update == "joint"), update

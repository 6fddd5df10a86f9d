"""The fast Scob engine computes what the reference procedure computes (dropout off, float32)."""
import pytest
import torch

from scob_fast.engine.amp import AmpPolicy
from scob_fast.methods.base import HeadOptions, LearningRates, MethodContext
from scob_fast.methods.scob import Scob, ScobConfig
from scob_fast.models.backbone import build_backbone

C, N, B, S = 5, 24, 4, 128


def _config(engine, **over):
    a = dict(engine=engine, bank_size=2, lambda_cl=0.5, temperature=0.5, ema_alpha=0.9, published_ema=False,
             cam_threshold=0.5, soft_correlation=False)
    a.update(over)
    return ScobConfig(**a)


def _method(engine, backbone, observed, **over):
    ctx = MethodContext(backbone=backbone, num_classes=C, num_samples=N, observed=observed, config=_config(engine, **over),
                        device=torch.device("cpu"), amp=AmpPolicy("cpu", False), image_size=S,
                        heads=HeadOptions(dim=64, ffn=96, dropout=0.0),
                        lr=LearningRates(linear=1e-3, transformer=1e-3, projector=1e-2, classifier=1e-3,
                                         estimator=1e-2),
                        expected_positives=1.5, seed=0)
    torch.manual_seed(0)
    return Scob(ctx)


def _batches(observed, steps):
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        index = torch.randperm(N, generator=g)[:B]
        yield {"image": torch.randn(B, 3, S, S, generator=g), "image_hard": torch.randn(B, 3, S, S, generator=g),
               "observed": observed[index].float(), "index": index}


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return build_backbone("efficientnet_lite0")


def test_fast_engine_matches_reference(backbone):
    observed = torch.zeros(N, C, dtype=torch.int8)
    observed[torch.arange(N), torch.arange(N) % C] = 1
    ref = _method("reference", backbone, observed)
    fast = _method("fast", backbone, observed)
    fast.load_state_dict(ref.state_dict())
    opt_ref = torch.optim.Adam(ref.param_groups())
    opt_fast = torch.optim.Adam(fast.param_groups())
    ref.train(), fast.train()
    ref.start_epoch(0), fast.start_epoch(0)
    assert torch.equal(ref.contrast_weights, fast.contrast_weights)
    contrasted = 0
    for batch in _batches(observed, 5):
        s_ref = ref.train_step(dict(batch), opt_ref)
        s_fast = fast.train_step(dict(batch), opt_fast)
        for key in ("loss_sup", "loss_cl", "keep_low", "keep_high"):
            assert torch.allclose(s_ref[key], s_fast[key], rtol=1e-4, atol=1e-5), (key, s_ref[key], s_fast[key])
        contrasted += float(s_ref["loss_cl"]) != 0.0
    assert contrasted >= 2, "the contrastive branch must actually run in this test"
    assert torch.allclose(ref.estimator.logits, fast.estimator.logits, atol=1e-5)
    assert torch.equal(ref.bank.image_index, fast.bank.image_index)
    assert torch.allclose(ref.bank.features, fast.bank.features, atol=1e-4)
    for (name, p_ref), p_fast in zip(ref.named_parameters(), fast.parameters()):
        assert torch.allclose(p_ref, p_fast, atol=2e-4, rtol=1e-3), name


def test_ema_moves_momentum_heads_unless_published(backbone):
    observed = torch.zeros(N, C, dtype=torch.int8)
    observed[torch.arange(N), 0] = 1
    for published, should_move in ((False, True), (True, False)):
        method = _method("fast", backbone, observed, published_ema=published)
        before = [p.clone() for p in method.net.momentum_parameters()]
        opt = torch.optim.Adam(method.param_groups())
        method.start_epoch(0)
        for batch in _batches(observed, 2):
            method.train_step(batch, opt)
        moved = any(not torch.equal(a, b) for a, b in zip(before, method.net.momentum_parameters()))
        assert moved == should_move
        assert all(not p.requires_grad for p in method.net.momentum_parameters())


def test_published_switches_fast_falls_back_to_the_reference_bit_for_bit():
    """--published-bn makes the fast engine's shared clean pass invalid (BN on batch statistics
    between the passes): a fast-engine method then runs the reference procedure, so with the same
    weights, batches and (unfolded) backbones it computes exactly what a reference-engine one does,
    across an epoch's first step and later ones, BN statistics included."""
    observed = torch.zeros(N, C, dtype=torch.int8)
    observed[torch.arange(N), torch.arange(N) % C] = 1
    switches = dict(published_bn=True, published_ema=True, published_bank=True)
    ref = _method("reference", build_backbone("efficientnet_lite0", fold_batchnorm=False), observed, **switches)
    fast = _method("fast", build_backbone("efficientnet_lite0", fold_batchnorm=False), observed, **switches)
    assert fast.active_engine() == "reference" and fast.engine == "fast"
    fast.load_state_dict(ref.state_dict())
    opts = [torch.optim.Adam(m.param_groups()) for m in (ref, fast)]
    batches = _batches(observed, 5)
    for epoch, steps in ((0, 3), (1, 2)):
        for m in (ref, fast):
            m.train()
            m.start_epoch(epoch)
        for _ in range(steps):
            batch = next(batches)
            s_ref, s_fast = (m.train_step(dict(batch), o) for m, o in zip((ref, fast), opts))
            assert s_ref.keys() == s_fast.keys()
            for key in s_ref:
                assert torch.equal(s_ref[key], s_fast[key]), key
    state_ref, state_fast = ref.state_dict(), fast.state_dict()
    assert state_ref.keys() == state_fast.keys()
    for key in state_ref:
        assert torch.equal(state_ref[key], state_fast[key]), key
    # the statistics did drift, and they are in the checkpoint
    fresh = {f"backbone.{k}": v for k, v in build_backbone("efficientnet_lite0", fold_batchnorm=False).state_dict().items()}
    drifted = [k for k in ref.state_dict_for_checkpoint() if k.endswith("running_mean")]
    assert drifted and any(not torch.equal(state_ref[k], fresh[k]) for k in drifted)

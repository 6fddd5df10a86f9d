"""SADCL (Ma et al., 2023) against the public code (yu-gi-oh-leilei/SADCL).

Each `_public_*` function below is an independent transcription, written for these tests from the
public code's equations (the file is named on each), never calling ours; our losses are compared
with them on random inputs, values and gradients. Then the network's parts, prototypes from a file,
the COCO preset, and a few training steps on a stub backbone."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scob_fast.engine.amp import AmpPolicy
from scob_fast.methods.base import HeadOptions, LearningRates, MethodContext
from scob_fast.methods.sadcl import (SADCL, SADCLConfig, SADCLNet, asymmetric_loss, load_prototypes, present_features,
                                     prototype_to_sample_loss, sample_to_sample_loss, sine_position_embedding)


# ---------------------------------------------------------------------------------------------
# Transcriptions of the public code
# ---------------------------------------------------------------------------------------------

def _public_asl(x, y, gamma_neg=4, gamma_pos=0, clip=0.0, eps=1e-5):
    """code/lib_sadcl/models/loss/aslloss.py, AsymmetricLossOptimized with disable_torch_grad_focal_loss
    (scripts/sadcl/coco.sh passes --dtgfl): y in {0, 1}."""
    targets, anti_targets = y, 1 - y
    xs_pos = torch.sigmoid(x)
    xs_neg = 1.0 - xs_pos
    if clip is not None and clip > 0:
        xs_neg = (xs_neg + clip).clamp(max=1)
    loss = targets * torch.log(xs_pos.clamp(min=eps))
    loss = loss + anti_targets * torch.log(xs_neg.clamp(min=eps))
    if gamma_neg > 0 or gamma_pos > 0:
        with torch.no_grad():
            w = torch.pow(1 - xs_pos * targets - xs_neg * anti_targets,
                          gamma_pos * targets + gamma_neg * anti_targets)
        loss = loss * w
    out = -loss.sum() / x.size(0)
    return out / y.size(1) * 1000


def _public_multisupcon(features, labels, temperature=0.2, base_temperature=0.2, stabilise=True, row_order_fixed=False):
    """code/lib_sadcl/models/loss/multisupconloss.py, MultiSupConLoss.forward (contrast_mode 'all'):
    features [bs, n_view, nc, dim], labels [bs, nc] in {0, 1}. `stabilise=False` leaves out its two
    detached max subtractions (which change the value by a constant, not the gradient);
    `row_order_fixed=True` orders its anchor mask (view, image, class) like its rows."""
    eps = 1e-5
    features = F.normalize(features, dim=-1)
    bs, n_view, nc = features.shape[0], features.shape[1], features.shape[2]
    contrast = torch.cat(torch.unbind(features, dim=1), dim=0)                        # [n_view*bs, nc, dim]
    intra = torch.matmul(contrast.transpose(1, 0), contrast.permute(1, 2, 0)) / temperature  # [nc, V*bs, V*bs]
    flat = contrast.reshape(-1, contrast.shape[-1])
    all_dot = flat @ flat.t() / temperature
    mask_intra = labels.t().unsqueeze(-1).matmul(labels.t().unsqueeze(1)).repeat(1, n_view, n_view)
    not_self = 1 - torch.eye(bs * n_view, dtype=features.dtype)
    mask_intra = mask_intra * not_self.repeat(nc, 1, 1)
    logits_intra = mask_intra * intra
    if stabilise:
        m = logits_intra.permute(1, 2, 0).max(dim=-1, keepdim=True).values
        logits_intra = (logits_intra.permute(1, 2, 0) - m.detach()).permute(2, 0, 1)
    all_mask = (labels.reshape(-1, 1) @ labels.reshape(1, -1)).repeat(n_view, n_view)
    all_mask = all_mask * (1 - torch.eye(bs * nc * n_view, dtype=features.dtype))
    all_dot = all_dot * all_mask
    if stabilise:
        all_dot = all_dot - all_dot.max(dim=-1, keepdim=True).values.detach()
    labels_mask = labels.unsqueeze(1).repeat(1, n_view, 1).reshape(-1, 1)
    if row_order_fixed:
        labels_mask = labels.unsqueeze(0).repeat(n_view, 1, 1).reshape(-1, 1)
    denominator = (all_mask * torch.exp(all_dot)).sum(-1, keepdim=True)
    denominator = torch.where(denominator <= 0, torch.ones_like(denominator), denominator)
    denominator = labels_mask * torch.log(denominator + eps)
    logits_intra = logits_intra.permute(1, 0, 2).reshape(n_view * bs * nc, n_view * bs)
    mask_intra = mask_intra.permute(1, 0, 2).reshape(n_view * bs * nc, n_view * bs)
    log_prob = ((logits_intra - denominator) * mask_intra).sum(-1)
    count = mask_intra.sum(-1)
    count = torch.where(count == 0, torch.ones_like(count), count)
    loss = -(temperature / base_temperature) * log_prob / count
    labels_mask = labels_mask.reshape(-1)
    return (loss * labels_mask).sum() / labels_mask.sum()


def _public_sem2pro(semantic, proto, target, temperature=0.07):
    """code/lib_sadcl/models/loss/sem2pro.py, Semantic2PrototypeConLoss.forward (the active class):
    semantic [bs, n, dim], proto [n, dim], target [bs, n] in {0, 1}."""
    proto = proto.unsqueeze(0)
    bs = semantic.shape[0]
    semantic = semantic.permute(1, 0, 2)                                                # [n, bs, dim]
    proto = proto.repeat(bs, 1, 1).permute(1, 0, 2)
    pos_mask = target.permute(1, 0)                                                     # [n, bs]
    cos = F.cosine_similarity(semantic, proto, dim=-1) / temperature
    cos = cos - cos.max(dim=-1, keepdim=True).values.detach()
    pos2proto = cos * pos_mask
    neg = torch.exp(cos).sum(dim=-1, keepdim=True)
    neg = torch.where(neg <= 0, torch.ones_like(neg), neg)
    neg = torch.log(neg)
    pos = (torch.exp(pos2proto) * pos_mask).sum(dim=-1, keepdim=True)
    pos = torch.where(pos <= 0, torch.ones_like(pos), pos)
    pos = torch.log(pos)
    log_prob = (pos - neg).sum(dim=-1, keepdim=True)
    return -log_prob.sum() / pos_mask.sum()


def _public_memorybank_update(memorybank, embedding, target, output):
    """code/lib_sadcl/models/sadcl.py, SADCL.memorybank_update (memorybank [bs, n, dim] in place)."""
    output = torch.sigmoid(output.unsqueeze(-1)).clone()
    output[output > 0.8] = 1
    output[output < 0.8] = 0
    embedding = output * embedding
    for batch_id, label in target.nonzero():
        if output[batch_id][label] == 1:
            memorybank[batch_id][label] = embedding[batch_id][label]


def _public_sine_positions(h, w, dim, temperature=10000):
    """code/lib_sadcl/models/position_encoding.py, PositionEmbeddingSine(hidden/2, normalize=True) -> [h*w, dim]."""
    npf, scale = dim // 2, 2 * math.pi
    ones = torch.ones((1, h, w))
    y_embed, x_embed = ones.cumsum(1), ones.cumsum(2)
    y_embed = y_embed / (y_embed[:, -1:, :] + 1e-6) * scale
    x_embed = x_embed / (x_embed[:, :, -1:] + 1e-6) * scale
    dim_t = torch.arange(npf, dtype=torch.float32)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / npf)
    pos_x, pos_y = x_embed[:, :, :, None] / dim_t, y_embed[:, :, :, None] / dim_t
    pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
    pos = torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)                          # [1, dim, h, w]
    return pos[0].flatten(1).t()


def _random_labels(g, b, c, absent_columns=(0,)):
    y = (torch.rand(b, c, generator=g) < 0.4).to(torch.float64)
    y[torch.arange(b), torch.randint(0, c, (b,), generator=g)] = 1.0     # every image has a label
    for col in absent_columns:
        y[:, col] = 0.0                                                   # a class absent from the batch
    return y


# ---------------------------------------------------------------------------------------------
# Losses against the transcriptions
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gammas", [dict(gamma_neg=4, gamma_pos=0, clip=0.0), dict(gamma_neg=2, gamma_pos=1, clip=0.05),
                                    dict(gamma_neg=0, gamma_pos=0, clip=0.0)])
def test_asl_matches_public_aslloss(gammas):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(7, 9, generator=g, dtype=torch.float64) * 4).requires_grad_()
    y = _random_labels(g, 7, 9, absent_columns=())
    x_pub = x.detach().clone().requires_grad_()
    expected = _public_asl(x_pub, y, **gammas)
    got = 1000 * asymmetric_loss(x, y * 2 - 1, **gammas)       # SADCL's default --sadcl-cls-weight 1000
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)
    expected.backward()
    got.backward()
    torch.testing.assert_close(x.grad, x_pub.grad, rtol=1e-10, atol=1e-14)


def test_sadcl_default_classification_is_public_asl():
    method = _method()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64) * 3
    y = _random_labels(g, 6, 5, absent_columns=())
    got = method.classification_loss(x, y * 2 - 1)
    assert got.item() == pytest.approx(_public_asl(x, y).item(), rel=1e-12)


@pytest.mark.parametrize("backend", ["reference", None])
@pytest.mark.parametrize("anchors", ["public", "present"])
def test_sscl_with_memory_bank_matches_public_multisupcon(backend, anchors):
    g = torch.Generator().manual_seed(1)
    b, c, d = 6, 5, 8
    z = torch.randn(b, c, d, generator=g, dtype=torch.float64, requires_grad=True)
    bank = torch.randn(b, c, d, generator=g, dtype=torch.float64, requires_grad=True)
    y = _random_labels(g, b, c)
    got = sample_to_sample_loss(z, y * 2 - 1, 0.2, bank=bank, anchors=anchors, backend=backend)
    fixed = anchors == "present"
    z_pub, bank_pub = (t.detach().clone().requires_grad_() for t in (z, bank))
    public = _public_multisupcon(torch.stack([z_pub, bank_pub], dim=1), y, row_order_fixed=fixed)
    # the value: the public formula without its non-cancelling detached max shifts (eps 1e-5 aside)
    plain = _public_multisupcon(torch.stack([z, bank], dim=1).detach(), y, stabilise=False, row_order_fixed=fixed)
    assert got.item() == pytest.approx(plain.item(), rel=1e-5)
    # the gradient: the public loss exactly as it runs
    got.backward()
    public.backward()
    tol = dict(rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(z.grad, z_pub.grad, **tol)
    torch.testing.assert_close(bank.grad, bank_pub.grad, **tol)


def test_sscl_public_anchor_mask_differs_from_every_present_label():
    g = torch.Generator().manual_seed(7)
    z, bank = torch.randn(8, 6, 4, generator=g, dtype=torch.float64), torch.randn(8, 6, 4, generator=g, dtype=torch.float64)
    y = _random_labels(g, 8, 6) * 2 - 1
    public = sample_to_sample_loss(z, y, bank=bank, anchors="public")
    present = sample_to_sample_loss(z, y, bank=bank, anchors="present")
    assert public.item() < present.item()                # fewer anchors, the same divisor
    one_view = [sample_to_sample_loss(z, y, anchors=a).item() for a in ("public", "present")]
    assert one_view[0] == one_view[1]


def test_sscl_public_value_differs_only_by_a_detached_constant():
    """Why the value check above uses the unshifted public formula: the shifts move the value."""
    g = torch.Generator().manual_seed(2)
    f = torch.randn(5, 2, 4, 6, generator=g, dtype=torch.float64)
    y = _random_labels(g, 5, 4)
    shifted, plain = _public_multisupcon(f, y), _public_multisupcon(f, y, stabilise=False)
    assert abs(shifted.item() - plain.item()) > 1e-3


def test_pscl_matches_public_sem2pro():
    g = torch.Generator().manual_seed(3)
    b, c, d = 7, 6, 5
    z = torch.randn(b, c, d, generator=g, dtype=torch.float64, requires_grad=True)
    p = torch.randn(c, d, generator=g, dtype=torch.float64, requires_grad=True)
    y = _random_labels(g, b, c, absent_columns=(0, 4))
    got = prototype_to_sample_loss(z, p, y * 2 - 1, 0.07)
    z_pub, p_pub = (t.detach().clone().requires_grad_() for t in (z, p))
    expected = _public_sem2pro(z_pub, p_pub, y)
    assert got.item() == pytest.approx(expected.item(), rel=1e-10)
    got.backward()
    expected.backward()
    torch.testing.assert_close(z.grad, z_pub.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(p.grad, p_pub.grad, rtol=1e-9, atol=1e-12)
    # the absent classes' term is really there (public: the guarded empty positive sum)
    assert z.grad[:, 0].abs().sum() > 0


def test_pscl_is_over_images_not_a_softmax_over_prototypes():
    """A class's loss depends on the other images' features of that class, not on other prototypes."""
    g = torch.Generator().manual_seed(4)
    z = torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    p = torch.randn(3, 5, generator=g, dtype=torch.float64)
    y = torch.tensor([[1, -1, 1], [-1, 1, 1], [-1, -1, 1], [1, -1, -1]], dtype=torch.float64)
    base = prototype_to_sample_loss(z, p, y)
    p2 = p.clone()
    z2 = z.clone()
    z2[2, 0] = -z2[2, 0]                     # image 2's class-0 feature (class 0 absent in image 2)
    assert prototype_to_sample_loss(z2, p, y).item() != pytest.approx(base.item())
    p2[1] = p2[1] * 3                        # rescaling a prototype changes no cosine
    assert prototype_to_sample_loss(z, p2, y).item() == pytest.approx(base.item(), rel=1e-12)


def test_memory_bank_update_matches_public():
    g = torch.Generator().manual_seed(6)
    b, c, d = 5, 4, 3
    net = SADCLNet(8, c, 16, 32, bank_slots=b)
    bank0 = torch.randn(b, c, d * 0 + 16, generator=g)
    net.memory_bank.copy_(bank0)
    h = torch.randn(b, c, 16, generator=g)
    logits = torch.randn(b, c, generator=g) * 3
    y = _random_labels(g, b, c, absent_columns=())
    expected = bank0.clone()
    _public_memorybank_update(expected, h, y, logits)
    writes = net.update_memory_bank(h, logits, y * 2 - 1, 0.8)
    torch.testing.assert_close(net.memory_bank, expected, rtol=0, atol=0)
    assert writes.item() == int(((torch.sigmoid(logits) > 0.8) & (y > 0)).sum()) > 0


# ---------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------

def test_sine_position_embedding_matches_public_v2():
    for h, w, dim in ((4, 4, 32), (3, 5, 16), (14, 14, 64)):
        torch.testing.assert_close(sine_position_embedding(h, w, dim), _public_sine_positions(h, w, dim),
                                   rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="dim"):
        sine_position_embedding(2, 2, 6)


def test_query2label_head_structure():
    net = SADCLNet(16, 5, 32, 64, heads=4, encoder_layers=1, decoder_layers=2, dropout=0.0, bank_slots=3)
    t = net.transformer
    assert len(t.encoder) == 1 and len(t.decoder) == 2
    assert all(not hasattr(layer, "self_attn") for layer in t.decoder)       # removed, as Query2Label does
    assert t.decoder[0].multihead_attn.num_heads == 4
    assert net.projector[-1].out_features == 16                              # 1024 / 2048 of the width
    assert net.prototypes.shape == (5, 32) and net.memory_bank.shape == (3, 5, 32)
    assert isinstance(SADCLNet(32, 5, 32, 64).input_proj, nn.Identity)       # channels == width: no projection
    h = net.label_features(torch.randn(2, 16, 4, 4))
    assert h.shape == (2, 5, 32)
    # the decoder starts from zeros: the queries only enter as positions, so an image still matters
    h2 = net.label_features(torch.randn(2, 16, 4, 4))
    assert not torch.allclose(h, h2)


def test_decoder_layer_matches_public_forward_post():
    """transformer_decoder.py forward_post with omit_selfattn, in its sequence-first layout."""
    torch.manual_seed(0)
    net = SADCLNet(16, 5, 32, 64, heads=4, dropout=0.0)
    layer = net.transformer.decoder[0]
    tgt, memory = torch.randn(2, 5, 32), torch.randn(2, 12, 32)
    pos, query_pos = torch.randn(1, 12, 32).expand(2, -1, -1), torch.randn(1, 5, 32).expand(2, -1, -1)
    got = layer(tgt, memory, pos, query_pos)
    public_mha = nn.MultiheadAttention(32, 4)                                 # sequence-first, as the public code
    public_mha.load_state_dict(layer.multihead_attn.state_dict())
    t, m, p, qp = (x.transpose(0, 1) for x in (tgt, memory, pos, query_pos))
    tgt2 = public_mha(query=t + qp, key=m + p, value=m)[0]
    t = layer.norm2(t + tgt2)
    t = layer.norm3(t + layer.linear2(F.relu(layer.linear1(t))))
    torch.testing.assert_close(got, t.transpose(0, 1), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Prototypes from a file, the preset
# ---------------------------------------------------------------------------------------------

def test_prototypes_from_file(tmp_path):
    protos = torch.randn(5, 32)
    path = tmp_path / "protos.pt"
    torch.save(protos, path)
    method = _method(prototypes=str(path))
    torch.testing.assert_close(method.net.prototypes.detach(), protos)
    torch.testing.assert_close(method.net.memory_bank, protos[None].expand(6, -1, -1))
    assert "prototypes from" in method.describe()
    np.save(tmp_path / "protos.npy", protos.numpy())                 # the public code's format
    torch.testing.assert_close(load_prototypes(tmp_path / "protos.npy", 5, 32), protos)
    torch.save(torch.randn(5, 16), tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"expected \[5, 32\]"):
        load_prototypes(tmp_path / "bad.pt", 5, 32)
    with pytest.raises(ValueError, match="no such file"):
        load_prototypes(tmp_path / "missing.pt", 5, 32)


def test_coco_preset_parses():
    from pathlib import Path

    from scob_fast.config import parse_args
    root = Path(__file__).resolve().parents[1]
    config = parse_args(["--config", str(root / "configs/sadcl-coco2014.yaml"), "--dataset", "demo"])
    a = config.method
    assert config.model.method == "sadcl" and config.data.labels == "full"
    assert (a.s2s_weight, a.p2s_weight, a.cls_loss, a.cls_weight) == (100.0, 50.0, "asl", 1000.0)
    assert a.s2s_anchors == "public" and a.memory_bank and a.bank_threshold == 0.8
    assert (a.gamma_neg, a.gamma_pos, a.clip, a.encoder_layers, a.decoder_layers, a.heads) == (4.0, 0.0, 0.0, 1, 2, 4)
    assert (config.model.dim, config.model.ffn, config.optim.batch_size) == (2048, 8192, 64)


# ---------------------------------------------------------------------------------------------
# Training on a stub backbone
# ---------------------------------------------------------------------------------------------

class StubBackbone(nn.Module):
    channels = (8, 16)

    def __init__(self):
        super().__init__()
        self.low = nn.Conv2d(3, 8, 4, stride=4)
        self.high = nn.Conv2d(3, 16, 8, stride=8)
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, images):
        return torch.relu(self.low(images)), torch.relu(self.high(images))


def _method(num_classes=5, **options):
    torch.manual_seed(0)
    config = SADCLConfig(**options)                                       # the published defaults
    observed = torch.randint(0, 2, (24, num_classes), dtype=torch.int8) * 2 - 1
    ctx = MethodContext(backbone=StubBackbone(), num_classes=num_classes, num_samples=24, observed=observed,
                        config=config, device=torch.device("cpu"), amp=AmpPolicy(torch.device("cpu"), False),
                        image_size=32, heads=HeadOptions(dim=32, ffn=64, dropout=0.0),
                        lr=LearningRates(linear=1e-3, transformer=1e-3, projector=1e-3, classifier=1e-3),
                        batch_size=6, seed=0)
    return SADCL(ctx)


def _batch(num_classes=5, b=6):
    g = torch.Generator().manual_seed(2)
    labels = (torch.rand(b, num_classes, generator=g) < 0.5).float()
    labels[torch.arange(b), torch.arange(b) % num_classes] = 1.0
    return {"image": torch.randn(b, 3, 32, 32, generator=g), "observed": labels * 2 - 1, "labels": labels,
            "index": torch.arange(b)}


def test_present_features_selects_observed_positives():
    z = torch.arange(2 * 3 * 1, dtype=torch.float32).reshape(2, 3, 1)
    observed = torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, 0.0]])
    feats, classes = present_features(z, observed)
    assert feats[:, 0].tolist() == [0.0, 2.0, 4.0] and classes.tolist() == [0, 2, 1]


def test_sadcl_train_steps_reduce_loss_and_predict_shape():
    method = _method()
    batch = _batch()
    optimizer = torch.optim.Adam(method.param_groups())
    method.train()
    first = method.train_step(batch, optimizer)
    assert set(first) == {"loss", "loss_cls", "loss_s2s", "loss_p2s", "bank_writes"}
    assert first["loss_s2s"].item() > 0 and first["loss_p2s"].item() > 0
    total = first["loss_cls"] + 100 * first["loss_s2s"] + 50 * first["loss_p2s"]
    assert first["loss"].item() == pytest.approx(total.item(), rel=1e-5)      # published weights by default
    for _ in range(15):
        stats = method.train_step(batch, optimizer)
    for key in ("loss", "loss_cls", "loss_s2s", "loss_p2s"):
        assert stats[key].item() < first[key].item(), key
    method.eval()
    logits = method.predict_logits(batch["image"])
    assert logits.shape == (6, 5) and torch.isfinite(logits).all()
    h = method.net.label_features(method.backbone(batch["image"])[1])
    assert h.shape == (6, 5, 32)


def test_sadcl_train_step_writes_confident_present_labels_into_the_bank():
    method = _method()
    batch = _batch()
    with torch.no_grad():
        method.net.classifier_bias.fill_(5.0)                               # every score above 0.8
    before = method.net.memory_bank.clone()
    method.train()
    stats = method.train_step(batch, torch.optim.SGD(method.param_groups(), lr=0.0))
    changed = (method.net.memory_bank != before).any(-1)
    assert torch.equal(changed, batch["observed"] > 0)
    assert stats["bank_writes"].item() == (batch["observed"] > 0).sum().item()


def test_sadcl_weights_zero_leave_only_the_classification_loss():
    method = _method(s2s_weight=0.0, p2s_weight=0.0)
    stats = method.train_step(_batch(), torch.optim.Adam(method.param_groups()))
    assert stats["loss"].item() == pytest.approx(stats["loss_cls"].item())
    assert stats["loss_s2s"].item() > 0                                      # still logged


def test_sadcl_bce_variant_without_memory_bank():
    method = _method(cls_loss="bce", cls_weight=1.0, memory_bank=False)
    batch = _batch()
    stats = method.train_step(batch, torch.optim.Adam(method.param_groups()))
    assert torch.isfinite(stats["loss"]) and stats["loss_cls"].item() < 2.0


def test_sadcl_param_groups_cover_every_trainable_parameter_once():
    for options in ({}, {"prototypes": None}):
        method = _method(**options)
        grouped = [p for g in method.param_groups() for p in g["params"]]
        trainable = [p for p in method.parameters() if p.requires_grad]
        assert len(grouped) == len({id(p) for p in grouped})
        assert {id(p) for p in grouped} == {id(p) for p in trainable}
    assert not method.net.memory_bank.requires_grad

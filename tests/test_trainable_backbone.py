"""Trainable backbone stages (--train-backbone, --bn-mode, --lr-backbone), ResNet-101, the baselines'
linear head (--head linear), the Cole / SST / SADCL presets, --init-from, and the selection / AP modes
recorded in final.json: module-level checks and train.py end to end on a tiny generated COCO."""
import json
from pathlib import Path

import pytest
import torch

from scob_fast.config import parse_args
from scob_fast.data.testing import make_coco
from scob_fast.engine import checkpoint
from scob_fast.engine.amp import AmpPolicy
from scob_fast.methods.base import HeadOptions, LearningRates, MethodContext
from scob_fast.methods.single_positive import AN, BaselineConfig
from scob_fast.models.backbone import build_backbone
from scob_fast.models.efficientnet_lite import EfficientNetLite0
from scob_fast.models.resnet import ResNet50, ResNet101
from scob_fast.training import run

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")
FIRST_TRAINED = {"layer4": 4, "layer3": 3, "layer2": 2, "all": 0}


# -- ResNet-101 with torchvision's names --------------------------------------------------------------

def torchvision_resnet_keys(blocks_per_layer) -> set[str]:
    """state_dict keys of torchvision.models.resnet.ResNet with Bottleneck blocks, transcribed from
    its definition (conv1/bn1 stem; layerN.i.{conv,bn}{1,2,3}; downsample.{0,1} on each layer's first
    block, since every first block changes the width; fc)."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = {"conv1.weight", "fc.weight", "fc.bias", *(f"bn1.{k}" for k in bn)}
    for layer, blocks in enumerate(blocks_per_layer, start=1):
        for i in range(blocks):
            prefix = f"layer{layer}.{i}."
            for j in (1, 2, 3):
                keys.add(prefix + f"conv{j}.weight")
                keys.update(prefix + f"bn{j}.{k}" for k in bn)
            if i == 0:
                keys.add(prefix + "downsample.0.weight")
                keys.update(prefix + f"downsample.1.{k}" for k in bn)
    return keys


@pytest.mark.parametrize("cls, blocks, params", [(ResNet50, (3, 4, 6, 3), 25_557_032),
                                                 (ResNet101, (3, 4, 23, 3), 44_549_160)])
def test_resnet_state_dict_names_are_torchvision_s(cls, blocks, params):
    net = cls()
    assert set(net.state_dict()) == torchvision_resnet_keys(blocks)
    assert sum(p.numel() for p in net.parameters()) == params     # torchvision's resnet50 / resnet101
    assert f"layer3.{blocks[2] - 1}.conv3.weight" in net.state_dict()          # ResNet-101: layer3.22
    assert f"layer3.{blocks[2]}.conv1.weight" not in net.state_dict()


def test_resnet101_loads_strictly_from_a_named_file_and_refuses_others(tmp_path):
    torch.manual_seed(0)
    net = ResNet101()
    path = tmp_path / "resnet101-test.pth"
    torch.save(net.state_dict(), path)
    backbone = build_backbone("resnet101", str(path))
    assert backbone.channels == (1024, 2048) and not backbone.trainable
    unfolded = build_backbone("resnet101", str(path), fold_batchnorm=False, train_from="all")
    for key, value in net.state_dict().items():
        assert torch.equal(unfolded.network.state_dict()[key], value), key
    with pytest.raises(FileNotFoundError, match="resnet101-\\*.pth"):
        build_backbone("resnet101")
    other = tmp_path / "resnet50.pth"
    torch.save(ResNet50().state_dict(), other)
    with pytest.raises(ValueError, match="do not fit resnet101"):
        build_backbone("resnet101", str(other))


# -- stages ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, strides", [("resnet50", (4, 4, 8, 16, 32)),
                                           ("efficientnet_lite0", (2, 4, 8, 16, 32))])
def test_stages_partition_the_network_and_end_at_their_strides(name, strides):
    network = build_backbone(name, pretrained=False, fold_batchnorm=False).network
    owned = [id(p) for s in STAGES for m in network.stage_modules(s) for p in m.parameters()]
    classifier = {id(p) for p in (network.fc if name == "resnet50" else network._fc).parameters()}
    assert len(owned) == len(set(owned))                     # no parameter in two stages
    assert set(owned) | classifier == {id(p) for p in network.parameters()}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for stage, stride in zip(STAGES, strides):
            x = network.run_stage(stage, x)
            assert x.shape[-1] == 64 // stride, stage
        low, high = network.features(torch.ones(1, 3, 64, 64))
    assert low.shape[-1] == 4 and high.shape[-1] == 2


def _randomise_batchnorm(network):
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.3, 0.3)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)


@pytest.mark.parametrize("name", ["resnet50", "efficientnet_lite0"])
@pytest.mark.parametrize("train_from", ["layer4", "layer3", "layer2", "all"])
def test_trainable_stages_match_the_frozen_network_and_only_they_get_gradients(name, train_from):
    torch.manual_seed(0)
    reference = build_backbone(name, pretrained=False, fold_batchnorm=False)
    _randomise_batchnorm(reference.network)
    backbone = build_backbone(name, pretrained=False, fold_batchnorm=False, train_from=train_from, bn_mode="frozen")
    backbone.network.load_state_dict(reference.network.state_dict())
    for stage in backbone.frozen_stages:                      # what build_backbone does with fold_batchnorm=True
        backbone.network.fold_stage_batchnorm(stage)
    backbone.use_channels_last().train()
    x = torch.randn(2, 3, 64, 64)
    low, high = backbone(x)
    with torch.no_grad():
        expected_low, expected_high = reference(x)
    torch.testing.assert_close(high, expected_high, rtol=1e-4, atol=1e-4 * expected_high.abs().max().item())
    torch.testing.assert_close(low, expected_low, rtol=1e-4, atol=1e-4 * expected_low.abs().max().item())
    # The frozen prefix ran without autograd: nothing before the first trained stage is in the graph.
    assert (low.grad_fn is None) == (train_from == "layer4")
    high.float().square().mean().backward()
    trained = STAGES[FIRST_TRAINED[train_from]:]
    assert backbone.trainable_stages == trained
    for stage in STAGES:
        for module in backbone.network.stage_modules(stage):
            for sub in module.modules():
                is_bn = isinstance(sub, torch.nn.BatchNorm2d)
                for p in sub.parameters(recurse=False):
                    # BN weight and bias are fixed in bn-mode frozen, as FrozenBatchNorm2d
                    assert p.requires_grad == (stage in trained and not is_bn), (stage, sub)
                    assert (p.grad is not None) == p.requires_grad
    assert backbone.trainable and {g["name"] for g in backbone.param_groups(1e-5)} == {"backbone"}
    assert not build_backbone(name, pretrained=False).param_groups(1e-5)


def _an(backbone, head="linear"):
    observed = torch.zeros(16, 5, dtype=torch.int8)
    observed[torch.arange(16), torch.arange(16) % 5] = 1
    ctx = MethodContext(backbone=backbone, num_classes=5, num_samples=16, observed=observed,
                        config=BaselineConfig(head=head), device=torch.device("cpu"), amp=AmpPolicy("cpu", False),
                        image_size=64, heads=HeadOptions(dim=32, ffn=32, dropout=0.0), lr=LearningRates(),
                        expected_positives=1.0)
    return AN(ctx), observed


@pytest.mark.parametrize("bn_mode", ["frozen", "train"])
def test_a_training_step_moves_trained_stages_only_and_bn_statistics_only_in_train_mode(bn_mode):
    torch.manual_seed(0)
    backbone = build_backbone("resnet50", pretrained=False, train_from="layer4", bn_mode=bn_mode).use_channels_last()
    method, observed = _an(backbone)
    optimizer = torch.optim.Adam(method.param_groups() + backbone.param_groups(1e-3))
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    method.train()
    assert backbone.network.layer4[0].bn1.training == (bn_mode == "train")
    assert not backbone.network.layer3[0].training
    method.train_step({"image": torch.randn(4, 3, 64, 64), "observed": observed[:4].float(),
                       "index": torch.arange(4)}, optimizer)
    after = backbone.state_dict()
    for key, value in before.items():
        moved = not torch.equal(value, after[key])
        if not key.startswith("network.layer4."):
            assert not moved, key                                  # the frozen (folded) prefix
        elif ".bn" in key or "downsample.1" in key:
            assert moved == (bn_mode == "train"), key             # statistics, weight and bias
        elif key.endswith("weight"):
            assert moved, key                                      # every trained convolution
    saved = method.state_dict_for_checkpoint()
    backbone_keys = {k for k in saved if k.startswith("backbone.")}
    assert backbone_keys == {f"backbone.{k}" for k in after if k.startswith("network.layer4.")}


def test_checkpoint_of_a_trained_backbone_is_refused_by_a_frozen_one():
    torch.manual_seed(0)
    trained, _ = _an(build_backbone("resnet50", pretrained=False, train_from="layer4"))
    state = trained.state_dict_for_checkpoint()
    frozen, _ = _an(build_backbone("resnet50", pretrained=False))
    with pytest.raises(ValueError, match="does not train"):
        frozen.load_checkpoint_state(state)
    heads_only = {k: v for k, v in state.items() if not k.startswith("backbone.")}
    with pytest.raises(ValueError, match="lacks the weights of the trainable backbone stages"):
        trained.load_checkpoint_state(heads_only)
    trained.load_checkpoint_state(heads_only, require_backbone=False)   # --init-from


def test_linear_head_is_global_average_pooling_and_one_linear_layer():
    torch.manual_seed(0)
    method, _ = _an(build_backbone("efficientnet_lite0", pretrained=False), head="linear")
    f_low, f_high = torch.randn(3, 112, 4, 4), torch.randn(3, 1280, 2, 2)
    layer = method.net.classifier
    expected = f_high.mean(dim=(2, 3)) @ layer.weight.T + layer.bias          # Cole models.py: squeeze(avgpool) -> fc
    torch.testing.assert_close(method.predict_from_features(f_low, f_high), expected)
    assert [g["name"] for g in method.param_groups()] == ["classifier"]
    assert sum(p.numel() for p in method.net.parameters()) == 1280 * 5 + 5


# -- options and presets ---------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--train-backbone", "layer4", "--cache-features"], "--cache-features: the backbone trains"),
    (["--bn-mode", "train"], "--bn-mode train needs trainable stages"),
    (["--init-from", "/nonexistent/best.pth"], "--init-from /nonexistent/best.pth: no such checkpoint"),
    (["--lr-backbone", "-1"], "--lr-backbone must be a finite number >= 0"),
    (["--select", "test"], "--select"),
])
def test_bad_backbone_options_end_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--dataset", "demo", "--method", "an", *argv])
    assert message in capsys.readouterr().err


def _preset(name: str, *extra):
    return parse_args(["--config", str(ROOT / "configs" / name), "--dataset", "demo", *extra])


@pytest.mark.parametrize("name, method, epochs, batch, lr, train_from", [
    ("an-cole.yaml", "an", 10, 16, 1e-5, "all"),               # Cole train.py end_to_end
    ("epr-cole.yaml", "epr", 10, 16, 1e-5, "all"),
    ("em-cole.yaml", "em", 10, 16, 1e-5, "all"),               # SPML-AckTheUnknown main.py coco
    ("role-cole.yaml", "role", 10, 16, 1e-5, "all"),           # linear_init, stage 2
    ("role-cole-linear.yaml", "role", 25, 16, 1e-3, "none"),   # linear_init, stage 1 (lookup role/coco)
])
def test_cole_presets_are_the_public_schedule(name, method, epochs, batch, lr, train_from):
    config = _preset(name)
    m, o, r = config.model, config.optim, config.run
    assert (m.method, m.backbone, m.train_backbone, config.method.head) == (method, "resnet50", train_from, "linear")
    assert (o.epochs, o.batch_size, o.lr_classifier, o.weight_decay) == (epochs, batch, lr, 0.0)
    assert m.bn_mode == ("train" if train_from == "all" else "frozen")    # train.py: model.train()
    if train_from != "none":
        assert o.lr_backbone == lr                                 # one Adam group for f
    if method == "role":
        assert o.lr_estimator == pytest.approx(10 * lr)             # lr_mult = 10
    assert (config.data.image_size, config.data.protocol, r.select, r.ap, r.map_empty_class) == \
        (448, "cole", "val", "sklearn", "zero")


def test_sst_and_sadcl_presets_train_their_public_backbone_stages():
    m, o, r = (lambda c: (c.model, c.optim, c.run))(_preset("sst-coco2014.yaml"))
    # SST.py: layer4 requires grad, model.backbone.layer4.train(); Adam lr 1e-5; Compute_mAP_VOC2012
    assert (m.backbone, m.train_backbone, m.bn_mode, o.lr_backbone, r.ap) == \
        ("resnet101", "layer4", "train", 1e-5, "voc-interpolated")
    m, o = (lambda c: (c.model, c.optim))(_preset("sadcl-coco2014.yaml"))
    # SADCL backbone.py: layer2-4 train, FrozenBatchNorm2d; coco.sh lr 5e-5 single_lr
    assert (m.backbone, m.train_backbone, m.bn_mode, o.lr_backbone) == ("resnet101", "layer2", "frozen", 5e-5)


# -- train.py end to end on a tiny COCO ------------------------------------------------------------

@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root, _ = make_coco(tmp_path_factory.mktemp("coco"), n_train=30, n_val=12, num_classes=5)
    torch.manual_seed(0)
    net = ResNet50()
    _randomise_batchnorm(net)
    weights = root / "resnet50-random.pth"
    torch.save(net.state_dict(), weights)
    return root, weights, net.state_dict()


def _cole(coco, out, *extra, preset="an-cole.yaml"):
    root, weights, _ = coco
    return ["--config", str(ROOT / "configs" / preset), "--data-root", str(root), "--backbone-weights", str(weights),
            "--image-size", "64", "--batch-size", "4", "--epochs", "2", "--max-steps", "2", "--loader", "pil",
            "--workers", "0", "--quiet", "--out", str(out), "--lr-backbone", "1e-3", "--lr-classifier", "1e-3",
            *extra]


@pytest.mark.parametrize("train_from, bn_mode", [("all", "train"), ("layer4", "frozen"), ("layer3", "train")])
def test_cole_preset_trains_the_named_stages_and_eval_only_reproduces_it(coco, tmp_path, train_from, bn_mode):
    out = tmp_path / "run"
    final = run(parse_args(_cole(coco, out, "--train-backbone", train_from, "--bn-mode", bn_mode)))
    assert final["modes"] == {"select": "val", "selected_on": "val", "ap": "sklearn", "map_empty_class": "zero"}
    saved = checkpoint.load(out / "last.pth")
    initial = coco[2]
    stages = STAGES[FIRST_TRAINED[train_from]:]
    prefixes = tuple(f"{s}." for s in stages if s != "stem") + (("conv1.", "bn1.") if "stem" in stages else ())
    trained = {k[len("backbone.network."):]: v for k, v in saved["model"].items() if k.startswith("backbone.")}
    assert set(trained) == {k for k in initial if k.startswith(prefixes)}   # only the trained stages are kept
    for key, value in trained.items():
        moved = not torch.equal(value.contiguous(), initial[key].contiguous())
        if ".bn" in key or key.startswith("bn1.") or "downsample.1" in key:      # statistics, weight, bias
            assert moved == (bn_mode == "train"), key
        elif key.endswith("conv3.weight") or key == "conv1.weight":
            assert moved, key
    # The frozen stages come back from the weights file: if training had changed them, the weights
    # evaluated now would not be the weights that produced final.json.
    again = run(parse_args(_cole(coco, tmp_path / "eval", "--train-backbone", train_from, "--bn-mode", bn_mode,
                                 "--eval-only", "--resume", str(out / "best.pth"))))
    assert again["test"]["mAP"] == final["test"]["mAP"] and again["modes"]["ap"] == "sklearn"


def test_resume_with_a_trainable_backbone_is_exact(coco, tmp_path):
    common = ("--train-backbone", "layer4", "--bn-mode", "train", "--method", "role")
    straight, first, resumed = tmp_path / "straight", tmp_path / "first", tmp_path / "resumed"
    run(parse_args(_cole(coco, straight, *common)))
    run(parse_args(_cole(coco, first, *common, "--epochs", "1")))
    run(parse_args(_cole(coco, resumed, *common, "--resume", str(first / "last.pth"))))
    a, b = checkpoint.load(straight / "last.pth"), checkpoint.load(resumed / "last.pth")
    assert a["epoch"] == b["epoch"] == 1
    assert set(a["model"]) == set(b["model"]) and any(k.startswith("backbone.network.layer4.") for k in a["model"])
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for key in sa:
            assert torch.equal(torch.as_tensor(sa[key]), torch.as_tensor(sb[key])), key


def test_selection_and_ap_modes_are_recorded(coco, tmp_path):
    out = tmp_path / "run"
    final = run(parse_args(_cole(coco, out, "--train-backbone", "layer4", "--select", "test-best-epoch",
                                 "--ap", "voc-interpolated")))
    assert final["modes"] == {"select": "test-best-epoch", "selected_on": "test", "ap": "voc-interpolated",
                              "map_empty_class": "zero"}
    on_disk = json.loads((out / "final.json").read_text())
    assert on_disk["modes"] == final["modes"] and "best_val_mAP" not in on_disk
    rows = (out / "summary.csv").read_text().splitlines()
    header = rows[0].split(",")
    test_map = [float(r.split(",")[header.index("test_mAP")]) for r in rows[1:]]
    assert on_disk["best_test_mAP"] == pytest.approx(max(test_map)) and \
        on_disk["best_test_mAP"] == pytest.approx(on_disk["test"]["mAP"], abs=1e-12)
    assert on_disk["best_epoch"] == 1 + test_map.index(max(test_map))


def test_init_from_starts_stage_two_from_stage_one_weights(coco, tmp_path):
    """Cole's linear_init: the end-to-end stage starts from the linear stage's best classifier and
    label estimator (train.py: execute_training_run(..., linear_classifier_init, estimated_labels_init))."""
    linear = tmp_path / "linear"
    run(parse_args(_cole(coco, linear, "--epochs", "1", preset="role-cole-linear.yaml")))
    stage_one = checkpoint.load(linear / "best.pth")["model"]
    assert not any(k.startswith("backbone.") for k in stage_one)
    end_to_end = tmp_path / "e2e"
    # learning rates 0: the weights after stage 2 are the ones it started from
    run(parse_args(_cole(coco, end_to_end, "--init-from", str(linear / "best.pth"), "--epochs", "1",
                         "--lr-backbone", "0", "--lr-classifier", "0", "--lr-estimator", "0", preset="role-cole.yaml")))
    stage_two = checkpoint.load(end_to_end / "last.pth")["model"]
    for key, value in stage_one.items():
        assert torch.equal(value, stage_two[key]), key

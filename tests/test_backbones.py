import math

import pytest
import torch

from scob_fast.models.backbone import build_backbone
from scob_fast.models.efficientnet_lite import Conv2dSame
from scob_fast.models.resnet import ResNet50


def test_resnet50_torchvision_names_and_strict_load(tmp_path):
    net = ResNet50()
    keys = set(net.state_dict())
    for name in ("conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer1.0.downsample.0.weight",
                 "layer4.2.bn3.bias", "fc.weight"):
        assert name in keys
    assert sum(p.numel() for p in net.parameters()) == 25_557_032  # torchvision's resnet50
    path = tmp_path / "resnet50-test.pth"
    torch.save(net.state_dict(), path)
    backbone = build_backbone("resnet50", str(path))
    assert backbone.channels == (1024, 2048)
    low, high = backbone(torch.randn(1, 3, 448, 448))
    assert low.shape == (1, 1024, 28, 28) and high.shape == (1, 2048, 14, 14)
    assert not any(p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert not backbone.network.training  # frozen BN statistics whatever the trainer does


def test_resnet50_without_weights_and_bad_files_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="--backbone-weights"):
        build_backbone("resnet50")
    with pytest.raises(FileNotFoundError, match="not found"):
        build_backbone("resnet50", str(tmp_path / "missing.pth"))
    bad = tmp_path / "other.pth"
    torch.save({"something.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="do not fit resnet50"):
        build_backbone("resnet50", str(bad))


def test_tf_same_padding_is_asymmetric_for_stride_two():
    conv = Conv2dSame(1, 1, 3, stride=2, bias=False)
    conv.weight.data.fill_(1.0)
    x = torch.ones(1, 1, 4, 4)
    # TF SAME on 4x4, k3, s2: total pad 1, all of it right/bottom -> out[0,0] sees a full 3x3 window
    out = conv(x)
    assert out.shape == (1, 1, 2, 2)
    assert out[0, 0, 0, 0] == 9 and out[0, 0, 1, 1] == 4


def test_efficientnet_lite0_packaged_weights_recognise_imagenet_content():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    backbone = build_backbone("efficientnet_lite0")
    assert backbone.channels == (112, 1280)
    image = torch.tensor(sklearn_datasets.load_sample_image("flower.jpg")).permute(2, 0, 1).float() / 255
    image = torch.nn.functional.interpolate(image[None], size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        logits = backbone.network((image - 0.5) / 0.5)
        low, high = backbone((image - 0.5) / 0.5)
    assert 985 in logits.topk(3).indices[0].tolist()  # ImageNet "daisy"
    assert low.shape == (1, 112, 14, 14) and high.shape == (1, 1280, 7, 7)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet50", "resnet101"])
def test_folded_batchnorm_and_channels_last_match_the_plain_network(name):
    torch.manual_seed(0)
    plain = build_backbone(name, pretrained=False, fold_batchnorm=False)
    for module in plain.modules():  # non-trivial BN statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    fast = build_backbone(name, pretrained=False, fold_batchnorm=False)
    fast.network.load_state_dict(plain.network.state_dict())
    fast.network.fold_batchnorm()
    fast.use_channels_last()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        for a, b in zip(plain(x), fast(x)):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * a.abs().max().item())


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("kernel", [3, 5])
def test_tf_same_padding_buffer_equals_a_fresh_pad(channels_last, kernel):
    """Without a gradient Conv2dSame pads into a buffer it keeps; successive calls (new values,
    new shapes, new dtypes) must give exactly what a fresh F.pad gives, and a call that wants a
    gradient must not share the buffer."""
    torch.manual_seed(0)
    conv = Conv2dSame(6, 6, kernel, stride=2, groups=6, bias=False).requires_grad_(False)

    def fresh(x):
        pads = []
        for size in x.shape[-2:]:
            total = max((math.ceil(size / 2) - 1) * 2 + kernel - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        return torch.nn.functional.conv2d(torch.nn.functional.pad(x, (left, right, top, bottom)),
                                          conv.weight, None, 2, 0, 1, 6)

    layout = torch.channels_last if channels_last else torch.contiguous_format
    for shape, dtype in [((2, 6, 16, 16), torch.float32), ((2, 6, 16, 16), torch.float32),
                         ((3, 6, 15, 17), torch.float32), ((2, 6, 16, 16), torch.float64),
                         ((2, 6, 16, 16), torch.float32)]:
        x = (torch.randn(shape, dtype=dtype) + 3.0).contiguous(memory_format=layout)
        got = conv.to(dtype)(x)
        torch.testing.assert_close(got, fresh(x), rtol=0, atol=0)
    assert conv._padded_buffer is not None
    kept = conv._padded_buffer
    x = torch.randn(2, 6, 16, 16, requires_grad=True)
    conv.to(torch.float32)(x).sum().backward()
    assert conv._padded_buffer is kept and x.grad is not None

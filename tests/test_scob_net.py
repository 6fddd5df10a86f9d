import pytest
import torch

from scob_fast.models.scob_net import ScobNet


def _net(dropout=0.0):
    torch.manual_seed(0)
    return ScobNet((16, 32), num_classes=5, dim=64, heads=8, ffn=96, dropout=dropout).eval()


def test_shapes_and_masks_change_the_embedding():
    net = _net()
    f_low, f_high = torch.randn(3, 16, 8, 8), torch.randn(3, 32, 4, 4)
    logits = net(f_low, f_high)
    assert logits.shape == (3, 5)
    h = net.embed(f_low, f_high)
    assert h.shape == (3, 64) and net.projector(h).shape == (3, 64)
    keep_low = torch.rand(3, 64) < 0.4
    keep_high = torch.rand(3, 16) < 0.4
    keep_low[2] = False  # a sample whose CAM keeps nothing: finite output, no NaN
    masked = net.embed(f_low, f_high, keep_low, keep_high)
    assert torch.isfinite(masked).all() and not torch.allclose(masked, h)
    zk = net.embed_momentum(f_low, f_high, keep_low, keep_high)
    assert torch.allclose(zk, masked)  # momentum heads start as copies
    with pytest.raises(ValueError, match="keep mask must be"):
        net.embed(f_low, f_high, keep_low[:, :10], keep_high)


def test_param_groups_cover_every_trainable_parameter_once():
    net = _net()
    groups = net.param_groups(1e-3, 4e-5, 1e-2, 1e-3)
    grouped = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in net.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable) and len(grouped) == len(set(grouped))


def test_compiled_heads_match_eager():
    from scob_fast.methods.base import Method

    class Holder:  # what Method.compile needs of a method: its name and the modules to compile
        name = "holder"

        def __init__(self, net):
            self.net = net

        def compiled_modules(self):
            return list(self.net.mid_heads())

    net = _net()
    f_low, f_high = torch.randn(2, 16, 8, 8), torch.randn(2, 32, 4, 4)
    keep_low, keep_high = torch.rand(2, 64) < 0.5, torch.rand(2, 16) < 0.5
    want = net.embed(f_low, f_high, keep_low, keep_high)
    keys = set(net.state_dict())
    assert Method.compile(Holder(net)) == 4
    assert set(net.state_dict()) == keys
    got = net.embed(f_low, f_high, keep_low, keep_high)
    assert torch.allclose(got, want, atol=1e-5)

"""SST's network on the frozen backbone's last level: (2x2 average pooling,) semantic decoupling,
gated graph over the label graph, per-class classifier and the intra-image pair head.

Public reference: HCPLab-SYSU/HCP-MLR-PL model/SST.py, model/SemanticDecoupling.py,
model/GraphNeuralNetwork.py, model/Element_Wise_Layer.py, model/backbone/resnet.py (avgpool1),
utils/dataloader.py (get_graph_file)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .losses import pair_index

WORD_DIM = 300          # GloVe's width, which the paper's class embeddings have
SEMANTIC_STEPS = 3      # gated graph propagation steps (model/SST.py timeStep=3)
AUTO_POOL_MIN_GRID = 8  # --sst-pool auto: pool only grids of at least 8x8 (then at least 4x4 remain)


def label_graph(observed: torch.Tensor) -> torch.Tensor:
    """A[i, j] = N(i+ and j+) / N(i+) over the observed (partial) labels, as utils/dataloader.py
    get_graph_file; the diagonal is 1. A class without any observed positive gets a zero row (the
    public code divides 0 by 0 there and keeps the NaN: its np.nan_to_num result is discarded)."""
    pos = (observed > 0).double()
    both = pos.t() @ pos                                              # [C, C] i pos & j pos
    graph = both / torch.diagonal(both)[:, None].clamp(min=1.0)
    graph.fill_diagonal_(1.0)
    return graph.float()


def load_class_embeddings(path: str, num_classes: int) -> torch.Tensor:
    """A [C, D] float tensor from a .npy file or a torch file holding one tensor."""
    try:
        if str(path).endswith(".npy"):
            import numpy as np
            table = torch.from_numpy(np.load(path, allow_pickle=False).astype("float32"))
        else:
            table = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"--sst-class-embeddings {path}: cannot read it ({exc})") from exc
    if not isinstance(table, torch.Tensor):
        raise ValueError(f"--sst-class-embeddings {path}: expected one tensor, got {type(table).__name__}")
    if table.ndim != 2 or table.shape[0] != num_classes:
        raise ValueError(f"--sst-class-embeddings {path}: expected shape [{num_classes}, D] (one row per class), "
                         f"got {list(table.shape)}")
    if not torch.isfinite(table).all():
        raise ValueError(f"--sst-class-embeddings {path}: holds non-finite values")
    return table.float()


def _element_wise_init(weight: torch.Tensor, bias: torch.Tensor) -> None:
    """model/Element_Wise_Layer.py initParameters: weight and bias ~ U(-1/sqrt(d), 1/sqrt(d))."""
    bound = 1.0 / math.sqrt(weight.shape[1])
    with torch.no_grad():
        weight.uniform_(-bound, bound)
        bias.uniform_(-bound, bound)


class SemanticDecoupling(nn.Module):
    """(2x2 average pooling,) 1x1 conv + BN to d channels, then per class c an attention over the
    positions driven by the class embedding e_c: a = softmax_hw(fc4(fc3(tanh(fc1 x * fc2 e_c)))),
    f_c = sum_hw a_hw x_hw."""

    def __init__(self, in_channels: int, num_classes: int, dim: int, hidden: int, pool: str = "auto",
                 class_embeddings: torch.Tensor | None = None):
        super().__init__()
        if pool not in ("auto", "always", "never"):
            raise ValueError(f"pool must be auto, always or never, got {pool!r}")
        self.pool = pool
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, dim, 1, bias=False), nn.BatchNorm2d(dim))
        if class_embeddings is None:
            self.class_embedding = nn.Parameter(torch.randn(num_classes, WORD_DIM) * WORD_DIM ** -0.5)
        else:
            # fixed, as the public model's wordFeatures (nn.Parameter with requires_grad=False)
            self.register_buffer("class_embedding", class_embeddings.clone().float())
        self.image_proj = nn.Linear(dim, hidden, bias=False)
        self.word_proj = nn.Linear(self.class_embedding.shape[1], hidden, bias=False)
        self.hidden = nn.Linear(hidden, hidden)
        self.score = nn.Linear(hidden, 1)

    def pools(self, height: int, width: int) -> bool:
        return self.pool == "always" or (self.pool == "auto" and min(height, width) >= AUTO_POOL_MIN_GRID)

    def forward(self, f_high: torch.Tensor) -> torch.Tensor:
        if self.pools(f_high.shape[-2], f_high.shape[-1]):
            f_high = F.avg_pool2d(f_high, kernel_size=2, stride=2)      # resnet.py avgpool1 = AvgPool2d(2, stride=2)
        x = self.reduce(f_high).flatten(2).transpose(1, 2)               # [B, HW, d]
        joint = torch.tanh(self.image_proj(x)[:, None, :, :] * self.word_proj(self.class_embedding)[None, :, None, :])
        attention = self.score(self.hidden(joint)).squeeze(-1).softmax(dim=-1)   # [B, C, HW]
        return attention @ x                                              # [B, C, d]


class GatedGraph(nn.Module):
    """GGNN over class nodes: a = [A h, A^T h]; GRU-style update, `steps` times."""

    def __init__(self, dim: int, graph: torch.Tensor, steps: int = SEMANTIC_STEPS):
        super().__init__()
        self.steps = steps
        self.register_buffer("graph", graph)
        self.update_w, self.update_u = nn.Linear(2 * dim, dim), nn.Linear(dim, dim)
        self.reset_w, self.reset_u = nn.Linear(2 * dim, dim), nn.Linear(dim, dim)
        self.cand_w, self.cand_u = nn.Linear(2 * dim, dim), nn.Linear(dim, dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        graph = self.graph.to(h.dtype)
        for _ in range(self.steps):
            a = torch.cat([graph @ h, graph.t() @ h], dim=-1)
            z = torch.sigmoid(self.update_w(a) + self.update_u(h))
            r = torch.sigmoid(self.reset_w(a) + self.reset_u(h))
            candidate = torch.tanh(self.cand_w(a) + self.cand_u(r * h))
            h = (1.0 - z) * h + z * candidate
        return h


class SSTNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, dim: int, graph: torch.Tensor, pool: str = "auto",
                 class_embeddings: torch.Tensor | None = None):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"SST needs at least 2 classes, got {num_classes}")
        hidden = dim // 2
        self.num_classes = num_classes
        self.decoupling = SemanticDecoupling(in_channels, num_classes, dim, hidden, pool, class_embeddings)
        self.graph = GatedGraph(dim, graph)
        self.fuse = nn.Linear(2 * dim, dim)
        self.classifier_weight = nn.Parameter(torch.empty(num_classes, dim))
        self.classifier_bias = nn.Parameter(torch.empty(num_classes))
        _element_wise_init(self.classifier_weight, self.classifier_bias)
        num_pairs = num_classes * (num_classes - 1) // 2
        self.pair_in = nn.Linear(dim, hidden)
        # W2 [u_i, u_j] = W2a u_i + W2b u_j: two projections per class instead of one per pair.
        self.pair_left = nn.Linear(hidden, dim)
        self.pair_right = nn.Linear(hidden, dim, bias=False)
        self.pair_hidden = nn.Linear(dim, dim)
        self.pair_weight = nn.Parameter(torch.empty(num_pairs, dim))
        self.pair_bias = nn.Parameter(torch.empty(num_pairs))
        _element_wise_init(self.pair_weight, self.pair_bias)

    def classify(self, f_high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (logits [B, C], semantic features [B, C, d])."""
        semantic = self.decoupling(f_high)
        refined = self.graph(semantic)
        out = torch.tanh(self.fuse(torch.cat([refined, semantic], dim=-1)))
        return (out * self.classifier_weight).sum(-1) + self.classifier_bias, semantic

    def pair_logits(self, semantic: torch.Tensor) -> torch.Tensor:
        """[B, C, d] -> [B, P] co-occurrence scores of the pairs i < j."""
        i, j = pair_index(self.num_classes, semantic.device)
        u = self.pair_in(semantic)
        hidden = torch.relu(self.pair_left(u)[:, i] + self.pair_right(u)[:, j])
        return (self.pair_hidden(hidden) * self.pair_weight).sum(-1) + self.pair_bias

    def forward(self, f_high: torch.Tensor) -> torch.Tensor:
        return self.classify(f_high)[0]

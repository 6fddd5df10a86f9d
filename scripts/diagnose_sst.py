"""Why SST's pseudo labels do or do not fire: on a trained run (its best.pth, args.yaml and
observed_labels.npz) score every unknown training entry with the intra-image rule and the
cross-image rule (against the checkpoint's bank) and split the scores by the hidden truth.

    python scripts/diagnose_sst.py RUN_DIR CACHE_DIR     # a --cache-features run

Reads the cached clean features of the training split (view 0); prints one line per rule."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from scob_fast.methods.sst.losses import pair_index, pair_matrix


def _summary(name: str, scores: torch.Tensor, hidden_pos: torch.Tensor, hidden_neg: torch.Tensor) -> str:
    valid = ~torch.isnan(scores)
    a, b = scores[hidden_pos & valid], scores[hidden_neg & valid]
    return (f"{name}: hidden positives n={a.numel()} mean {a.mean():.3f} p90 {a.quantile(0.9):.3f} "
            f"max {a.max():.3f} >=0.925 {(a >= 0.925).sum().item()} >=0.75 {(a >= 0.75).sum().item()} | "
            f"hidden negatives n={b.numel()} mean {b.mean():.3f} p90 {b.quantile(0.9):.3f} max {b.max():.3f} "
            f">=0.75 {(b >= 0.75).sum().item()}")


@torch.no_grad()
def diagnose(run: Path, cache: Path) -> list[str]:
    from scob_fast.config import config_from_values
    from scob_fast.data import load_observed
    from scob_fast.engine import checkpoint
    from scob_fast.engine.amp import AmpPolicy
    from scob_fast.training import build_method, build_run_backbone, build_splits

    config = config_from_values(yaml.safe_load(open(run / "args.yaml")))
    train_set = build_splits(config)[0]
    observed = load_observed(run)
    labels = torch.from_numpy(np.asarray(train_set.labels)).float()
    device = torch.device("cpu")
    backbone = build_run_backbone(config, device)
    method = build_method(config, backbone, labels.shape[1], observed, device, AmpPolicy(device, False))
    method.load_checkpoint_state(checkpoint.load(run / "best.pth")["model"])
    method.eval()
    meta = json.load(open(cache / "train" / "meta.json"))
    high = np.memmap(cache / "train" / "high.f16", dtype=np.float16, mode="r", shape=tuple(meta["high_shape"]))
    obs = torch.from_numpy(observed).float()
    c = labels.shape[1]
    bank = F.normalize(method.bank.features, dim=-1)
    intra, cross, pairs = [], [], []
    for s in range(0, high.shape[0], 100):
        _, semantic = method.net.classify(torch.from_numpy(np.array(high[s:s + 100, 0])).float())
        pair_prob = torch.sigmoid(method.net.pair_logits(semantic))
        positive = (obs[s:s + 100] > 0).float()
        count = positive.sum(1, keepdim=True)
        mean = (pair_matrix(pair_prob, c) * positive[:, :, None]).sum(1) / count.clamp(min=1)
        intra.append(torch.where(count > 0, mean, torch.full_like(mean, float("nan"))))
        cross.append(torch.einsum("bcd,ckd->bck", F.normalize(semantic, dim=-1), bank).mean(-1))
        pairs.append(pair_prob)
    intra, cross, pairs = torch.cat(intra), torch.cat(cross), torch.cat(pairs)
    unknown = obs == 0
    hidden_pos, hidden_neg = unknown & (labels > 0), unknown & (labels == 0)
    i, j = pair_index(c)
    both_true = (labels[:, i] > 0) & (labels[:, j] > 0)
    both_obs = (obs[:, i] > 0) & (obs[:, j] > 0)
    return [_summary("intra-image score", intra, hidden_pos, hidden_neg),
            _summary("cross-image similarity", cross, hidden_pos, hidden_neg),
            f"pair head sigmoid: truly co-occurring and both observed positive {pairs[both_true & both_obs].mean():.3f} "
            f"(n={int((both_true & both_obs).sum())}), truly co-occurring otherwise "
            f"{pairs[both_true & ~both_obs].mean():.3f} (n={int((both_true & ~both_obs).sum())}), "
            f"not co-occurring {pairs[~both_true].mean():.3f}; share of truly co-occurring pairs whose target is "
            f"positive: {(both_obs & both_true).sum().item() / max(1, both_true.sum().item()):.3f}",
            f"bank slots filled per class: {method.bank.count.tolist()}"]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        raise SystemExit(__doc__)
    for line in diagnose(Path(argv[0]), Path(argv[1])):
        print(line)


if __name__ == "__main__":
    main()

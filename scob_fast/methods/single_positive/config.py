"""Options of the single-positive baselines (one set for the whole family)."""
from __future__ import annotations

from dataclasses import dataclass

from scob_fast.cli_options import option


HEADS = ("two-level", "linear")


@dataclass(frozen=True)
class BaselineConfig:
    head: str = option("two-level", "classifier head: two-level (Scob's transformer heads on both feature levels, "
                       "so that a comparison with Scob isolates the training signal) or linear (global average "
                       "pooling of the last level + one linear layer, the published baselines' model: Cole et "
                       "al.'s models.py ImageClassifier)", choices=HEADS)
    loss_hparams: str | None = option(None, "baseline loss hyper-parameters (defaults: the authors' code), e.g. "
                                      "'delta_rel=0.002,selection=topk' (LL-*), 'tau=0.6,reduction=mean,"
                                      "corrected_margin=1' (SPLC), 'init_width=0.3' (ROLE), 'alpha=0.2' (EM), "
                                      "'log_epsilon=1e-5' (Cole's and EM's -log(p + 1e-5))")


def parse_hparams(text: str | None) -> dict:
    """'delta_rel=0.004,tau=0.7' -> {'delta_rel': 0.004, 'tau': 0.7}."""
    out = {}
    for item in filter(None, (text or "").split(",")):
        if "=" not in item:
            raise ValueError(f"--loss-hparams: expected key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else float(value)
        except ValueError:
            out[key.strip()] = value.strip()
    return out

"""What a training method is to the training loop.

A method owns its trainable modules and all of its state as parameters and buffers (it is an
nn.Module, so `state_dict()` checkpoints it whole and `.to(device)` moves it), its optimiser
parameter groups and its training step. The loop (scob_fast.engine) owns data, optimiser,
schedule, evaluation and checkpoints and calls only the hooks below.

Under torchrun a method trains on its rank's shard of each batch and keeps the one-process
semantics through `ctx.dist` (scob_fast.engine.distributed): it gathers its per-sample outputs and
batch fields and computes the global batch's loss and state updates on every rank; with one
process every gather returns its input.

What each method synchronises (helpers of ctx.dist, called in its own train_step):

| method | every step | every epoch |
|---|---|---|
| all | gradients averaged; BN running statistics from rank 0 (if any unfolded BN) | log sums averaged, images summed; val/test scores gathered |
| an, an-ls, wan, bce, em, epr, splc | logits (autograd), observed, index gathered: the loss (EPR's batch mean, SPLC's sum) is the global batch's | - |
| role | as above; the estimator rows of the global batch are indexed on every rank: each copy takes the same update | - |
| ll-r, ll-ct, ll-cp | as above: k = ceil(B C rate) and the rejection threshold over the global batch; LL-Cp's corrections written for every global row | - |
| em-apl | as above: the predictions and observed mask of every global row are recorded on every rank | pseudo labels from the identical full matrices |
| scob | supervised: logits (autograd), index, observed gathered, estimator + EPR of the global batch; contrastive step only if both levels keep a token on SOME rank; z (autograd), zk, classes gathered for the InfoNCE; bank top-K from every rank's candidates (zk, class, confidence, index, keep) | correlation from the full estimator: identical, no communication |
| sst | (its head's BatchNorm: per-rank batch statistics) logits, semantic features, pair logits (autograd), observed, labels gathered: partial BCE, co-occurrence, distance (pairs across ranks, keys drawn for B from (seed, step)), pseudo labels; bank pushed with the global batch | - |
| sadcl | label features h (autograd), observed gathered: ASL, SSCL, PSCL of the global batch; memory bank written from the global batch | - |
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from scob_fast.engine.amp import AmpPolicy
from scob_fast.engine.distributed import SINGLE, DistContext
from scob_fast.models.backbone import FrozenBackbone

log = logging.getLogger("scob_fast.methods")


@dataclass(frozen=True)
class HeadOptions:
    """Width of the trainable heads."""
    dim: int = 1024
    ffn: int = 2048
    dropout: float = 0.1


@dataclass(frozen=True)
class LearningRates:
    """Per-group learning rates (the public Scob code's groups; other methods map onto them)."""
    linear: float = 1e-3          # input projections and position embeddings
    transformer: float = 4e-5
    projector: float = 1e-2
    classifier: float = 1e-3
    estimator: float = 1e-2       # label estimator (ROLE, Scob)


@dataclass
class MethodContext:
    backbone: FrozenBackbone
    num_classes: int
    num_samples: int
    observed: torch.Tensor          # [N, C] int8: 1 observed positive, -1 observed negative, 0 unknown
    device: torch.device
    amp: AmpPolicy
    image_size: int
    config: object = None           # the method's own typed config (Method.config_class)
    heads: HeadOptions = field(default_factory=HeadOptions)
    lr: LearningRates = field(default_factory=LearningRates)
    expected_positives: float = 2.0
    seed: int = 0
    epochs: int = 20
    batch_size: int = 8
    hparam_family: str = "coco"     # which published per-dataset hyper-parameter row applies
    dist: DistContext = SINGLE      # rank, world size and the gathers of data-parallel training


class Method(nn.Module):
    name = "method"
    config_class: type | None = None  # dataclass of the method's options (generates its CLI flags)
    needs_hard_view = False           # does the loader have to produce the hard-augmented view?
    supports_feature_cache = True     # can it train from --cache-features batches (no image views)?
    # With --cache-features, does training still need the images (an image-space hard view), the
    # cache serving the clean view's features beside them?
    feature_cache_keeps_images = False
    label_regimes = ("single",)       # the label regimes this method is meant for; the first is its default

    @classmethod
    def needs_unfolded_batchnorm(cls, config) -> bool:
        """Does this method (with its options `config`) run the frozen backbone's BatchNorm on batch
        statistics? The app then builds the backbone without folding BN into the convolutions."""
        return False

    def __init__(self, ctx: MethodContext):
        super().__init__()
        self.ctx = ctx
        self.config = ctx.config if ctx.config is not None else (self.config_class() if self.config_class else None)
        self.backbone = ctx.backbone

    # -- hooks the loop calls -----------------------------------------------------------------
    def param_groups(self) -> list[dict]:
        raise NotImplementedError

    def start_epoch(self, epoch: int) -> None:
        """Called before the first step of `epoch` (0-based)."""

    def continue_epoch(self, epoch: int, step: int) -> None:
        """Called instead of `start_epoch` when a run resumes inside `epoch` at `step`: the state that
        start_epoch prepared was restored from the checkpoint; set plain attributes only."""

    def train_step(self, batch: dict, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        """One iteration; returns detached scalar tensors for logging (no host sync required)."""
        raise NotImplementedError

    def feature_cache_problem(self) -> str | None:
        """Why this method, with its options, cannot train with --cache-features (None: it can)."""
        if not self.supports_feature_cache:
            return "it needs image-space views, which cached features cannot give"
        return None

    def predict_batch(self, batch: dict) -> torch.Tensor:
        if "features_low" in batch:
            return self.predict_from_features(batch["features_low"], batch["features_high"])
        return self.predict_logits(batch["image"])

    def describe(self) -> str:
        """One line for the run log: the method and any engine/variant it runs."""
        return self.name

    def compiled_modules(self) -> list[nn.Module]:
        """The modules `compile()` hands to torch.compile (the trainable heads)."""
        return []

    def compile(self) -> int:
        """torch.compile the method's heads in place (Module.compile keeps parameter names, so
        checkpoints are unchanged; the custom ops have fake kernels for tracing)."""
        modules = self.compiled_modules()
        for module in modules:
            module.compile(dynamic=False)
        log.info("--compile: %d modules of %s compiled lazily on first use", len(modules), self.name)
        return len(modules)

    def state_dict_for_checkpoint(self) -> dict:
        # The frozen backbone is rebuilt from its weights file; don't store 100 MB of it per checkpoint.
        # Its trainable stages (parameters and BN statistics) are kept: they are the run's own.
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}
        trained = getattr(self.backbone, "trainable_state_dict", dict)()
        state.update({f"backbone.{k}": v for k, v in trained.items()})
        return state

    def load_checkpoint_state(self, state: dict, require_backbone: bool = True) -> None:
        """Load what state_dict_for_checkpoint saved. `require_backbone=False` (a warm start from
        another run, --init-from) lets trainable backbone stages that the checkpoint lacks keep the
        weights file's values."""
        trainable = {f"backbone.{k}" for k in getattr(self.backbone, "trainable_state_dict", dict)()}
        saved = {k for k in state if k.startswith("backbone.")}
        stages = ", ".join(getattr(self.backbone, "trainable_stages", ())) or "none"
        if saved - trainable:
            # Loading trained stage weights into a backbone whose BN is folded would be silently wrong.
            raise ValueError(f"checkpoint holds trained backbone weights ({sorted(saved - trainable)[0]}, ...) that "
                             f"this backbone does not train (trainable stages: {stages}); rebuild it with the "
                             "run's own --backbone, --train-backbone and --bn-mode")
        if require_backbone and trainable - saved:
            raise ValueError(f"checkpoint lacks the weights of the trainable backbone stages ({stages}): missing "
                             f"{sorted(trainable - saved)[:3]}; it was trained with another --train-backbone")
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("backbone.")]
        if missing or unexpected:
            raise ValueError(f"checkpoint does not fit method {self.name}: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")

    # -- helpers for subclasses ---------------------------------------------------------------
    def clean_features(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone's two levels of the clean view: from the feature cache when the batch carries
        them, else one backbone pass: without autograd when the backbone is frozen, with it (for its
        trainable stages; the frozen prefix still keeps nothing) when it trains."""
        if "features_low" in batch:
            return batch["features_low"], batch["features_high"]
        trains = bool(getattr(self.backbone, "trainable", False)) and torch.is_grad_enabled()
        with torch.set_grad_enabled(trains), self.ctx.amp.autocast():
            return self.backbone(batch["image"])

    def predict_from_features(self, f_low: torch.Tensor, f_high: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"method {self.name} cannot predict from cached features")

    def predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self.ctx.amp.autocast():
            f_low, f_high = self.backbone(images)
        return self.predict_from_features(f_low, f_high)

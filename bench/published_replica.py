"""The cost of one iteration of the authors' public Scob loop (github.com/iCVTEAM/Scob, main.py
`run_train_iter`), pass for pass, built from scob_fast's own modules so that only the procedure
differs from the engines it is timed against.

What the public iteration does that scob_fast's reference engine does not, each reproduced here:
- backbone BatchNorm on batch statistics after the CAM pass: main.py calls `self.model.train()`
  after its GradCamWrapper block, so the momentum pass and the hard-view pass (and the next
  iteration's supervised pass) run BN in train mode: `--published-bn`, with the backbone unfolded;
- the hard view is built inside the step (`hard_augment.forward_batch(image)`, main.py:337, with
  `hard_augment` a data/aug.py Preprocess made at main.py:128), from the clean image tensor;
- that tensor had `images.requires_grad_(True)` set for Grad-CAM++ (main.py, inside the
  GradCamWrapper block), so the hard view, and through it the contrastive loss's backward, runs
  through the frozen backbone down to the pixels;
- Grad-CAM++ through a full extra forward and a backward to the pixels (scob_fast's reference engine
  does that too: `Scob._cam_masks_reference`);
- nn.MultiheadAttention in the heads: here torch's SDPA with a boolean mask (`reference+sdpa`);
- momentum heads with their own initialisation, never updated (`--published-ema`), and the public
  bank's empty slots and NaN skip (`--published-bank`).
Not reproduced: the hook library's per-call overhead (pytorch-grad-cam's activation and gradient
hooks, its numpy and cv2 round trip of the CAM: small next to the passes), the Python heap of the
prototype bank and the Python double loop of the correlation matrix (once per epoch).
"""
from __future__ import annotations

import numpy as np
import torch

from scob_fast.data.augment import apply_hard, normalise, sample_hard_params
from scob_fast.methods.scob import Scob

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class PublishedIterationScob(Scob):
    """Scob's reference engine with the public loop's extra work (see the module docstring). Build it
    with ScobConfig(engine="reference", published_bn=True, published_ema=True, published_bank=True)
    on a backbone built with fold_batchnorm=False; `batch["image_hard"]` is ignored and rebuilt."""

    def __init__(self, ctx, seed: int = 0):
        super().__init__(ctx)
        self._rng = np.random.default_rng(seed)
        self._grad_input = None
        self.hard_passes_with_grad = 0      # hard-view backbone passes that built a graph to the pixels
        backbone_forward = self.backbone.forward

        def forward(x):
            # The hard view's pass: autograd on, whatever the caller's no_grad, because its input
            # descends from an image that requires grad (the contrastive backward reaches the pixels).
            if x is self._grad_input:
                with torch.enable_grad():
                    out = backbone_forward(x)
                self.hard_passes_with_grad += int(out[1].requires_grad)
                return out
            return backbone_forward(x)

        self.backbone.forward = forward

    def _hard_view(self, images: torch.Tensor) -> torch.Tensor:
        """data/aug.py's hard augmentation of the normalised clean tensor, in the graph: un-normalise,
        jitter / grayscale / blur, normalise again."""
        mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
        unit = (images * std + mean).clamp(0, 1)
        params = sample_hard_params(self._rng, images.shape[0])
        return normalise(apply_hard(unit, params), IMAGENET_MEAN, IMAGENET_STD, torch.float32, scale=1.0)

    def train_step(self, batch: dict, optimizer: torch.optim.Optimizer) -> dict:
        images = batch["image"].detach().clone().requires_grad_(True)
        with self.timer("hard_view"), torch.enable_grad():
            hard = self._hard_view(images)
        self._grad_input = hard
        try:
            return super().train_step({**batch, "image": images.detach(), "image_hard": hard}, optimizer)
        finally:
            self._grad_input = None

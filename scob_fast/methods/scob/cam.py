"""Batched Grad-CAM++ and the CAM keep masks Scob feeds to its masked attention, as the public code
gets them (github.com/iCVTEAM/Scob cam.py + main.py lines 308-328, through pytorch_grad_cam < 1.5:
main.py constructs GradCAMPlusPlus with `use_cuda=`, a keyword 1.5.0 removed; the formulas below are
those of pytorch-grad-cam 1.4.8, setup.py version '1.4.8', files named per step).

1. target: the class's SIGMOID output (main.py wraps the model, whose classifier returns
   torch.sigmoid(logits) (models/__init__.py ImageClassifier.forward), in ClassifierOutputTarget;
   base_cam.py forward sums target(output) over the batch and back-propagates it), so the gradient
   g = sigmoid'(logit) dlogit/dA. Grad-CAM++ is not invariant to that per-image factor.
2. weights (grad_cam_plusplus.py get_cam_weights): alpha = g^2 / (2 g^2 + sum_ij(A) g^3 + 1e-6),
   alpha = 0 where g = 0, w_k = sum_ij relu(g) alpha.
3. cam = relu(sum_k w_k A_k) (base_cam.py get_cam_image, compute_cam_per_layer np.maximum).
4. scale_cam_image (utils/image.py): per image (x - min) / (1e-7 + max(x - min)), then cv2.resize to
   the input's (W, H), INTER_LINEAR (half-pixel centres, edge replicated: F.interpolate bilinear,
   align_corners=False).
5. aggregate_multi_layers: relu, mean over the one target layer, scale_cam_image again (min-max,
   no resize).
6. Scob (cam.py resize_mask, crop_corner, generate_binary_mask): average-pool to each token grid
   (kernel = input / grid), the four corner cells set to 0, keep cells >= 0.5.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

ALPHA_EPS = 1e-6     # grad_cam_plusplus.py: eps = 0.000001
SCALE_EPS = 1e-7     # utils/image.py scale_cam_image: img / (1e-7 + np.max(img))


def grad_cam_plus_plus_weights(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """activations, gradients: [B, K, H, W] -> channel weights [B, K] (float32)."""
    if activations.shape != gradients.shape or activations.dim() != 4:
        raise ValueError(f"grad_cam_plus_plus: activations {tuple(activations.shape)} and gradients "
                         f"{tuple(gradients.shape)} must both be [B, K, H, W]")
    a = activations.float()
    g = gradients.float()
    g2 = g * g
    g3 = g2 * g
    sum_a = a.sum(dim=(2, 3), keepdim=True)
    alpha = g2 / (2 * g2 + sum_a * g3 + ALPHA_EPS)
    alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
    return (g.clamp(min=0) * alpha).sum(dim=(2, 3))


def min_max(cam: torch.Tensor) -> torch.Tensor:
    """scale_cam_image's per-image normalisation of [B, H, W]."""
    flat = cam.flatten(1)
    flat = flat - flat.min(dim=1, keepdim=True).values
    return (flat / (SCALE_EPS + flat.max(dim=1, keepdim=True).values)).view_as(cam)


def grad_cam_plus_plus(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ map at the layer's resolution [B, H, W]: relu(sum_k w_k A_k), min-max per image."""
    weights = grad_cam_plus_plus_weights(activations, gradients)
    cam = (weights[:, :, None, None] * activations.float()).sum(dim=1).clamp(min=0)
    return min_max(cam)


def upsample_cam(cam: torch.Tensor, image_size) -> torch.Tensor:
    """Steps 4-5 after the first min-max: bilinear to the input size, relu, min-max again -> [B, S, S]."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    full = F.interpolate(cam[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    return min_max(full.clamp(min=0))


def published_cam(activations: torch.Tensor, gradients: torch.Tensor, image_size) -> torch.Tensor:
    """pytorch_grad_cam's GradCAMPlusPlus output for one target layer: [B, S_h, S_w] in [0, 1]."""
    return upsample_cam(grad_cam_plus_plus(activations, gradients), image_size)


def keep_masks_from_full(cam: torch.Tensor, grids: list[tuple[int, int]], threshold: float = 0.5) -> list[torch.Tensor]:
    """Step 6: input-resolution CAM [B, S, S] -> one bool keep mask [B, h*w] per token grid (True =
    attend): average-pooled to the grid, corner cells cleared, kept where >= threshold."""
    masks = []
    for height, width in grids:
        pooled = F.adaptive_avg_pool2d(cam[:, None].float(), (height, width))[:, 0]
        pooled[:, 0, 0] = 0
        pooled[:, 0, -1] = 0
        pooled[:, -1, 0] = 0
        pooled[:, -1, -1] = 0
        masks.append((pooled >= threshold).flatten(1))
    return masks


def cam_keep_masks(cam: torch.Tensor, image_size, grids: list[tuple[int, int]],
                   threshold: float = 0.5) -> list[torch.Tensor]:
    """A layer-resolution Grad-CAM++ map [B, h, w] (grad_cam_plus_plus) -> the keep masks of each
    token grid, as published: upsample_cam, then keep_masks_from_full."""
    return keep_masks_from_full(upsample_cam(cam, image_size), grids, threshold)


def target_classes(observed: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
    """The class each image's CAM (and contrastive anchor) is about: its observed positive; with
    several, the most confident one; with none, the most confident class overall. (The public code
    takes `target.max(dim=1)`, the one positive of its single-positive data.)"""
    positive = observed > 0
    masked = torch.where(positive, probabilities, probabilities.new_full((), -1.0))
    best_positive = masked.argmax(dim=1)
    return torch.where(positive.any(dim=1), best_positive, probabilities.argmax(dim=1))

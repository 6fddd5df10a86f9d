"""Batched Grad-CAM++ and the CAM keep masks Scob feeds to its masked attention.

Grad-CAM++ (Chattopadhay et al. 2018) weights each channel k of the last-level activations A by
sum_ij relu(dY/dA_kij) * alpha_kij with alpha = g^2 / (2 g^2 + sum_ij(A_k) g^3), where g is the
gradient of the target logit; the map is relu(sum_k w_k A_k), min-max normalised per image.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-7


def grad_cam_plus_plus(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """activations, gradients: [B, K, H, W] -> CAM [B, H, W] in [0, 1] (per-image min-max)."""
    if activations.shape != gradients.shape or activations.dim() != 4:
        raise ValueError(f"grad_cam_plus_plus: activations {tuple(activations.shape)} and gradients "
                         f"{tuple(gradients.shape)} must both be [B, K, H, W]")
    a = activations.float()
    g = gradients.float()
    g2 = g * g
    g3 = g2 * g
    sum_a = a.sum(dim=(2, 3), keepdim=True)
    alpha = g2 / (2 * g2 + sum_a * g3 + EPS)
    alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
    weights = (alpha * g.clamp(min=0)).sum(dim=(2, 3), keepdim=True)
    cam = (weights * a).sum(dim=1).clamp(min=0)
    flat = cam.flatten(1)
    flat = flat - flat.min(dim=1, keepdim=True).values
    flat = flat / (flat.max(dim=1, keepdim=True).values + EPS)
    return flat.view_as(cam)


def cam_keep_masks(cam: torch.Tensor, image_size: int | tuple[int, int], grids: list[tuple[int, int]],
                   threshold: float = 0.5) -> list[torch.Tensor]:
    """CAM [B, h, w] -> one bool keep mask [B, H*W] per token grid (True = attend).

    As published: upsample the CAM to the input size, average-pool it to each token grid, clear the
    four corner cells, keep cells above the threshold.
    """
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    full = F.interpolate(cam[:, None].float(), size=size, mode="bilinear", align_corners=False)
    masks = []
    for height, width in grids:
        pooled = F.adaptive_avg_pool2d(full, (height, width))[:, 0]
        pooled[:, 0, 0] = 0
        pooled[:, 0, -1] = 0
        pooled[:, -1, 0] = 0
        pooled[:, -1, -1] = 0
        masks.append((pooled > threshold).flatten(1))
    return masks


def target_classes(observed: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
    """The class each image's CAM (and contrastive anchor) is about: its observed positive; with
    several, the most confident one; with none, the most confident class overall."""
    positive = observed > 0
    masked = torch.where(positive, probabilities, probabilities.new_full((), -1.0))
    best_positive = masked.argmax(dim=1)
    return torch.where(positive.any(dim=1), best_positive, probabilities.argmax(dim=1))

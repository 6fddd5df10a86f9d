"""The hard augmentation of Scob's second view, defined once and used by both loaders.

Per image, independently:
- colour jitter with probability 0.3: brightness, contrast and saturation factors ~ U[0.2, 1.8]
  (strength 0.8), hue shift ~ U[-0.2, 0.2] of the colour circle (+-72 degrees);
- random grayscale with probability 0.2;
- Gaussian blur, 3x3 window, sigma ~ U[1, 2], with probability 0.2.

The colour transform is the one DALI's `color_twist` computes, in this fixed order (measured against
DALI 2.4): hue rotation and saturation scaling of the chroma plane in YIQ space, then contrast around
mid-grey 128, then brightness as a gain; out = b * (128 + c * (M(h, s) x - 128)), clamped to [0, 255].
Grayscale after jitter equals saturation 0 of the same transform (luma is linear with weights that sum
to 1, so it commutes with brightness and contrast), which is how both loaders apply it. This differs
from torchvision's ColorJitter (random order, contrast around the image mean, hue in HSV): the
distribution is the same in both of OUR loaders, which is what matters for Scob.

Every random draw of a batch comes from `draw_batch`, i.e. from default_rng([seed, epoch, batch
number]) and nothing else: the same flips and hard-view factors in both loaders, whatever the
worker count or the history of the process, so a run resumed in the middle of an epoch sees the
batches an uninterrupted one would, and no global RNG (random, np.random, torch) is touched.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

HARD_AUG = {
    "jitter_p": 0.3, "brightness": 0.8, "contrast": 0.8, "saturation": 0.8, "hue": 0.2,
    "gray_p": 0.2, "blur_p": 0.2, "blur_sigma": (1.0, 2.0), "blur_window": 3,
}

_YIQ = np.array([[0.299, 0.587, 0.114],
                 [0.596, -0.274, -0.322],
                 [0.211, -0.523, 0.312]], dtype=np.float64)
_YIQ_INV = np.linalg.inv(_YIQ)


def sample_hard_params(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Per-image factors of the hard view: brightness, contrast, saturation, hue (degrees) and blur
    sigma (0 = no blur). Identity values where a transform is not applied."""
    a = HARD_AUG
    jitter = rng.random(n) < a["jitter_p"]
    gray = rng.random(n) < a["gray_p"]
    blur = rng.random(n) < a["blur_p"]

    def factor(strength):
        return np.where(jitter, rng.uniform(1 - strength, 1 + strength, n), 1.0)

    brightness, contrast, saturation = factor(a["brightness"]), factor(a["contrast"]), factor(a["saturation"])
    hue = np.where(jitter, rng.uniform(-a["hue"], a["hue"], n) * 360.0, 0.0)
    sigma = np.where(blur, rng.uniform(*a["blur_sigma"], n), 0.0)
    return {"brightness": brightness, "contrast": contrast, "saturation": saturation * ~gray,
            "hue": hue, "sigma": sigma}


def draw_batch(seed: int, epoch: int, batch: int, size: int, *, flip: bool,
               hard_view: bool) -> tuple[np.ndarray, dict[str, np.ndarray] | None]:
    """(mirror flags [size] bool, hard-view factors or None) of batch number `batch` of `epoch`.
    Drawn for every slot of the batch before any image is read, so a bad image does not shift the
    draws of the others; no flips when `flip` is False (eval)."""
    rng = np.random.default_rng([int(seed), int(epoch), int(batch)])
    flips = rng.random(size) < 0.5 if flip else np.zeros(size, dtype=bool)
    params = sample_hard_params(rng, size) if hard_view else None
    return flips, params


def colour_matrices(saturation: np.ndarray, hue_deg: np.ndarray) -> np.ndarray:
    """[B, 3, 3] RGB->RGB matrices: rotate the YIQ chroma plane by `hue_deg` and scale it by `saturation`."""
    theta = np.deg2rad(hue_deg)
    rot = np.zeros((len(theta), 3, 3))
    rot[:, 0, 0] = 1.0
    rot[:, 1, 1] = rot[:, 2, 2] = saturation * np.cos(theta)
    rot[:, 1, 2] = saturation * np.sin(theta)
    rot[:, 2, 1] = -saturation * np.sin(theta)
    return _YIQ_INV @ rot @ _YIQ


def apply_hard(images: torch.Tensor, params: dict[str, np.ndarray]) -> torch.Tensor:
    """Hard view of float images [B, 3, H, W] in [0, 255]; returns float [0, 255] (rounded like uint8).

    The plain-torch statement of the transform: the tests check the PIL path (`hard_pil`) and the
    DALI pipeline against it."""
    b = images.shape[0]
    mats = torch.from_numpy(colour_matrices(params["saturation"], params["hue"])).to(images)
    out = torch.einsum("bij,bjhw->bihw", mats, images)
    gain_b = torch.from_numpy(params["brightness"]).to(images).view(b, 1, 1, 1)
    gain_c = torch.from_numpy(params["contrast"]).to(images).view(b, 1, 1, 1)
    out = (gain_b * (128.0 + gain_c * (out - 128.0))).clamp_(0.0, 255.0).round_()
    sigma = params["sigma"]
    if np.any(sigma > 0):
        half = HARD_AUG["blur_window"] // 2
        identity = (np.arange(-half, half + 1) == 0).astype(np.float64)
        w = np.stack([_blur_taps(s) if s > 0 else identity for s in sigma])
        w = torch.from_numpy(w).to(images).repeat_interleave(3, dim=0)  # one kernel per channel
        h, wd = out.shape[-2:]
        # Reflect-101 borders, as DALI's gaussian_blur.
        flat = F.pad(out.reshape(1, b * 3, h, wd), (half, half, half, half), mode="reflect")
        flat = F.conv2d(flat, w.view(b * 3, 1, 1, -1), groups=b * 3)
        flat = F.conv2d(flat, w.view(b * 3, 1, -1, 1), groups=b * 3)
        out = flat.view(b, 3, h, wd).round_()
    return out


def _blur_taps(sigma: float) -> np.ndarray:
    half = HARD_AUG["blur_window"] // 2
    x = np.arange(-half, half + 1, dtype=np.float64)
    w = np.exp(-(x ** 2) / (2 * sigma ** 2))
    return w / w.sum()


def hard_pil(image: Image.Image, brightness: float, contrast: float, saturation: float, hue: float,
             sigma: float) -> Image.Image:
    """The same transform on one RGB PIL image with PIL's C loops (uint8 in, uint8 out): brightness,
    contrast, saturation and hue fold into one affine colour matrix; the blur is a 3x3 kernel."""
    if brightness != 1.0 or contrast != 1.0 or saturation != 1.0 or hue != 0.0:
        gain = brightness * contrast
        m = colour_matrices(np.array([saturation]), np.array([hue]))[0] * gain
        offset = brightness * 128.0 * (1.0 - contrast)
        image = image.convert("RGB", matrix=tuple(np.c_[m, np.full(3, offset)].ravel().tolist()))
    if sigma > 0:
        w = _blur_taps(sigma)
        image = image.filter(ImageFilter.Kernel((3, 3), np.outer(w, w).ravel().tolist(), scale=1.0))
    return image


def normalise(images: torch.Tensor, mean, std, dtype: torch.dtype) -> torch.Tensor:
    """(x / 255 - mean) / std per channel, cast to `dtype` (uint8 or float input, any [B, 3, H, W] layout)."""
    out = torch.empty(images.shape, dtype=torch.float32).copy_(images)
    out.sub_(torch.tensor([255.0 * m for m in mean]).view(1, 3, 1, 1))
    out.mul_(torch.tensor([1.0 / (255.0 * s) for s in std]).view(1, 3, 1, 1))
    return out if dtype == torch.float32 else out.to(dtype)


def check_mean_std(mean, std) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (RGB), got mean={mean}, std={std}")
    if any(not math.isfinite(s) or s <= 0 for s in std):
        raise ValueError(f"std must be positive, got {std}")
    return mean, std

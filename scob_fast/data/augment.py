"""The hard augmentation of Scob's second view as its public code makes it, defined once here and
used by both loaders.

The public code (github.com/iCVTEAM/Scob, main.py lines 128-140, `hard_augment`) applies, per image
of the already resized and flipped batch, each step of a list with its own probability
(data/aug.py `Preprocess.forward`: `rng.random() <= p`), in this order, on the un-normalised float
image in [0, 1]:
1. `ColorJitter(0.8, 0.8, 0.8, 0.2)` with p = 0.3: brightness, contrast and saturation factors
   ~ U[0.2, 1.8], hue shift ~ U[-0.2, 0.2] (of the colour circle), applied in a random order
   (torchvision ColorJitter.get_params: `fn_idx = torch.randperm(4)`, 0 brightness, 1 contrast,
   2 saturation, 3 hue);
2. `RandomGrayscale()` wrapped with p = 0.2; RandomGrayscale's own default p is 0.1, so an image
   turns grey with p = 0.02;
3. `GaussianBlur((3, 3), (1.0, 2.0))` with p = 0.2: one sigma ~ U[1, 2] for both axes.
The colour operations are torchvision's tensor ones (torchvision/transforms/_functional_tensor.py):
- brightness: blend with black, (b x).clamp(0, 1);
- contrast: blend with the mean of the image's grayscale (0.2989 R + 0.587 G + 0.114 B) over all
  pixels, (c x + (1 - c) mean).clamp(0, 1);
- saturation: blend with the per-pixel grayscale, (s x + (1 - s) gray).clamp(0, 1);
- hue: RGB -> HSV, h = (h + shift) mod 1, HSV -> RGB (p, q, t clamped to [0, 1], no other clamp);
- grayscale: the luma above copied to the three channels;
- blur: the 3-tap kernel exp(-x^2 / (2 sigma^2)) at x = -1, 0, 1, normalised, outer product with
  itself, reflect padding (torch "reflect": the edge pixel is not repeated).
The result stays float (not rounded to uint8), then the loader normalises it with the backbone's
mean and std. What is not reproduced: the public un-normalise step has a typo (1/0.255 for the blue
std, main.py line 132), which scales the blue channel by 0.255/0.225 before the jitter; here the hard
view starts from the loader's un-normalised image, so the typo cannot arise.

`apply_hard` (torch, batched, any device) is THE definition: the PIL loader calls it in its
workers on the uint8 batch it built, the DALI loader on the resized and flipped uint8 batch DALI
returns (DALI's operators have no random operation order and no mean-grey contrast). (This replaced
an earlier distribution built on DALI's color_twist: fixed order, contrast around 128, hue in YIQ,
grayscale with p = 0.2; it was never the published one and is not kept.)

Every random draw of a batch comes from `draw_batch`, i.e. from default_rng([seed, epoch, batch
number]) and nothing else: the same flips and hard-view parameters in both loaders, whatever the
worker count or the history of the process, so a run resumed in the middle of an epoch sees the
batches an uninterrupted one would, and no global RNG (random, np.random, torch) is touched.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F

HARD_AUG = {
    "jitter_p": 0.3, "brightness": 0.8, "contrast": 0.8, "saturation": 0.8, "hue": 0.2,
    "gray_apply_p": 0.2, "gray_p": 0.1,          # RandomApply-style p=0.2 around RandomGrayscale(p=0.1)
    "blur_p": 0.2, "blur_sigma": (1.0, 2.0), "blur_window": 3,
}
GRAY_P = HARD_AUG["gray_apply_p"] * HARD_AUG["gray_p"]     # 0.02: the effective grayscale rate
LUMA = (0.2989, 0.587, 0.114)                              # torchvision rgb_to_grayscale
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)           # torchvision ColorJitter's fn_idx codes


def sample_hard_params(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Per-image parameters of the hard view, every array of length n (order: [n, 4]).

    jitter, gray: bool; order: each row a permutation of the four colour ops (BRIGHTNESS ...);
    brightness, contrast, saturation: factors (1 where no jitter); hue: shift in turns (0 where no
    jitter); sigma: blur sigma (0 = no blur). The same number of draws per image whatever is
    applied, so one image's outcome never shifts another's."""
    a = HARD_AUG
    jitter = rng.random(n) < a["jitter_p"]
    order = np.argsort(rng.random((n, 4)), axis=1)          # a uniform random permutation per row

    def factor(strength):
        return np.where(jitter, rng.uniform(max(0.0, 1 - strength), 1 + strength, n), 1.0)

    brightness, contrast, saturation = factor(a["brightness"]), factor(a["contrast"]), factor(a["saturation"])
    hue = np.where(jitter, rng.uniform(-a["hue"], a["hue"], n), 0.0)
    gray = (rng.random(n) < a["gray_apply_p"]) & (rng.random(n) < a["gray_p"])
    blur = rng.random(n) < a["blur_p"]
    sigma = np.where(blur, rng.uniform(*a["blur_sigma"], n), 0.0)
    return {"jitter": jitter, "order": order, "brightness": brightness, "contrast": contrast,
            "saturation": saturation, "hue": hue, "gray": gray, "sigma": sigma}


def draw_batch(seed: int, epoch: int, batch: int, size: int, *, flip: bool,
               hard_view: bool) -> tuple[np.ndarray, dict[str, np.ndarray] | None]:
    """(mirror flags [size] bool, hard-view parameters or None) of batch number `batch` of `epoch`.
    Drawn for every slot of the batch before any image is read, so a bad image does not shift the
    draws of the others; no flips when `flip` is False (eval). The flips are the first draw, so the
    cached-feature loader (flips only) sees the image loaders' flips."""
    rng = np.random.default_rng([int(seed), int(epoch), int(batch)])
    flips = rng.random(size) < 0.5 if flip else np.zeros(size, dtype=bool)
    params = sample_hard_params(rng, size) if hard_view else None
    return flips, params


def subset_params(params: dict[str, np.ndarray], keep) -> dict[str, np.ndarray]:
    """The parameters of the kept slots (a bool mask or a list of slot numbers), in order."""
    keep = np.asarray(keep)
    return {k: v[keep] for k, v in params.items()}


def touched(params: dict[str, np.ndarray]) -> np.ndarray:
    """Which images the hard view changes at all (the others are the clean image)."""
    return params["jitter"] | params["gray"] | (params["sigma"] > 0)


# -- the operations (float images [n, 3, H, W] in [0, 1]; per-image factors [n]) -----------------

def grayscale(x: torch.Tensor) -> torch.Tensor:
    """[n, 1, H, W] luma 0.2989 R + 0.587 G + 0.114 B (in place on one fresh plane: 3 passes)."""
    gray = x[:, 0:1] * LUMA[0]
    gray.add_(x[:, 1:2], alpha=LUMA[1]).add_(x[:, 2:3], alpha=LUMA[2])
    return gray


def _blend(x: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """torchvision's _blend, ratio x + (1 - ratio) other clamped to [0, 1], as one lerp (equal up to
    float rounding; ratio 1 gives x exactly, lerp computing end - (end - start) (1 - w) for w >= 0.5)."""
    return torch.lerp(other, x, ratio.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)


def adjust_brightness(x, factor):
    return _blend(x, torch.zeros_like(x), factor)


def adjust_contrast(x, factor):
    return _blend(x, grayscale(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x, factor):
    return _blend(x, grayscale(x), factor)


def _rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(h, s, v) planes [n, H, W] as torchvision's _rgb2hsv computes them."""
    r, g, b = x.unbind(dim=1)
    # elementwise over the three planes: the same numbers as a max over dim 1, ~40x faster on CPU
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    equal = maxc == minc                      # grey pixels: s = 0 and h = 0, no division by zero
    chroma = maxc - minc
    ones = torch.ones_like(maxc)
    s = chroma / torch.where(equal, ones, maxc)
    divisor = torch.where(equal, ones, chroma)
    rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor
    # torchvision sums three masked terms of which exactly one is live; choosing it is the same number
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = h / 6.0 + 1.0                         # in [5/6, 11/6]: fmod(h, 1) is h - 1 where h >= 1, exactly
    h = h - (h >= 1.0).to(h.dtype)
    return h, s, maxc


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """torchvision's _hsv2rgb picks, per hue sector i = floor(6 h) mod 6, R = (v, q, p, p, t, v)[i],
    G = (t, v, v, q, p, p)[i], B = (p, p, t, v, v, q)[i] with p = v (1 - s), q = v (1 - s f),
    t = v (1 - s (1 - f)), f = 6 h - floor(6 h). The same function in closed form (no gather, ~5x
    faster on CPU): channel = v (1 - s w), w = clamp(min(k, 4 - k), 0, 1), k = (n + 6 h) mod 6 with
    n = 5, 3, 1 for R, G, B (equal up to float rounding; p, q, t need no clamp for v, s in [0, 1])."""
    h6 = h * 6.0
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(h6 + n, 6.0)
        w = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
        channels.append(v * (1.0 - s * w))
    return torch.stack(channels, dim=1)


def adjust_hue(x, shift):
    h, sat, v = _rgb_to_hsv(x)
    return _hsv_to_rgb(torch.remainder(h + shift.view(-1, 1, 1), 1.0), sat, v)


COLOUR_OPS = {BRIGHTNESS: ("brightness", adjust_brightness), CONTRAST: ("contrast", adjust_contrast),
              SATURATION: ("saturation", adjust_saturation), HUE: ("hue", adjust_hue)}


def blur_taps(sigma: float) -> np.ndarray:
    """The 1-D kernel torchvision's _get_gaussian_kernel1d builds for the 3x3 window."""
    half = (HARD_AUG["blur_window"] - 1) * 0.5
    x = np.linspace(-half, half, HARD_AUG["blur_window"])
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def _reflect_pad1(x: torch.Tensor) -> torch.Tensor:
    """torch "reflect" padding by one pixel on each side of H and W (the edge pixel not repeated),
    by concatenation: F.pad's reflection kernel is slow on CPU for these shapes."""
    x = torch.cat((x[..., 1:2], x, x[..., -2:-1]), dim=-1)
    return torch.cat((x[..., 1:2, :], x, x[..., -2:-1, :]), dim=-2)


def gaussian_blur(x: torch.Tensor, sigma: np.ndarray) -> torch.Tensor:
    """Per-image 3x3 Gaussian blur with reflect padding. Separable (the 2-D kernel is the outer
    product of the 1-D one) and written as shifted sums: a grouped conv2d of 3 taps is ~5x slower
    on CPU. Equal to torchvision's conv2d up to float rounding."""
    n = x.shape[0]
    taps = torch.from_numpy(np.stack([blur_taps(float(s)) for s in sigma])).to(x).view(n, 3, 1, 1, 1)
    padded = _reflect_pad1(x)
    rows = taps[:, 0] * padded[..., :-2] + taps[:, 1] * padded[..., 1:-1] + taps[:, 2] * padded[..., 2:]
    return taps[:, 0] * rows[..., :-2, :] + taps[:, 1] * rows[..., 1:-1, :] + taps[:, 2] * rows[..., 2:, :]


def _jitter(x: torch.Tensor, params: dict[str, np.ndarray]) -> torch.Tensor:
    """ColorJitter on images that all jitter, each with its own order and factors.

    At each of the four positions, brightness, contrast and saturation rows are one blend
    r x + (1 - r) other (other = 0, the mean grey, the grey image) and the rows whose op there is
    the hue shift blend with r = 1, which returns x exactly (see _blend; x is already in [0, 1]);
    the hue rows are then shifted. The same numbers as the per-op functions above, with a handful
    of batched ops instead of one gather and scatter per (position, op)."""
    device = x.device
    order = params["order"]
    factors = torch.from_numpy(np.stack([params["brightness"], params["contrast"], params["saturation"],
                                         params["hue"]], axis=1)).to(device=device, dtype=torch.float32)
    codes = torch.from_numpy(order).to(device)
    for position in range(4):
        code = codes[:, position]
        here = order[:, position]
        if (here != HUE).any():
            ratio = torch.where(code == HUE, torch.ones_like(factors[:, 0]),
                                factors.gather(1, code[:, None])[:, 0])
            if ((here == CONTRAST) | (here == SATURATION)).any():
                gray = grayscale(x)
                use_mean = (code == CONTRAST).to(x.dtype).view(-1, 1, 1, 1)
                use_gray = (code == SATURATION).to(x.dtype).view(-1, 1, 1, 1)
                other = use_gray * gray + use_mean * gray.mean(dim=(1, 2, 3), keepdim=True)
            else:                                   # brightness only: blend with black
                other = x.new_zeros(())
            x = _blend(x, other, ratio)
        if (here == HUE).any():
            rows = torch.from_numpy(np.flatnonzero(here == HUE)).to(device)
            x[rows] = adjust_hue(x[rows], factors[rows, HUE])
    return x


def apply_hard(images: torch.Tensor, params: dict[str, np.ndarray]) -> torch.Tensor:
    """The hard view of float images [B, 3, H, W] in [0, 1] (any device) -> float32 [B, 3, H, W].

    Jitter (ops in each image's drawn order), then grayscale, then blur, each only on the images
    drawn for it; untouched images are returned unchanged."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"apply_hard: images must be [B, 3, H, W], got {tuple(images.shape)}")
    out = images.to(torch.float32).clone()
    steps = ((params["jitter"], lambda x, mask: _jitter(x, subset_params(params, mask))),
             (params["gray"], lambda x, mask: grayscale(x).expand(-1, 3, -1, -1)),
             (params["sigma"] > 0, lambda x, mask: gaussian_blur(x, params["sigma"][mask])))
    for mask, step in steps:                 # the published order: jitter, grayscale, blur
        if mask.any():
            rows = torch.from_numpy(np.flatnonzero(mask)).to(out.device)
            out[rows] = step(out[rows], mask)
    return out


def hard_view_from_uint8(images: torch.Tensor, params: dict[str, np.ndarray], mean, std, dtype: torch.dtype,
                         clean: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 [B, 3, H, W] (resized, flipped) -> the normalised hard view, as both loaders make it.

    `clean`: the normalised clean view of the same images, if the loader has it: the images the
    hard view leaves untouched (about 55%) then copy it instead of being converted again."""
    with _one_cpu_thread(images.device):
        return _hard_view_from_uint8(images, params, mean, std, dtype, clean)


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device):
    """Run the hard view's many small CPU ops on one intra-op thread. They touch ~0.1-1 M values
    each; with torch's default threads each op opens an OpenMP region that must wait for a second
    thread, which next to DALI's threads (or on a loaded machine) made a 16-image 128 px batch take
    100-700 ms instead of 20 ms (measured here). The count is restored at once (main thread only,
    between training steps)."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _hard_view_from_uint8(images, params, mean, std, dtype, clean):
    changed = touched(params)
    if clean is None:
        out = normalise(images, mean, std, dtype)
    else:
        out = clean.to(dtype).clone()
    if changed.any():
        rows = torch.from_numpy(np.flatnonzero(changed)).to(images.device)
        hard = apply_hard(images[rows].to(torch.float32) / 255.0, subset_params(params, changed))
        out[rows] = normalise(hard, mean, std, dtype, scale=1.0)
    return out


def normalise(images: torch.Tensor, mean, std, dtype: torch.dtype, scale: float = 255.0) -> torch.Tensor:
    """(x / scale - mean) / std per channel, cast to `dtype` (uint8 or float input in [0, scale], any
    [B, 3, H, W] layout or device)."""
    out = torch.empty(images.shape, dtype=torch.float32, device=images.device).copy_(images)
    out.sub_(torch.tensor([scale * m for m in mean], device=out.device).view(1, 3, 1, 1))
    out.mul_(torch.tensor([1.0 / (scale * s) for s in std], device=out.device).view(1, 3, 1, 1))
    return out if dtype == torch.float32 else out.to(dtype)


def check_mean_std(mean, std) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (RGB), got mean={mean}, std={std}")
    if any(not math.isfinite(s) or s <= 0 for s in std):
        raise ValueError(f"std must be positive, got {std}")
    return mean, std

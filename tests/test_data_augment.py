"""The hard augmentation against an independent float64 transcription of what the public Scob code runs
(main.py `hard_augment`: torchvision ColorJitter(0.8, 0.8, 0.8, 0.2) p=0.3, RandomGrayscale() inside
p=0.2, GaussianBlur((3, 3), (1, 2)) p=0.2; the per-op formulas of torchvision's
transforms/_functional_tensor.py), per image with fixed parameters and operation order; and the
empirical rates of the sampled parameters."""
import itertools

import numpy as np
import pytest
import torch

from scob_fast.data.augment import (GRAY_P, HARD_AUG, apply_hard, draw_batch, hard_view_from_uint8,
                                    sample_hard_params, subset_params, touched)

# -- the transcription (numpy float64, one image [3, H, W] in [0, 1]) --------------------------------


def tv_gray(x):
    return 0.2989 * x[0] + 0.587 * x[1] + 0.114 * x[2]


def tv_blend(a, b, ratio):
    return np.clip(ratio * a + (1.0 - ratio) * b, 0.0, 1.0)


def tv_brightness(x, f):
    return tv_blend(x, np.zeros_like(x), f)


def tv_contrast(x, f):
    return tv_blend(x, tv_gray(x).mean(), f)


def tv_saturation(x, f):
    return tv_blend(x, tv_gray(x)[None], f)


def tv_hue(x, f):
    r, g, b = x
    maxc, minc = x.max(0), x.min(0)
    eq = maxc == minc
    cr = maxc - minc
    s = cr / np.where(eq, 1.0, maxc)
    d = np.where(eq, 1.0, cr)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    h = (maxc == r) * (bc - gc) + ((maxc == g) & (maxc != r)) * (2.0 + rc - bc) \
        + ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = np.fmod(h / 6.0 + 1.0, 1.0)
    h = np.mod(h + f, 1.0)
    v = maxc
    i = np.floor(h * 6.0)
    fr = h * 6.0 - i
    i = i.astype(np.int64) % 6
    p = np.clip(v * (1 - s), 0, 1)
    q = np.clip(v * (1 - s * fr), 0, 1)
    t = np.clip(v * (1 - s * (1 - fr)), 0, 1)
    red = np.choose(i, [v, q, p, p, t, v])
    green = np.choose(i, [t, v, v, q, p, p])
    blue = np.choose(i, [p, p, t, v, v, q])
    return np.stack([red, green, blue])


def tv_blur(x, sigma):
    k1 = np.exp(-0.5 * (np.linspace(-1.0, 1.0, 3) / sigma) ** 2)
    k1 /= k1.sum()
    k2 = np.outer(k1, k1)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="reflect")
    h, w = x.shape[1:]
    out = np.zeros_like(x)
    for dy in range(3):
        for dx in range(3):
            out += k2[dy, dx] * padded[:, dy:dy + h, dx:dx + w]
    return out


def published_hard(x, p):
    """One image through the published list: jitter (ops in p['order']), grayscale, blur."""
    ops = [lambda y: tv_brightness(y, p["brightness"]), lambda y: tv_contrast(y, p["contrast"]),
           lambda y: tv_saturation(y, p["saturation"]), lambda y: tv_hue(y, p["hue"])]
    if p["jitter"]:
        for code in p["order"]:
            x = ops[code](x)
    if p["gray"]:
        x = np.repeat(tv_gray(x)[None], 3, axis=0)
    if p["sigma"] > 0:
        x = tv_blur(x, p["sigma"])
    return x


def _images(n=3, size=20, seed=0):
    """Smooth random colour images with saturated and clipped regions (hue wrap, ties at 0 and 1)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 1.4 - 0.2
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear",
                                           align_corners=False).clamp(0, 1)


ORDERS = [(0, 1, 2, 3), (3, 2, 1, 0), (1, 3, 0, 2), (2, 0, 3, 1)]
CASES = [
    dict(jitter=True, brightness=1.3, contrast=0.6, saturation=1.5, hue=0.11, gray=False, sigma=0.0),
    dict(jitter=True, brightness=0.4, contrast=1.8, saturation=0.2, hue=-0.19, gray=False, sigma=1.2),
    dict(jitter=True, brightness=1.8, contrast=0.2, saturation=1.8, hue=0.2, gray=True, sigma=1.9),
    dict(jitter=False, brightness=1.0, contrast=1.0, saturation=1.0, hue=0.0, gray=True, sigma=1.5),
    dict(jitter=False, brightness=1.0, contrast=1.0, saturation=1.0, hue=0.0, gray=False, sigma=0.0),
]


def _params(cases, orders):
    keys = ("jitter", "brightness", "contrast", "saturation", "hue", "gray", "sigma")
    p = {k: np.array([c[k] for c in cases]) for k in keys}
    p["order"] = np.array(orders)
    return p


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_apply_hard_matches_transcription_per_image(case, order):
    x = _images(1, seed=case)
    p = _params([CASES[case]], [order])
    got = apply_hard(x, p)[0].double().numpy()
    want = published_hard(x[0].double().numpy(), {k: v[0] for k, v in p.items()})
    # float32 against float64: the ops clamp and blend, so errors stay at float32 rounding
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)


def test_mixed_batch_each_image_its_own_parameters_and_order():
    x = _images(len(CASES) * 2, seed=7)
    cases = CASES * 2
    orders = [ORDERS[i % len(ORDERS)] for i in range(len(cases))]
    p = _params(cases, orders)
    got = apply_hard(x, p).double().numpy()
    for i in range(len(cases)):
        want = published_hard(x[i].double().numpy(), {k: v[i] for k, v in p.items()})
        np.testing.assert_allclose(got[i], want, atol=2e-5, rtol=0, err_msg=f"image {i}")
    untouched = ~touched(p)
    assert untouched.any() and torch.equal(apply_hard(x, p)[torch.from_numpy(untouched)],
                                           x[torch.from_numpy(untouched)])


def test_order_matters_so_the_test_above_can_fail():
    x = _images(1, seed=3)
    a = apply_hard(x, _params([CASES[0]], [(0, 1, 2, 3)]))
    b = apply_hard(x, _params([CASES[0]], [(3, 2, 1, 0)]))
    assert (a - b).abs().max() > 1e-2


def test_sampled_rates_and_ranges():
    n = 200_000
    p = sample_hard_params(np.random.default_rng(0), n)
    sd = lambda q: 4 * np.sqrt(q * (1 - q) / n)                        # noqa: E731  4-sigma bands
    assert abs(p["jitter"].mean() - 0.3) < sd(0.3)
    assert GRAY_P == pytest.approx(0.02)
    assert abs(p["gray"].mean() - 0.02) < sd(0.02)
    assert abs((p["sigma"] > 0).mean() - 0.2) < sd(0.2)
    j = p["jitter"]
    for name in ("brightness", "contrast", "saturation"):
        f = p[name][j]
        assert f.min() >= 0.2 and f.max() <= 1.8 and abs(f.mean() - 1.0) < 0.01
        assert (p[name][~j] == 1.0).all()
    assert np.abs(p["hue"]).max() <= 0.2 and abs(np.abs(p["hue"][j]).mean() - 0.1) < 0.002
    assert (p["hue"][~j] == 0).all()
    s = p["sigma"][p["sigma"] > 0]
    assert s.min() >= 1.0 and s.max() <= 2.0 and abs(s.mean() - 1.5) < 0.01
    # every row is a permutation, and each of the 24 orders is equally likely
    assert (np.sort(p["order"], axis=1) == np.arange(4)).all()
    codes = {perm: i for i, perm in enumerate(itertools.permutations(range(4)))}
    counts = np.bincount([codes[tuple(r)] for r in p["order"][:48_000]], minlength=24)
    assert abs(counts - 2000).max() < 4 * np.sqrt(2000)
    # independence of the three decisions (the published steps draw separately)
    both = (p["jitter"] & p["gray"]).mean()
    assert abs(both - 0.3 * 0.02) < sd(0.006)


def test_draw_batch_is_keyed_and_keeps_the_flips_first():
    a_flips, a = draw_batch(5, 2, 7, 16, flip=True, hard_view=True)
    b_flips, b = draw_batch(5, 2, 7, 16, flip=True, hard_view=True)
    c_flips, _ = draw_batch(5, 2, 7, 16, flip=True, hard_view=False)
    assert np.array_equal(a_flips, b_flips) and np.array_equal(a_flips, c_flips)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    _, other = draw_batch(5, 2, 8, 16, flip=True, hard_view=True)
    assert not np.array_equal(a["brightness"], other["brightness"])
    sub = subset_params(a, [0, 3])
    assert sub["order"].shape == (2, 4) and sub["sigma"][1] == a["sigma"][3]


def test_hard_view_from_uint8_normalises_like_the_clean_view():
    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8, generator=g)
    p = _params([CASES[4], CASES[0]], [ORDERS[0], ORDERS[1]])
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    got = hard_view_from_uint8(u8, p, mean, std, torch.float32)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    want = (apply_hard(u8.float() / 255, p) - m) / s
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[0], ((u8[0].float() / 255 - m[0]) / s[0]), atol=1e-5, rtol=0)


def test_declared_constants_are_the_public_ones():
    assert (HARD_AUG["jitter_p"], HARD_AUG["brightness"], HARD_AUG["contrast"], HARD_AUG["saturation"],
            HARD_AUG["hue"]) == (0.3, 0.8, 0.8, 0.8, 0.2)
    assert (HARD_AUG["gray_apply_p"], HARD_AUG["gray_p"], HARD_AUG["blur_p"], HARD_AUG["blur_sigma"],
            HARD_AUG["blur_window"]) == (0.2, 0.1, 0.2, (1.0, 2.0), 3)

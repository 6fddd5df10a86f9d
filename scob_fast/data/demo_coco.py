"""A COCO-like synthetic dataset: long-tailed classes in scenes, small and occluded objects, masks.

The plain demo (`demo.py`) is too easy to tell methods apart (assume-negative is within 6 mAP of
full labels). This generator keeps its COCO-2014 layout but copies the statistics that make single
positive labels hard on real COCO:

- classes are (shape, colour, texture) combinations, so many pairs differ in one attribute only, and
  a texture is hard to see on a small object (confusable classes);
- class frequencies follow a Zipf law (a few frequent classes, many rare ones);
- every image is drawn from one of a few scene types, each with its own class distribution and
  background palette, so labels co-occur (the correlation Scob and SST exploit);
- objects have log-normal sizes (many small ones), may repeat (instances), overlap (drawn large to
  small; every object keeps at least `MIN_VISIBLE` of its area) and may be cut by the image border;
- grey "decoy" shapes in the background share class shapes but never class colours.

Layout (read by `read_coco`, so `train.py --dataset coco2014 --data-root <dir>` trains on it):
    <root>/train2014/COCO_train2014_<id>.jpg, <root>/val2014/COCO_val2014_<id>.jpg,
    <root>/annotations/instances_{train,val}2014.json   (segmentation: uncompressed COCO RLE of the
        VISIBLE pixels at image resolution; bbox and area are of those pixels)
    <root>/annotations/masks_{train,val}2014.npz        (per-image class map, see load_object_masks)
A label is exactly a class with at least one visible pixel, so json, masks and labels agree.

Cached in `scob_fast.env.cache_dir()/demo_coco/demo-coco-v<version>-<key>/` (key = hash of the
generator version and every parameter), built in a temporary sibling and renamed, `.complete`
written last. Deterministic: image i of a split depends only on (parameters, split, i), never on the
number of processes. The class table depends only on `num_classes`; scenes and frequencies only on
(`num_classes`, `num_scenes`, `tail`); `seed` changes the images.

Default size: 3000 train2014 images (the protocol's 2400 train / 600 val) and 900 val2014 (test),
128 px, 30 MB; 2.89 labels and 3.9 objects per image; class frequencies from 41 % down to 2.2 %
(median 5 %); chance mAP (the positive rate) about 7 %. Generation takes 39 s of CPU (52 s wall on
the 2-core dev machine with other jobs running). Calibrated with the demo backbone settings (Lite0,
128 px, d = 256, FFN 512, batch 16, 20 epochs, `--cache-features`): test mAP 45.4 with
assume-negative on single positive labels against 64.3 with full labels (real COCO: 64.9 vs 76.8).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .generated import generate_once

GENERATOR_VERSION = 1
DEMO_COCO_DEFAULTS = {
    "num_classes": 40,        # 40-80 is COCO-like; anything in [2, 384] is accepted
    "num_scenes": 6,          # scene types, each with its own class distribution
    "train_images": 3000,     # official train2014 list (protocol: 80 % train, 20 % val)
    "val_images": 900,        # official val2014 list (protocol: test)
    "image_size": 128,
    "mask_size": 64,          # side of the per-image class maps in masks_*.npz
    "mean_labels": 2.9,       # target mean number of classes per image (COCO: 2.9)
    "tail": 1.0,              # Zipf exponent of the class weights (0 = no long tail)
    "min_object": 0.1,        # object side, as a fraction of the image side: clip range
    "max_object": 0.5,
    "seed": 0,
}

SHAPES = ("circle", "square", "triangle", "star", "plus", "ring", "diamond", "hexagon", "crescent",
          "heart", "arrow", "xcross")
COLOURS = (("red", (220, 40, 40)), ("orange", (245, 140, 20)), ("yellow", (235, 215, 40)),
           ("green", (40, 165, 60)), ("cyan", (40, 200, 220)), ("blue", (40, 80, 220)),
           ("magenta", (205, 50, 200)), ("white", (240, 240, 240)))
TEXTURES = ("plain", "striped", "dotted", "checked")

MIN_VISIBLE = 0.4            # fraction of its own area an object keeps after later objects overlap it
MIN_INSIDE = 0.6             # fraction of an object that must lie inside the image
CLUSTERED = 0.4              # probability that an object is placed next to one already placed
_SUPERSAMPLE = 2
_PLACEMENT_TRIES = 16
_WORLD_SEED = 20230417       # fixes the class table and the scenes, independently of `seed`

# Muted scene palettes (pairs of background colours): context the model may use, as on COCO.
_SCENE_PALETTES = (((170, 160, 140), (120, 110, 95)), ((125, 125, 130), (85, 85, 90)),
                   ((95, 120, 80), (130, 140, 95)), ((140, 160, 185), (185, 190, 200)),
                   ((120, 95, 75), (160, 130, 100)), ((80, 115, 120), (120, 145, 140)),
                   ((150, 135, 150), (105, 95, 110)), ((160, 150, 110), (110, 100, 70)))
_DECOY_COLOURS = np.array([(110, 100, 90), (140, 130, 115), (90, 85, 80), (150, 145, 140),
                           (120, 95, 70), (100, 110, 100), (70, 70, 75)], dtype=np.float64)


# ------------------------------------------------------------------------------------- parameters
def _check_params(params: dict) -> dict:
    unknown = set(params) - set(DEMO_COCO_DEFAULTS)
    if unknown:
        raise TypeError(f"demo-coco dataset: unknown parameter(s) {sorted(unknown)}; "
                        f"allowed: {sorted(DEMO_COCO_DEFAULTS)}")
    out = {k: type(DEMO_COCO_DEFAULTS[k])(v) for k, v in {**DEMO_COCO_DEFAULTS, **params}.items()}
    limits = {"num_classes": (2, len(SHAPES) * len(COLOURS) * len(TEXTURES)), "num_scenes": (1, 64),
              "train_images": (1, 10 ** 7), "val_images": (1, 10 ** 7), "image_size": (32, 1024),
              "mean_labels": (1.0, 8.0), "tail": (0.0, 4.0), "min_object": (0.02, 0.9), "max_object": (0.05, 1.0)}
    for key, (low, high) in limits.items():
        if not low <= out[key] <= high:
            raise ValueError(f"demo-coco dataset: {key} must be in [{low}, {high}], got {out[key]}")
    if not 4 <= out["mask_size"] <= out["image_size"]:
        raise ValueError(f"demo-coco dataset: mask_size must be in [4, image_size], got {out['mask_size']}")
    if out["min_object"] >= out["max_object"]:
        raise ValueError("demo-coco dataset: min_object must be below max_object")
    return out


def _cache_key(params: dict) -> str:
    blob = json.dumps({"version": GENERATOR_VERSION, **params}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------ world
@lru_cache(maxsize=None)
def _class_table(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """(shape, colour, texture) index triples. A random sample of all combinations leaves each class
    with a couple of one-attribute neighbours among the chosen ones, the confusable pairs we want."""
    combos = [(s, c, t) for s in range(len(SHAPES)) for c in range(len(COLOURS)) for t in range(len(TEXTURES))]
    order = np.random.default_rng(_WORLD_SEED).permutation(len(combos))[:num_classes]
    return tuple(combos[i] for i in order)


def class_names(num_classes: int = DEMO_COCO_DEFAULTS["num_classes"], **_ignored) -> list[str]:
    """Category names in category-id order, e.g. 'red_striped_star'. Other parameters are accepted
    (so `class_names(**params)` works) and ignored: the table depends on `num_classes` only."""
    return [f"{COLOURS[c][0]}_{TEXTURES[t]}_{SHAPES[s]}" for s, c, t in _class_table(int(num_classes))]


@lru_cache(maxsize=None)
def _world(num_classes: int, num_scenes: int, tail: float):
    """(scene class distributions [S, C], class median sizes [C]).

    A random rank permutation decides which classes are frequent: class weights follow a shifted
    Zipf law (rank + 2) ** -tail. Rank 0 is universal (in every scene, like COCO's person); every
    other class has one home scene and leaks into the others at a small rate, so classes co-occur
    through their scene. Each class's scene weights are normalised to sum to one, so that spreading
    a class over scenes does not change its overall frequency."""
    rng = np.random.default_rng([_WORLD_SEED, num_classes, num_scenes])
    rank = rng.permutation(num_classes)
    weight = (rank + 2.0) ** -tail
    home = rng.integers(num_scenes, size=num_classes)
    affinity = np.where(home[None, :] == np.arange(num_scenes)[:, None], 1.0, 0.06)
    affinity[:, rank == 0] = 1.0
    affinity /= affinity.sum(axis=0, keepdims=True)
    scene_p = weight[None, :] * affinity
    scene_p /= scene_p.sum(axis=1, keepdims=True)
    median_size = np.exp(rng.uniform(np.log(0.7), np.log(1.4), size=num_classes))
    return scene_p, median_size


# ---------------------------------------------------------------------------------------- drawing
def _polygon(cx, cy, r, sides, rotation):
    angles = [rotation + 2 * math.pi * k / sides for k in range(sides)]
    return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in angles]


def _shape_mask(shape: str, side: int) -> Image.Image:
    """Binary ('L') mask of `shape` in a side x side square, inside its inscribed circle so that a
    later rotation never clips it."""
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    c, r = side / 2, side / 2 * 0.95
    w = max(2.0, 0.42 * r)
    box = (c - r, c - r, c + r, c + r)
    if shape == "circle":
        draw.ellipse(box, fill=255)
    elif shape == "square":
        draw.rectangle((c - 0.7 * r, c - 0.7 * r, c + 0.7 * r, c + 0.7 * r), fill=255)
    elif shape == "triangle":
        draw.polygon(_polygon(c, c + 0.1 * r, r, 3, -math.pi / 2), fill=255)
    elif shape == "star":
        pts = [(c + (r if k % 2 == 0 else 0.42 * r) * math.cos(-math.pi / 2 + k * math.pi / 5),
                c + (r if k % 2 == 0 else 0.42 * r) * math.sin(-math.pi / 2 + k * math.pi / 5)) for k in range(10)]
        draw.polygon(pts, fill=255)
    elif shape == "plus":
        draw.rectangle((c - w / 2, c - 0.9 * r, c + w / 2, c + 0.9 * r), fill=255)
        draw.rectangle((c - 0.9 * r, c - w / 2, c + 0.9 * r, c + w / 2), fill=255)
    elif shape == "ring":
        draw.ellipse(box, outline=255, width=int(w))
    elif shape == "diamond":
        draw.polygon(_polygon(c, c, r, 4, 0.0), fill=255)
    elif shape == "hexagon":
        draw.polygon(_polygon(c, c, r, 6, 0.0), fill=255)
    elif shape == "crescent":
        draw.ellipse(box, fill=255)
        draw.ellipse((c - r + 0.55 * r, c - 1.1 * r, c + r + 0.55 * r, c + 0.9 * r), fill=0)
    elif shape == "heart":
        draw.ellipse((c - r, c - 0.8 * r, c + 0.05 * r, c + 0.25 * r), fill=255)
        draw.ellipse((c - 0.05 * r, c - 0.8 * r, c + r, c + 0.25 * r), fill=255)
        draw.polygon([(c - 0.95 * r, c - 0.2 * r), (c + 0.95 * r, c - 0.2 * r), (c, c + 0.95 * r)], fill=255)
    elif shape == "arrow":
        draw.rectangle((c - 0.9 * r, c - w / 2, c, c + w / 2), fill=255)
        draw.polygon([(c - 0.1 * r, c - 0.75 * r), (c + 0.95 * r, c), (c - 0.1 * r, c + 0.75 * r)], fill=255)
    elif shape == "xcross":
        d = 0.68 * r
        draw.line((c - d, c - d, c + d, c + d), fill=255, width=int(w))
        draw.line((c - d, c + d, c + d, c - d), fill=255, width=int(w))
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(shape)
    return mask


def _object_mask(shape: str, width: int, height: int, angle: float) -> np.ndarray:
    """Boolean mask [height, width] of a rotated, stretched shape (at render scale)."""
    side = max(width, height)
    mask = _shape_mask(shape, side).rotate(angle, resample=Image.BILINEAR)
    return np.asarray(mask.resize((width, height), Image.BILINEAR)) >= 128


def _texture(texture: str, colour: np.ndarray, height: int, width: int, rng) -> np.ndarray:
    """RGB float [height, width, 3]: the class colour with its texture in a darker tone. Periods are
    a few image pixels, so a texture is plain to see on a large object and lost on a small one."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    period = _SUPERSAMPLE * rng.uniform(3.5, 5.0)  # band / cell width
    if texture == "striped":
        a = rng.uniform(0, math.pi)
        tone = ((xx * math.cos(a) + yy * math.sin(a)) / period) % 2.0 < 1.0
    elif texture == "dotted":  # sparse dots, so that it does not read as a fine checker
        spacing = 1.7 * period
        ox, oy = rng.uniform(0, spacing, 2)
        fx, fy = ((xx + ox) % spacing) - spacing / 2, ((yy + oy) % spacing) - spacing / 2
        tone = fx * fx + fy * fy > (0.3 * spacing) ** 2
    elif texture == "checked":
        ox, oy = rng.uniform(0, 2 * period, 2)
        tone = ((np.floor((xx + ox) / period) + np.floor((yy + oy) / period)) % 2) < 1
    else:
        tone = np.ones((height, width), dtype=bool)
    dark = colour * 0.38
    return np.where(tone[..., None], colour, dark)


def _background(rng, size: int, palette) -> np.ndarray:
    """Float RGB [size, size, 3]: a gradient between the scene's two palette colours plus smooth
    low-frequency texture and speckle."""
    base = np.asarray(palette, dtype=np.float32) + rng.normal(0, 10, (2, 3)).astype(np.float32)
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = np.cos(angle) * t[None, :] + np.sin(angle) * t[:, None]
    ramp = (ramp - ramp.min()) / max(1e-6, float(np.ptp(ramp)))
    img = base[0] * (1 - ramp[..., None]) + base[1] * ramp[..., None]
    cells = size // 12 + 2
    coarse = Image.fromarray(np.clip(128 + rng.normal(0, 14, (cells, cells)), 0, 255).astype(np.uint8))
    coarse = np.asarray(coarse.resize((size, size), Image.BICUBIC), dtype=np.float32) - 128.0
    return img + (coarse + rng.normal(0, 4, (size, size)).astype(np.float32))[..., None]


def _decoys(canvas: np.ndarray, rng) -> None:
    """Unlabelled clutter: muted class shapes, thin lines and blobs, so that shape alone never
    proves a label (only colour + shape + texture does)."""
    s = canvas.shape[0]
    layer = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(2, 7))):
        colour = tuple(int(v) for v in np.clip(_DECOY_COLOURS[rng.integers(len(_DECOY_COLOURS))]
                                               + rng.normal(0, 12, 3), 0, 255))
        kind = rng.random()
        if kind < 0.35:
            draw.line(tuple(rng.uniform(0, s, 4)), fill=colour, width=int(rng.integers(1, 3)) * _SUPERSAMPLE)
        elif kind < 0.6:
            c, r = rng.uniform(0, s, 2), rng.uniform(2, 6) * _SUPERSAMPLE
            draw.ellipse((c[0] - r, c[1] - r * rng.uniform(0.5, 1.5), c[0] + r, c[1] + r), fill=colour)
        else:
            side = int(rng.uniform(0.08, 0.25) * s)
            mask = _shape_mask(SHAPES[rng.integers(len(SHAPES))], side)
            x, y = (int(v) for v in rng.uniform(-side / 4, s - side * 0.75, 2))
            layer.paste(Image.new("RGB", (side, side), colour), (x, y), mask)
    canvas[...] = np.asarray(layer, dtype=np.float32)


# ----------------------------------------------------------------------------------------- layout
def _sample_objects(rng, params: dict, scene: int):
    """Classes of one image and their instances: [(class, width, height, angle)] at render scale."""
    num_classes, size = params["num_classes"], params["image_size"] * _SUPERSAMPLE
    scene_p, median_size = _world(num_classes, params["num_scenes"], params["tail"])
    p = scene_p[scene]
    count = int(min(1 + rng.poisson(params["mean_labels"] - 1.0), 8, np.count_nonzero(p)))
    classes = rng.choice(num_classes, size=count, replace=False, p=p)
    lo, hi = params["min_object"], params["max_object"]
    centre = math.sqrt(lo * hi)  # the log-midpoint: as many objects below it as above
    objects = []
    for cls in classes:
        class_size = centre * median_size[cls] * math.exp(rng.normal(0, 0.45))
        for _ in range(1 + min(int(rng.poisson(0.35)), 2)):  # repeated instances, as in COCO
            side = float(np.clip(class_size * math.exp(rng.normal(0, 0.2)), lo, hi)) * size
            aspect = math.exp(rng.uniform(-0.25, 0.25))
            width, height = max(4, int(side * aspect)), max(4, int(side / aspect))
            objects.append((int(cls), width, height, float(rng.uniform(-15, 15))))
    # painter's order: large first, so small objects sit on top (near things look big, but the
    # reverse order would hide most small objects entirely)
    objects.sort(key=lambda o: -o[1] * o[2])
    return objects


def _place(rng, objects, table, size: int):
    """Positions that keep every object visible: [(class, x, y, mask)] in drawing order, plus the
    render-scale instance map (0 = background, k = k-th placed object). An object that cannot be
    placed in `_PLACEMENT_TRIES` tries is left out (and so is its label if it was the only one)."""
    instance = np.zeros((size, size), dtype=np.int16)
    visible = [0]  # visible pixels per placed object (index 0 = background)
    own = [1]
    placed, centres = [], []
    for cls, width, height, angle in objects:
        mask = _object_mask(SHAPES[table[cls][0]], width, height, angle)
        # objects cluster, as on a table or a street, so some overlap on purpose
        anchor = centres[rng.integers(len(centres))] if centres and rng.random() < CLUSTERED else None
        for _ in range(_PLACEMENT_TRIES):
            x, y = _propose(rng, width, height, size, anchor)
            inside = _clip(mask, x, y, size)
            if inside is None:
                continue
            region, sub = inside
            area = int(sub.sum())
            if area < MIN_INSIDE * mask.sum() or area == 0:
                continue
            lost = np.bincount(instance[region][sub], minlength=len(visible))
            after = np.asarray(visible) - lost
            if np.all(after[1:] >= MIN_VISIBLE * np.asarray(own[1:])):
                instance[region][sub] = len(visible)
                visible = list(after) + [area]
                own.append(area)
                placed.append((cls, x, y, mask))
                centres.append((x + width / 2, y + height / 2, (width + height) / 2))
                break
    return placed, instance


def _propose(rng, width: int, height: int, size: int, anchor):
    """Top-left corner of a candidate position: uniform (partly outside the image allowed), or
    near `anchor` = (cx, cy, side) of an object already placed."""
    if anchor is not None:
        cx, cy, side = anchor
        spread = 0.45 * (side + (width + height) / 2)
        return int(cx + rng.normal(0, spread) - width / 2), int(cy + rng.normal(0, spread) - height / 2)
    x = rng.uniform(-(1 - MIN_INSIDE) * width / 2, size - width * (1 + MIN_INSIDE) / 2)
    y = rng.uniform(-(1 - MIN_INSIDE) * height / 2, size - height * (1 + MIN_INSIDE) / 2)
    return int(x), int(y)


def _clip(mask: np.ndarray, x: int, y: int, size: int):
    """(canvas slices, mask part inside the canvas) of `mask` placed at (x, y), or None if outside."""
    h, w = mask.shape
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, size), min(y + h, size)
    if x1 <= x0 or y1 <= y0:
        return None
    return (slice(y0, y1), slice(x0, x1)), mask[y0 - y:y1 - y, x0 - x:x1 - x]


def _render(rng, params: dict, scene: int, placed) -> Image.Image:
    size = params["image_size"]
    s = size * _SUPERSAMPLE
    palette = _SCENE_PALETTES[scene % len(_SCENE_PALETTES)]
    canvas = np.asarray(Image.fromarray(np.clip(_background(rng, size, palette), 0, 255).astype(np.uint8))
                        .resize((s, s), Image.BILINEAR), dtype=np.float32).copy()
    _decoys(canvas, rng)
    table = _class_table(params["num_classes"])
    for cls, x, y, mask in placed:
        _, colour_index, texture_index = table[cls]
        colour = np.asarray(COLOURS[colour_index][1], dtype=np.float32)
        colour = np.clip(colour * rng.uniform(0.8, 1.1) + rng.normal(0, 10, 3), 0, 255)
        region, sub = _clip(mask, x, y, s)
        patch = _texture(TEXTURES[texture_index], colour, sub.shape[0], sub.shape[1], rng)
        canvas[region][sub] = patch[sub]
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 0.8))))
    return image


# ------------------------------------------------------------------------------------ annotations
def _rle(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE (column-major runs, starting with a run of zeros), as pycocotools'
    frPyObjects reads it."""
    flat = mask.ravel(order="F").astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs = [0] + runs
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": runs}


def _annotations(instance: np.ndarray, classes: list[int], visible_fraction: np.ndarray):
    """[(class, rle, bbox, area, visible fraction)] of every object with a visible pixel in the
    image-scale instance map."""
    out = []
    for k, cls in enumerate(classes, start=1):
        mask = instance == k
        area = int(mask.sum())
        if area == 0:  # hidden by the downscale: not in the image, so not a label
            continue
        ys, xs = np.nonzero(mask)
        bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
        out.append((cls, _rle(mask), bbox, area, round(float(visible_fraction[k - 1]), 3)))
    return out


def _visible_fraction(instance: np.ndarray, placed) -> np.ndarray:
    """Per placed object: its visible pixels over its pixels inside the image (1 = unoccluded)."""
    size = instance.shape[0]
    inside = np.asarray([_clip(mask, x, y, size)[1].sum() for _, x, y, mask in placed], dtype=np.float64)
    shown = np.bincount(instance.ravel(), minlength=len(placed) + 1)[1:]
    return shown / np.maximum(inside, 1)


def _class_map(instance: np.ndarray, classes: list[int], mask_size: int) -> np.ndarray:
    """uint8 [mask_size, mask_size]: 0 background, else the COCO category id (class + 1) on top,
    sampled at the centres of a mask_size grid."""
    lut = np.asarray([0] + [c + 1 for c in classes], dtype=np.uint8)
    size = instance.shape[0]
    idx = ((np.arange(mask_size) + 0.5) * size / mask_size).astype(np.int64)
    return lut[instance[np.ix_(idx, idx)]]


def _make_image(job):
    """Render image `i` of split `split_id` into `path`; returns (annotations, class map)."""
    params, split_id, i, path = job
    rng = np.random.default_rng([params["seed"], split_id, i])
    table = _class_table(params["num_classes"])
    scene = int(rng.integers(params["num_scenes"]))
    objects = _sample_objects(rng, params, scene)
    placed, instance = _place(rng, objects, table, params["image_size"] * _SUPERSAMPLE)
    _render(rng, params, scene, placed).save(path, format="JPEG", quality=90)
    visible = _visible_fraction(instance, placed)
    # the truth is the render-scale map sampled at the image pixels' top-left sub-pixels
    instance = instance[::_SUPERSAMPLE, ::_SUPERSAMPLE]
    classes = [cls for cls, *_ in placed]
    return scene, _annotations(instance, classes, visible), _class_map(instance, classes, params["mask_size"])


# ---------------------------------------------------------------------------------------- writing
def _write_split(tmp_root: Path, split: str, split_id: int, count: int, first_id: int, params: dict, pool) -> None:
    image_dir = tmp_root / f"{split}2014"
    image_dir.mkdir(parents=True)
    names = [f"COCO_{split}2014_{first_id + i:012d}.jpg" for i in range(count)]
    jobs = [(params, split_id, i, str(image_dir / n)) for i, n in enumerate(names)]
    results = pool.map(_make_image, jobs, chunksize=32) if pool is not None else list(map(_make_image, jobs))
    images, annotations = [], []
    size = params["image_size"]
    for i, (name, (scene, objects, _)) in enumerate(zip(names, results)):
        image_id = first_id + i
        # "scene" is not a COCO field; readers ignore it, diagnostics may use it
        images.append({"id": image_id, "file_name": name, "width": size, "height": size, "license": 0,
                       "scene": scene})
        for cls, rle, bbox, area, visible in objects:
            # "visible_fraction" (not a COCO field): how much of the object later objects left visible
            annotations.append({"id": len(annotations) + 1 + first_id * 20, "image_id": image_id,
                                "category_id": cls + 1, "bbox": bbox, "area": area, "iscrowd": 0,
                                "segmentation": rle, "visible_fraction": visible})
    categories = [{"id": k + 1, "name": name, "supercategory": name.split("_")[-1]}
                  for k, name in enumerate(class_names(params["num_classes"]))]
    payload = {"info": {"description": "scob_fast COCO-like demo dataset", "version": GENERATOR_VERSION,
                        "params": params},
               "licenses": [{"id": 0, "name": "generated"}], "images": images,
               "annotations": annotations, "categories": categories}
    ann_dir = tmp_root / "annotations"
    ann_dir.mkdir(exist_ok=True)
    (ann_dir / f"instances_{split}2014.json").write_text(json.dumps(payload, separators=(",", ":")))
    np.savez_compressed(ann_dir / f"masks_{split}2014.npz", file_names=np.asarray(names),
                        class_maps=np.stack([m for _, _, m in results]))


def demo_coco_directory(base=None, **params) -> Path:
    """Where the dataset with these parameters lives (whether or not it is generated yet)."""
    from scob_fast.env import cache_dir
    params = _check_params(params)
    base = Path(base) if base is not None else cache_dir() / "demo_coco"
    return base / f"demo-coco-v{GENERATOR_VERSION}-{_cache_key(params)}"


def ensure_demo_coco_dataset(base=None, processes: int | None = None, **params) -> Path:
    """Path of the generated dataset under `base` (default: the cache), generating it if needed.

    `processes`: generator processes (default: up to 4 CPUs for 400+ images, else 1); the output does
    not depend on it. Parameters: see DEMO_COCO_DEFAULTS."""
    params = _check_params(params)
    target = demo_coco_directory(base, **params)
    return generate_once(target, GENERATOR_VERSION, params, _write_split, processes)


DEMO_COCO_LAYOUT = ("<root>/demo-coco-v<version>-<key>/ (root default: <cache dir>/demo_coco), generated on "
                    "first use, COCO 2014 layout plus annotations/masks_{train,val}2014.npz")


def read_demo_coco(base, official_split: str, **params):
    """(class_names, image_paths, labels) of the official `official_split` ("train" = train2014, "test"
    = val2014) under `base` (None: the cache), generated first if it is not there yet."""
    from scob_fast.data.readers import read_coco
    root = ensure_demo_coco_dataset(base, **params)
    return read_coco(root, "train" if official_split == "train" else "val", dataset="demo-coco")


_OFFICIAL = {"train": "train", "val": "train", "test": "val", "train2014": "train", "val2014": "val"}


def load_object_masks(root, split: str) -> dict[str, np.ndarray]:
    """Per-image class maps of a generated dataset: {image file name: uint8 [m, m]} where m is the
    `mask_size` parameter, 0 is background and any other value v is COCO category id v (class
    column v - 1 of `build_dataset`'s labels): the class of the front object at the centre of each
    cell of an m x m grid over the image. Every non-zero value is a label of its image (a tiny object
    can fall between the grid centres; the json's RLE masks are exact, at image resolution).

    `split` is a protocol split like build_dataset's ("train" and "val" both read train2014, "test"
    reads val2014) or an official one ("train2014", "val2014"). Look images up by file name:
    `masks[os.path.basename(dataset.image_paths[i])]`."""
    if split not in _OFFICIAL:
        raise ValueError(f"split {split!r} is not one of {', '.join(_OFFICIAL)}")
    path = Path(root) / "annotations" / f"masks_{_OFFICIAL[split]}2014.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no mask file (is {root} a demo-coco dataset?)")
    with np.load(path, allow_pickle=False) as data:
        return dict(zip(data["file_names"].tolist(), data["class_maps"]))

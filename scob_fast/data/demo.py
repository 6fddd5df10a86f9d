"""The embedded demo dataset: small synthetic multi-object JPEGs in the official COCO-2014 layout.

Generated on first use into `scob_fast.env.cache_dir()/demo/demo-v<version>-<key>/`, where the key
hashes the generator version and every parameter; a `.complete` marker is written last (the tree is
built in a temporary sibling and renamed), so a half-written cache is never used and is regenerated.
Deterministic: image i of a split depends only on (seed, split, i), whatever the number of processes.

Each class is one shape in one colour (both unique to the class), so it is easy to recognise for a
frozen ImageNet backbone at 128 px. Images hold 1-4 objects of distinct classes at random positions
and sizes (little overlap) on a muted, textured background with grey/brown clutter (thin lines,
small blobs, speckle) that never uses a class colour or shape, so the background carries no label.

Layout (read by the COCO-2014 reader, so `build_dataset("demo", ...)` = `build_dataset("coco2014", root)`):
    <root>/train2014/COCO_train2014_<id>.jpg, <root>/val2014/COCO_val2014_<id>.jpg,
    <root>/annotations/instances_{train,val}2014.json  (bbox + category_id; segmentation = [])
Splits: "train"/"val" are the 80/20 protocol split of train2014 (seed 1200), "test" is val2014.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .generated import generate_once
from .readers.coco import COCO_LAYOUT, read_coco

GENERATOR_VERSION = 1
DEMO_DEFAULTS = {"num_classes": 12, "train_images": 2000, "val_images": 600, "image_size": 128, "seed": 0}
DEMO_LAYOUT = ("<root>/demo-v<version>-<key>/ (root default: <cache dir>/demo), generated on first use, "
               f"in the COCO-2014 layout {COCO_LAYOUT}")

# (shape, colour name, RGB): shapes and colours are both unique per class.
DEMO_CLASSES = (
    ("circle", "red", (225, 30, 30)),
    ("square", "green", (20, 170, 40)),
    ("triangle", "blue", (30, 70, 235)),
    ("star", "yellow", (250, 225, 20)),
    ("plus", "magenta", (230, 30, 210)),
    ("ring", "cyan", (20, 215, 230)),
    ("diamond", "orange", (255, 130, 0)),
    ("hexagon", "white", (250, 250, 250)),
    ("xcross", "black", (10, 10, 10)),
    ("crescent", "pink", (255, 150, 200)),
    ("bars", "purple", (125, 35, 190)),
    ("heart", "lime", (170, 255, 60)),
    ("arrow", "navy", (10, 20, 110)),
    ("pentagon", "teal", (0, 128, 120)),
    ("trapezoid", "gold", (200, 160, 0)),
    ("octagon", "crimson", (150, 0, 40)),
    ("chevron", "sky", (120, 190, 255)),
    ("hourglass", "olive", (120, 130, 0)),
    ("semicircle", "coral", (255, 110, 90)),
    ("frame", "violet", (200, 130, 255)),
)
_SUPERSAMPLE = 2


def class_names(num_classes: int) -> list[str]:
    return [f"{colour}_{shape}" for shape, colour, _ in DEMO_CLASSES[:num_classes]]


def _cache_key(params: dict) -> str:
    blob = json.dumps({"version": GENERATOR_VERSION, **params}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _check_params(params: dict) -> dict:
    unknown = set(params) - set(DEMO_DEFAULTS)
    if unknown:
        raise TypeError(f"demo dataset: unknown parameter(s) {sorted(unknown)}; allowed: {sorted(DEMO_DEFAULTS)}")
    out = {**DEMO_DEFAULTS, **params}
    if not 2 <= int(out["num_classes"]) <= len(DEMO_CLASSES):
        raise ValueError(f"demo dataset: num_classes must be in [2, {len(DEMO_CLASSES)}], got {out['num_classes']}")
    if int(out["image_size"]) < 32:
        raise ValueError(f"demo dataset: image_size must be >= 32, got {out['image_size']}")
    for key in ("train_images", "val_images"):
        if int(out[key]) < 1:
            raise ValueError(f"demo dataset: {key} must be >= 1, got {out[key]}")
    return {k: int(v) for k, v in out.items()}


# ------------------------------------------------------------------------------------------ drawing
def _polygon(cx, cy, r, sides, rotation=0.0):
    return [(cx + r * math.cos(rotation + 2 * math.pi * k / sides), cy + r * math.sin(rotation + 2 * math.pi * k / sides))
            for k in range(sides)]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box, colour, rng):
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    w = max(2, int(r * 0.45))
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle((cx - 0.85 * r, cy - 0.85 * r, cx + 0.85 * r, cy + 0.85 * r), fill=colour)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy + 0.15 * r, r, 3, -math.pi / 2), fill=colour)
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else 0.42 * r
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        draw.polygon(pts, fill=colour)
    elif shape == "plus":
        draw.rectangle((cx - w / 2, y0, cx + w / 2, y1), fill=colour)
        draw.rectangle((x0, cy - w / 2, x1, cy + w / 2), fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=w)
    elif shape == "diamond":
        draw.polygon(_polygon(cx, cy, r, 4, 0.0), fill=colour)
    elif shape == "hexagon":
        draw.polygon(_polygon(cx, cy, r, 6, 0.0), fill=colour)
    elif shape == "xcross":
        draw.line((x0, y0, x1, y1), fill=colour, width=w)
        draw.line((x0, y1, x1, y0), fill=colour, width=w)
    elif shape == "crescent":
        draw.ellipse(box, fill=colour)
        shift = 0.55 * r
        inner = (x0 + shift, y0 - 0.1 * r, x1 + shift, y1 - 0.1 * r)
        return inner  # carved out by the caller with the background
    elif shape == "bars":
        h = (y1 - y0) / 5
        for k in (0, 2, 4):
            draw.rectangle((x0, y0 + k * h, x1, y0 + (k + 1) * h), fill=colour)
    elif shape == "heart":
        draw.ellipse((x0, y0 + 0.1 * r, cx + 0.05 * r, cy + 0.1 * r), fill=colour)
        draw.ellipse((cx - 0.05 * r, y0 + 0.1 * r, x1, cy + 0.1 * r), fill=colour)
        draw.polygon([(x0 + 0.05 * r, cy - 0.15 * r), (x1 - 0.05 * r, cy - 0.15 * r), (cx, y1)], fill=colour)
    elif shape == "arrow":
        draw.rectangle((x0, cy - w / 2, cx, cy + w / 2), fill=colour)
        draw.polygon([(cx - 0.1 * r, y0 + 0.1 * r), (x1, cy), (cx - 0.1 * r, y1 - 0.1 * r)], fill=colour)
    elif shape == "pentagon":
        draw.polygon(_polygon(cx, cy, r, 5, -math.pi / 2), fill=colour)
    elif shape == "trapezoid":
        draw.polygon([(x0, y1 - 0.2 * r), (x1, y1 - 0.2 * r), (cx + 0.45 * r, y0 + 0.2 * r), (cx - 0.45 * r, y0 + 0.2 * r)], fill=colour)
    elif shape == "octagon":
        draw.polygon(_polygon(cx, cy, r, 8, math.pi / 8), fill=colour)
    elif shape == "chevron":
        draw.line((x0, y1 - 0.3 * r, cx, y0 + 0.3 * r, x1, y1 - 0.3 * r), fill=colour, width=w, joint="curve")
    elif shape == "hourglass":
        draw.polygon([(x0, y0), (x1, y0), (x0, y1), (x1, y1)], fill=colour)
    elif shape == "semicircle":
        draw.pieslice(box, 180, 360, fill=colour)
    elif shape == "frame":
        draw.rectangle((cx - 0.85 * r, cy - 0.85 * r, cx + 0.85 * r, cy + 0.85 * r), outline=colour, width=w)
    else:  # pragma: no cover - the table above is closed
        raise ValueError(shape)
    return None


_CLUTTER_COLOURS = np.array([(110, 100, 90), (140, 130, 115), (90, 85, 80), (150, 145, 140),
                             (120, 95, 70), (100, 110, 100), (160, 150, 130)], dtype=np.float64)


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """Muted two-colour gradient + smooth low-frequency texture + speckle, at `size` px."""
    base = _CLUTTER_COLOURS[rng.integers(len(_CLUTTER_COLOURS), size=2)] + rng.normal(0, 12, (2, 3))
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = np.cos(angle) * t[None, :] + np.sin(angle) * t[:, None]
    ramp = (ramp - ramp.min()) / max(1e-6, float(np.ptp(ramp)))
    img = base[0].astype(np.float32) * (1 - ramp[..., None]) + base[1].astype(np.float32) * ramp[..., None]
    cells = size // 12 + 2
    coarse = Image.fromarray(np.clip(128 + rng.normal(0, 14, (cells, cells)), 0, 255).astype(np.uint8))
    coarse = np.asarray(coarse.resize((size, size), Image.BICUBIC), dtype=np.float32) - 128.0
    speckle = rng.normal(0, 4, (size, size)).astype(np.float32)
    img += (coarse + speckle)[..., None]
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _render(size: int, objects, rng: np.random.Generator) -> Image.Image:
    s = size * _SUPERSAMPLE
    bg = _background(rng, size).resize((s, s), Image.BILINEAR)
    canvas = bg.copy()
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(3, 9))):  # clutter: thin lines and small blobs in muted colours
        colour = tuple(int(c) for c in np.clip(_CLUTTER_COLOURS[rng.integers(len(_CLUTTER_COLOURS))] + rng.normal(0, 15, 3), 0, 255))
        if rng.random() < 0.5:
            pts = rng.uniform(0, s, 4)
            draw.line(tuple(pts), fill=colour, width=int(rng.integers(1, 3)) * _SUPERSAMPLE)
        else:
            c = rng.uniform(0, s, 2)
            r = rng.uniform(2, 5) * _SUPERSAMPLE
            draw.ellipse((c[0] - r, c[1] - r * rng.uniform(0.5, 1.5), c[0] + r, c[1] + r), fill=colour)
    for cls, box in objects:
        shape, _, colour = DEMO_CLASSES[cls]
        box_s = tuple(v * _SUPERSAMPLE for v in box)
        hole = _draw_shape(draw, shape, box_s, colour, rng)
        if hole is not None:  # the crescent: restore the background inside the offset disc
            mask = Image.new("L", (s, s), 0)
            ImageDraw.Draw(mask).ellipse(hole, fill=255)
            outer = Image.new("L", (s, s), 0)
            ImageDraw.Draw(outer).ellipse(box_s, fill=255)
            mask = Image.fromarray(np.minimum(np.asarray(mask), np.asarray(outer)))
            canvas.paste(bg, (0, 0), mask)
    image = canvas.resize((size, size), Image.BILINEAR)
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 0.8))))
    return image


def _layout(rng: np.random.Generator, num_classes: int, size: int):
    """1-4 objects of distinct classes, boxes (x0, y0, x1, y1) with little overlap."""
    count = int(rng.choice([1, 2, 3, 4], p=[0.3, 0.3, 0.25, 0.15]))
    classes = rng.choice(num_classes, size=count, replace=False)
    boxes = []
    for _ in classes:
        best = None
        for _try in range(30):
            side = rng.uniform(0.22, 0.42) * size
            x0, y0 = rng.uniform(0, size - side, 2)
            box = (x0, y0, x0 + side, y0 + side)
            overlap = max((_iou(box, b) for b in boxes), default=0.0)
            if best is None or overlap < best[0]:
                best = (overlap, box)
            if overlap < 0.05:
                break
        boxes.append(best[1])
    return list(zip((int(c) for c in classes), boxes))


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _make_image(job):
    """Render image `i` of `split` into `path`; returns its annotations (cls, bbox)."""
    seed, split_id, i, num_classes, size, path = job
    rng = np.random.default_rng([seed, split_id, i])
    objects = _layout(rng, num_classes, size)
    _render(size, objects, rng).save(path, format="JPEG", quality=90)
    return [(cls, [round(b[0], 2), round(b[1], 2), round(b[2] - b[0], 2), round(b[3] - b[1], 2)]) for cls, b in objects]


# ------------------------------------------------------------------------------------------ writing
def _write_split(tmp_root: Path, split: str, split_id: int, count: int, first_id: int, params: dict, pool) -> None:
    image_dir = tmp_root / f"{split}2014"
    image_dir.mkdir(parents=True)
    names = [f"COCO_{split}2014_{first_id + i:012d}.jpg" for i in range(count)]
    jobs = [(params["seed"], split_id, i, params["num_classes"], params["image_size"], str(image_dir / n))
            for i, n in enumerate(names)]
    results = pool.map(_make_image, jobs, chunksize=64) if pool is not None else map(_make_image, jobs)
    images, annotations = [], []
    for i, (name, objects) in enumerate(zip(names, results)):
        image_id = first_id + i
        images.append({"id": image_id, "file_name": name, "width": params["image_size"],
                       "height": params["image_size"], "license": 0})
        for cls, bbox in objects:
            annotations.append({"id": len(annotations) + 1 + first_id * 10, "image_id": image_id,
                                "category_id": cls + 1, "bbox": bbox, "area": round(bbox[2] * bbox[3], 2),
                                "iscrowd": 0, "segmentation": []})
    categories = [{"id": k + 1, "name": name, "supercategory": "shape"}
                  for k, name in enumerate(class_names(params["num_classes"]))]
    payload = {"info": {"description": "scob_fast demo dataset", "version": GENERATOR_VERSION, "params": params},
               "licenses": [{"id": 0, "name": "generated"}], "images": images,
               "annotations": annotations, "categories": categories}
    ann_dir = tmp_root / "annotations"
    ann_dir.mkdir(exist_ok=True)
    (ann_dir / f"instances_{split}2014.json").write_text(json.dumps(payload))


def demo_directory(base=None, **params) -> Path:
    """Where the demo dataset with these parameters lives (whether or not it is generated yet)."""
    from scob_fast.env import cache_dir
    params = _check_params(params)
    base = Path(base) if base is not None else cache_dir() / "demo"
    return base / f"demo-v{GENERATOR_VERSION}-{_cache_key(params)}"


def ensure_demo_dataset(base=None, processes: int | None = None, **params) -> Path:
    """Path of the generated demo dataset under `base` (default: the cache), generating it if needed."""
    params = _check_params(params)
    target = demo_directory(base, **params)
    return generate_once(target, GENERATOR_VERSION, params, _write_split, processes)


def read_demo(base, official_split: str, **params):
    """(class_names, image_paths, labels) of the demo's official `official_split` ("train" = train2014,
    "test" = val2014) under `base` (None: the cache), generated first if it is not there yet."""
    root = ensure_demo_dataset(base, **params)
    return read_coco(root, "train" if official_split == "train" else "val", dataset="demo")

"""PNG sheets of explanations drawn with PIL and numpy: per explained class one row of panels
(the input, the Grad-CAM++ heat map over it, and the kept-token masks of each level)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

TITLE_HEIGHT = 16
MIN_PANEL = 160
GAP = 4


def denormalise(image, mean, std) -> np.ndarray:
    """A loader image [3, S, S] (normalised) -> uint8 [S, S, 3]."""
    array = np.asarray(image.detach().float().cpu() if hasattr(image, "detach") else image, dtype=np.float32)
    array = array * np.asarray(std, dtype=np.float32)[:, None, None] + np.asarray(mean, dtype=np.float32)[:, None, None]
    return (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(1, 2, 0)


def jet(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB of the classic jet colour map (blue, cyan, yellow, red)."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
    r = np.clip(1.5 - np.abs(4.0 * v - 3.0), 0.0, 1.0)
    g = np.clip(1.5 - np.abs(4.0 * v - 2.0), 0.0, 1.0)
    b = np.clip(1.5 - np.abs(4.0 * v - 1.0), 0.0, 1.0)
    return (np.stack([r, g, b], axis=-1) * 255.0 + 0.5).astype(np.uint8)


def _font():
    try:
        return ImageFont.load_default(size=11)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def _resize(rgb: np.ndarray, size: int) -> Image.Image:
    return Image.fromarray(rgb).resize((size, size), Image.BILINEAR)


def cam_panel(rgb: np.ndarray, cam: np.ndarray, size: int, alpha: float = 0.5) -> Image.Image:
    """The input with the heat map of `cam` [h, w] (upsampled bilinearly) blended over it."""
    base = np.asarray(_resize(rgb, size), dtype=np.float32)
    heat = Image.fromarray((np.clip(cam, 0, 1) * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    colour = jet(np.asarray(heat, dtype=np.float32) / 255.0).astype(np.float32)
    return Image.fromarray((base * (1 - alpha) + colour * alpha + 0.5).astype(np.uint8))


def mask_panel(rgb: np.ndarray, keep: np.ndarray, size: int) -> Image.Image:
    """The input with the tokens the attention does not keep darkened, and the token grid drawn."""
    base = np.asarray(_resize(rgb, size), dtype=np.float32)
    grid_h, grid_w = keep.shape
    cell = Image.fromarray(keep.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)
    kept = (np.asarray(cell) > 0)[..., None]
    shaded = np.where(kept, base, base * 0.25)
    panel = Image.fromarray((shaded + 0.5).astype(np.uint8))
    draw = ImageDraw.Draw(panel)
    for i in range(1, grid_h):
        y = round(i * size / grid_h)
        draw.line([(0, y), (size, y)], fill=(255, 255, 255), width=1)
    for j in range(1, grid_w):
        x = round(j * size / grid_w)
        draw.line([(x, 0), (x, size)], fill=(255, 255, 255), width=1)
    return panel


def explanation_sheet(rgb: np.ndarray, rows: list[list[tuple[str, Image.Image]]], header: str) -> Image.Image:
    """Rows of (title, panel) pairs under a one-line header."""
    font = _font()
    size = max(panel.size[0] for row in rows for _, panel in row) if rows else rgb.shape[0]
    columns = max(len(row) for row in rows) if rows else 1
    width = columns * size + (columns + 1) * GAP
    height = TITLE_HEIGHT + GAP + len(rows) * (size + TITLE_HEIGHT + GAP) + GAP
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((GAP, 2), header, fill=(0, 0, 0), font=font)
    y = TITLE_HEIGHT + GAP
    for row in rows:
        x = GAP
        for title, panel in row:
            draw.text((x, y + 1), title, fill=(0, 0, 0), font=font)
            sheet.paste(panel, (x, y + TITLE_HEIGHT))
            x += size + GAP
        y += size + TITLE_HEIGHT + GAP
    return sheet


def panel_size(image_size: int) -> int:
    return max(int(image_size), MIN_PANEL)


def write_explanation(path: str | Path, rgb: np.ndarray, maps: dict, class_names: list[str], classes, scores,
                      header: str) -> Path:
    """One PNG for one image: `maps` holds this image's "cam" [K, h, w] and optionally "keep_low" /
    "keep_high" [K, H, W]; `classes` [K] and `scores` [K] name the rows."""
    size = panel_size(rgb.shape[0])
    base = _resize(rgb, size)
    rows = []
    for j, c in enumerate(classes):
        name = class_names[int(c)]
        row = [(f"{name} {float(scores[j]):.3f}", base),
               ("Grad-CAM++", cam_panel(rgb, np.asarray(maps["cam"][j]), size))]
        for key, label in (("keep_low", "kept, low level"), ("keep_high", "kept, high level")):
            if key in maps:
                keep = np.asarray(maps[key][j], dtype=bool)
                row.append((f"{label} {int(keep.sum())}/{keep.size}", mask_panel(rgb, keep, size)))
        rows.append(row)
    sheet = explanation_sheet(rgb, rows, header)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG")
    return path

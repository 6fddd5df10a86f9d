"""Reading encoded images and telling good files from bad ones, shared by both loaders.

Both loaders run the same checks so that they skip the same files: a missing/unreadable/empty file
or an unknown signature is rejected from its bytes alone; a JPEG or PNG whose end marker is not
near the end of the file (the usual sign of truncation) is decoded once with PIL to decide.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

# Signatures of the formats DALI's image decoder handles (PIL decodes them too).
_SIGNATURES = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"\x00\x00\x00\x0cjP  ", "jpeg2000"),
    (b"\xff\x4f\xff\x51", "jpeg2000"),
)
_TAIL = 4096


def image_format(data: bytes | np.ndarray) -> str | None:
    head = bytes(data[:12])
    for sig, name in _SIGNATURES:
        if head.startswith(sig):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if len(head) >= 2 and head[:1] == b"P" and head[1:2] in b"123456":
        return "pnm"
    return None


def _looks_truncated(data: np.ndarray, fmt: str) -> bool:
    tail = bytes(data[-_TAIL:])
    if fmt == "jpeg":
        return b"\xff\xd9" not in tail
    if fmt == "png":
        return b"IEND" not in tail
    return False


def decode_pil(data: bytes | np.ndarray) -> Image.Image:
    """RGB PIL image of encoded bytes (grayscale, CMYK, palette and alpha images converted; EXIF
    orientation applied, as DALI's decoder does). Raises on a corrupt or truncated file."""
    with Image.open(io.BytesIO(memoryview(data))) as image:
        image.load()
        image = ImageOps.exif_transpose(image)
        return image.convert("RGB")


def read_encoded(path: str) -> tuple[np.ndarray | None, str | None]:
    """(bytes as uint8 array, None) for a usable file, else (None, reason)."""
    try:
        with open(path, "rb") as f:
            data = np.frombuffer(f.read(), dtype=np.uint8)
    except FileNotFoundError:
        return None, "file is missing"
    except OSError as exc:
        return None, f"unreadable file ({exc.strerror or exc})"
    if data.size == 0:
        return None, "file is empty"
    fmt = image_format(data)
    if fmt is None:
        return None, "not a supported image (unknown file signature)"
    if _looks_truncated(data, fmt):
        try:
            decode_pil(data)
        except Exception as exc:  # any decoder failure means the file is unusable
            return None, f"corrupt {fmt} ({type(exc).__name__}: {exc})"
    return data, None

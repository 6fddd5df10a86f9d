"""Writers of tiny datasets in each official layout (used by the tests; handy to check a setup).

Every writer returns (root, expected) where `expected` maps split names of the OFFICIAL lists to
(image file names in list order, full labels [N, C]) of the images a reader keeps, so tests can
compare readers against ground truth.
Images are small random-colour pictures of varying sizes; `damage()` spoils one file in a given way.
"""
from __future__ import annotations

import json
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from .readers.voc import VOC_CLASSES


def write_image(path, seed: int, size=None, mode: str = "RGB", fmt: str = "JPEG") -> Path:
    """A smooth random picture (blocks of colour, so JPEG keeps it recognisable) saved as `fmt`."""
    rng = np.random.default_rng(seed)
    w, h = size or (int(rng.integers(40, 90)), int(rng.integers(32, 80)))
    blocks = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    image = Image.fromarray(blocks).resize((w, h), Image.BILINEAR)
    if mode != "RGB":
        image = image.convert(mode)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt)
    return path


def _png_chunks(data: bytes):
    """(offset, type, data length) of each chunk of a PNG file."""
    pos = 8
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        yield pos, data[pos + 4:pos + 8], length
        pos += 12 + length


def _fix_png_crc(data: bytearray, pos: int, length: int) -> None:
    end = pos + 8 + length
    data[end:end + 4] = zlib.crc32(bytes(data[pos + 4:end])).to_bytes(4, "big")


def write_png_bomb(path, width: int, height: int) -> Path:
    """A real, valid grey PNG of width x height black pixels: a few kB per 10 megapixels on disk
    (the compressed rows are streamed, nothing of that size is held in memory)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    packer, parts, block = zlib.compressobj(9), [], bytes(1 << 20)
    for _ in range(height):
        left = width + 1  # the filter byte (0: none) and one byte per pixel
        while left:
            parts.append(packer.compress(block[:min(left, len(block))]))
            left -= min(left, len(block))
    parts.append(packer.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    path = Path(path)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts))
                     + chunk(b"IEND", b""))
    return path


def damage(path, how: str) -> None:
    """Spoil one file in a given way:
    - any file: truncate (half the bytes), garbage (text, not an image), empty (0 bytes), missing;
    - a JPEG: corrupt-middle (an unknown marker in the middle of the entropy-coded data: libjpeg
      stops, DALI's decoder would go on), bomb (the frame header claims 14000 x 14000 pixels);
    - a PNG: bad-crc (the first image-data chunk fails its CRC: libpng stops, PIL never checks),
      undecodable (an invalid block in the compressed image data, with a correct CRC: only a decoder finds
      out), bomb (the header claims 14000 x 14000 pixels)."""
    path = Path(path)
    if how == "missing":
        path.unlink()
        return
    data = bytearray(path.read_bytes())
    if how == "truncate":
        data = data[: len(data) // 2]
    elif how == "garbage":
        data = bytearray(b"this is not an image " * 20)
    elif how == "empty":
        data = bytearray()
    elif data.startswith(b"\xff\xd8") and how in ("corrupt-middle", "bomb"):
        if how == "corrupt-middle":
            start = data.index(b"\xff\xda")
            middle = (start + 4 + int.from_bytes(data[start + 2:start + 4], "big") + len(data) - 2) // 2
            data[middle:middle + 2] = b"\xff\x3a"
        else:
            sof = next(m.start() for m in re.finditer(b"\xff[\xc0-\xc2]", bytes(data)))
            data[sof + 5:sof + 9] = struct.pack(">HH", 14000, 14000)
    elif data.startswith(b"\x89PNG") and how in ("bad-crc", "undecodable", "bomb"):
        chunks = list(_png_chunks(bytes(data)))
        pos, _, length = next(c for c in chunks if c[1] == b"IDAT")
        if how == "bad-crc":
            data[pos + 8 + length] ^= 0xFF
        elif how == "undecodable":
            data[pos + 10] = 0xFF  # the first deflate block after the 2-byte zlib header: type 3, invalid
            _fix_png_crc(data, pos, length)
        else:
            data[16:24] = struct.pack(">II", 14000, 14000)
            _fix_png_crc(data, 8, 13)
    else:
        raise ValueError(f"how={how!r} (for {path.name})")
    path.write_bytes(bytes(data))


def _seed(*parts) -> int:
    # str hashes are salted per process; crc32 keeps the generated files identical across runs.
    return zlib.crc32("/".join(map(str, parts)).encode())


def _random_labels(rng, n, c, max_pos=3, allow_empty=False):
    labels = np.zeros((n, c), dtype=np.uint8)
    for i in range(n):
        k = int(rng.integers(0 if allow_empty else 1, max_pos + 1))
        labels[i, rng.choice(c, size=k, replace=False)] = 1
    return labels


def make_coco(root, n_train: int = 30, n_val: int = 12, num_classes: int = 5, unannotated: int = 2, seed: int = 0):
    """COCO-2014 layout with sparse category ids, `unannotated` images without annotations per split
    (which the reader must drop), and categories listed out of id order (the reader sorts them)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    cat_ids = [1 + 3 * k for k in range(num_classes)]
    cats = [{"id": cid, "name": f"cat{cid}", "supercategory": "x"} for cid in cat_ids]
    expected = {}
    for split, n in (("train", n_train), ("val", n_val)):
        labels = _random_labels(rng, n, num_classes)
        images, anns, names = [], [], []
        for i in range(n + unannotated):
            name = f"COCO_{split}2014_{i:012d}.jpg"
            write_image(root / f"{split}2014" / name, seed=_seed(seed, split, i))
            images.append({"id": 1000 + i, "file_name": name, "width": 0, "height": 0})
            if i < n:
                names.append(name)
                for c in np.flatnonzero(labels[i]):
                    for _ in range(int(rng.integers(1, 3))):  # several instances of a class
                        anns.append({"id": len(anns) + 1, "image_id": 1000 + i, "category_id": cat_ids[c],
                                     "bbox": [0, 0, 1, 1], "area": 1, "iscrowd": 0, "segmentation": []})
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        payload = {"images": images, "annotations": anns, "categories": cats[::-1]}
        (root / "annotations" / f"instances_{split}2014.json").write_text(json.dumps(payload))
        expected[split] = (names, labels)
    return root, expected


def make_voc(root, year: str = "2012", n_train: int = 20, n_test: int = 10, seed: int = 0):
    """VOCdevkit/VOC<year> with Annotations XML (some objects flagged difficult). expected holds the
    labels under difficult='negative' and, under key '<set>:positive', under difficult='positive'."""
    base = Path(root) / "VOCdevkit" / f"VOC{year}"
    rng = np.random.default_rng(seed)
    sets = ("trainval", "test") if year == "2007" else ("train", "val")
    expected = {}
    for set_name, n in zip(sets, (n_train, n_test)):
        ids, neg, pos = [], np.zeros((n, 20), np.uint8), np.zeros((n, 20), np.uint8)
        for i in range(n):
            image_id = f"{year}_{set_name}_{i:06d}"
            ids.append(image_id)
            write_image(base / "JPEGImages" / f"{image_id}.jpg", seed=_seed(seed, set_name, i))
            objects = []
            for c in rng.choice(20, size=int(rng.integers(1, 4)), replace=False):
                difficult = int(rng.random() < 0.3)
                objects.append((VOC_CLASSES[c], difficult))
                pos[i, c] = 1
                if not difficult:
                    neg[i, c] = 1
            xml = "<annotation><filename>%s.jpg</filename>%s</annotation>" % (image_id, "".join(
                f"<object><name>{name}</name><difficult>{d}</difficult><bndbox><xmin>1</xmin></bndbox></object>"
                for name, d in objects))
            (base / "Annotations").mkdir(parents=True, exist_ok=True)
            (base / "Annotations" / f"{image_id}.xml").write_text(xml)
        (base / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (base / "ImageSets" / "Main" / f"{set_name}.txt").write_text("\n".join(ids) + "\n")
        names = [f"{i}.jpg" for i in ids]
        expected[set_name] = (names, neg)
        expected[f"{set_name}:positive"] = (names, pos)
    return Path(root), expected


def make_list_dataset(root, name: str, fmt: str = "npy", n_train: int = 20, n_test: int = 8,
                      num_classes: int = 7, seed: int = 0):
    """nuswide/cub list format: formatted_{train,val}_{images,labels}.npy (or {train,test}_*.txt),
    images under the dataset's default image_dir, plus a class-name file."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    image_dir = root / ("Flickr" if name == "nuswide" else "CUB_200_2011/images")
    expected = {}
    for split, n in (("train", n_train), ("test", n_test)):
        rel = [f"sub{i % 3}/{split}_{i:04d}.jpg" for i in range(n)]
        for i, r in enumerate(rel):
            write_image(image_dir / r, seed=_seed(seed, split, i))
        labels = _random_labels(rng, n, num_classes, allow_empty=(name == "nuswide"))
        if fmt == "npy":
            tag = "train" if split == "train" else "val"
            np.save(root / f"formatted_{tag}_images.npy", np.array(rel))
            np.save(root / f"formatted_{tag}_labels.npy", labels.astype(np.float64))
        else:
            (root / f"{split}_images.txt").write_text("\n".join(rel) + "\n")
            np.savetxt(root / f"{split}_labels.txt", labels, fmt="%d")
        expected[split] = (rel, labels)
    if name == "nuswide":
        (root / "Concepts81.txt").write_text("\n".join(f"concept{k}" for k in range(num_classes)) + "\n")
    else:
        (root / "attributes.txt").write_text("\n".join(f"{k + 1} has_attr::{k}" for k in range(num_classes)) + "\n")
    return root, expected


def make_folder(root, fmt: str = "csv", n_train: int = 16, n_test: int = 6, seed: int = 0):
    """train.csv/test.csv (or .json) with rows 'path,label1;label2'; classes named after animals."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    classes = ["cat", "dog", "emu", "fox", "owl"]
    expected = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = _random_labels(rng, n, len(classes))
        labels[0] = 1  # every class appears in the training list (class names come from it)
        rows = []
        for i in range(n):
            rel = f"images/{split}_{i}.jpg"
            write_image(root / rel, seed=_seed(seed, split, i))
            rows.append((rel, [classes[c] for c in np.flatnonzero(labels[i])]))
        if fmt == "csv":
            text = "path,labels\n" + "".join(f"{p},{';'.join(labs)}\n" for p, labs in rows)
            (root / f"{split}.csv").write_text(text)
        else:
            (root / f"{split}.json").write_text(json.dumps([{"path": p, "labels": labs} for p, labs in rows]))
        expected[split] = ([p for p, _ in rows], labels)
    return root, expected


def file_names(paths) -> list[str]:
    return [os.path.basename(p) for p in paths]

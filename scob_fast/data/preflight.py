"""The pre-flight image check: every file of a split that the loaders would skip, found before
training starts, with the verdict the loaders reach (the shared rules of scob_fast.data.images).

    bad = check_images(train_set)                      # header-level: open, size, structure, truncation
    bad = check_images(train_set, full_decode=True)    # + a full PIL decode of every file
    if bad:
        print(describe(bad, train_set))                # one line per bad file
        train_set = train_set.without(b.path for b in bad)

The header-level pass reads every file once and decodes none (a few per cent of a decode); it finds
missing, unreadable, empty, non-image, structurally corrupt, oversized and truncated files. Only the
full decode also finds files whose compressed data is broken behind a valid structure; those the
PIL loader skips when it meets them, and the DALI loader when its pipeline fails on them.
"""
from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

from .images import DEFAULT_MAX_PIXELS, PROBLEM_KINDS, ImageProblem, decode_checked, read_encoded
from .multilabel import MultiLabelDataset


@dataclass(frozen=True)
class BadImage:
    """A file of a dataset that cannot be trained on: its row, its path and the verdict."""

    index: int
    path: str
    kind: str  # one of images.PROBLEM_KINDS
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.kind} ({self.detail})"


def check_image(path: str, *, full_decode: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageProblem | None:
    """The verdict on one file; None when it can be trained on."""
    data, problem = read_encoded(path, max_pixels)
    if problem is None and full_decode:
        _, problem = decode_checked(data)
    return problem


def check_images(dataset: MultiLabelDataset, *, full_decode: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
                 threads: int | None = None) -> list[BadImage]:
    """Every bad file of `dataset`, in dataset order. `threads` (default: up to 8) check files in
    parallel: reading and PIL's decoders release the GIL."""
    if not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive int, got {max_pixels!r}")
    threads = threads or min(8, os.cpu_count() or 1)
    check = partial(check_image, full_decode=full_decode, max_pixels=max_pixels)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        problems = list(pool.map(check, dataset.image_paths))
    return [BadImage(i, path, problem.kind, problem.detail)
            for i, (path, problem) in enumerate(zip(dataset.image_paths, problems)) if problem is not None]


def describe(bad: list[BadImage], dataset: MultiLabelDataset | None = None, limit: int | None = None) -> str:
    """A report of `bad` (from check_images): a summary line, then one line per file (the first
    `limit` when given)."""
    where = f" of {dataset.name} ({dataset.split})" if dataset is not None else ""
    total = f" of {len(dataset)}" if dataset is not None else ""
    if not bad:
        return f"all{total} images{where} passed the image check"
    counts = Counter(b.kind for b in bad)
    kinds = ", ".join(f"{counts[k]} {k}" for k in PROBLEM_KINDS if counts[k])
    lines = [f"{len(bad)}{total} images{where} cannot be used ({kinds}):"]
    shown = bad if limit is None else bad[:limit]
    lines += [f"  {b}" for b in shown]
    if len(shown) < len(bad):
        lines.append(f"  ... and {len(bad) - len(shown)} more")
    return "\n".join(lines)

"""A multi-label dataset in memory (image paths + full multi-hot labels) and the error every reader raises."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np


class DatasetError(ValueError):
    """A dataset could not be read; the message names the dataset, the file and what is wrong."""

    def __init__(self, dataset: str, path: os.PathLike | str | None, problem: str):
        self.dataset, self.path, self.problem = dataset, None if path is None else str(path), problem
        where = f"{path}: " if path is not None else ""
        super().__init__(f"{dataset}: {where}{problem}")


@dataclass
class MultiLabelDataset:
    """Image paths with full multi-hot labels. `labels[i, c] == 1` iff class c is present in image i."""

    name: str
    class_names: list[str]
    image_paths: list[str]
    labels: np.ndarray
    split: str = "train"
    root: str = ""
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        self.labels = np.ascontiguousarray(self.labels, dtype=np.uint8)
        if self.labels.ndim != 2:
            raise DatasetError(self.name, None, f"labels must be 2-D [N, C], got shape {self.labels.shape}")
        n, c = self.labels.shape
        if n != len(self.image_paths):
            raise DatasetError(self.name, None, f"{len(self.image_paths)} image paths but {n} label rows")
        if c != len(self.class_names):
            raise DatasetError(self.name, None, f"{len(self.class_names)} class names but {c} label columns")
        if self.labels.size and self.labels.max() > 1:
            raise DatasetError(self.name, None, "labels must be 0/1")
        self.image_paths = [str(p) for p in self.image_paths]
        self.class_names = [str(c) for c in self.class_names]

    def __len__(self) -> int:
        return len(self.image_paths)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, indices, split: str | None = None) -> "MultiLabelDataset":
        indices = np.asarray(indices, dtype=np.int64)
        return MultiLabelDataset(self.name, list(self.class_names), [self.image_paths[i] for i in indices],
                                 self.labels[indices], split or self.split, self.root, dict(self.info))

    def rows_without(self, paths) -> np.ndarray:
        """Row indices of the images NOT at `paths`, in order (index other per-row arrays, e.g. the
        observed labels, with them)."""
        drop = {str(p) for p in paths}
        return np.array([i for i, p in enumerate(self.image_paths) if p not in drop], dtype=np.int64)

    def without(self, paths) -> "MultiLabelDataset":
        """This split minus the images at `paths` (e.g. the files the pre-flight check found bad)."""
        return self.subset(self.rows_without(paths))

    def __repr__(self) -> str:
        return (f"MultiLabelDataset(name={self.name!r}, split={self.split!r}, images={len(self)}, "
                f"classes={self.num_classes}, positives/image={self.labels.sum(1).mean() if len(self) else 0:.2f})")

"""Checkpoints written atomically (temp file, fsync, rename) and RNG state capture for exact resume.

Everything stored is plain tensors/dicts/numbers so `torch.load(weights_only=True)` reads it.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from scob_fast.atomic_file import atomic_write


def atomic_save(obj, path: str | os.PathLike) -> None:
    atomic_write(path, lambda handle: torch.save(obj, handle))


def save_last_and_best(state: dict, directory: str | os.PathLike, improved: bool) -> None:
    """last.pth every epoch; best.pth too when the epoch improved the selection metric."""
    directory = Path(directory)
    atomic_save(state, directory / "last.pth")
    if improved:
        atomic_save(state, directory / "best.pth")


def load(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"checkpoint {path} is unreadable or not a scob_fast checkpoint: {exc}") from exc


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]) + [random.getstate()[2] if random.getstate()[2] is not None else -1],
        "python_version": random.getstate()[0],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]), "numpy_has_gauss": int(np_state[3]), "numpy_gauss": float(np_state[4]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    internal = state["python"]
    gauss = internal[-1]
    random.setstate((state["python_version"], tuple(int(v) for v in internal[:-1]),
                     None if gauss == -1 else gauss))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

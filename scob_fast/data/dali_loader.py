"""The NVIDIA DALI decode pipeline.

Python reads the encoded files (cheap) and feeds, through `external_source`, the encoded bytes, the
multi-hot target and the sample index; DALI's threads decode ("mixed" = GPU decoding when a GPU is
used, "cpu" otherwise), resize to S x S, flip, build the hard view from the SAME resized image
(colour twist, grayscale as saturation 0, 3x3 Gaussian blur) and normalise both views to CHW with
the same flip. DALI pulls batches through a callback and keeps two in flight, so Python's file
reading overlaps DALI's decoding.

A file DALI cannot decode breaks the pipeline (DALI 2.4 cannot continue after an operator error), so
the loader rebuilds it, finds the culprits of the in-flight batches with PIL, drops them (counted
as skipped) and feeds the rest again.
"""
from __future__ import annotations

import weakref
from collections import deque

import numpy as np
import torch

from .augment import HARD_AUG
from .images import decode_pil, read_encoded
from .loaders import DataLoadError, LoaderBase

_IN_FLIGHT = 2  # prefetch depth: batches DALI works on while Python reads the next files


def _build_pipeline(source, *, batch_size, threads, device_id, seed, size, mean, std, train, hard_view, out_dtype):
    from nvidia.dali import fn, pipeline_def, types

    gpu = device_id is not None

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=device_id, seed=seed,
                  prefetch_queue_depth=_IN_FLIGHT, enable_conditionals=hard_view)
    def pipe():
        encoded, target, index = fn.external_source(
            source=source, num_outputs=3, batch=True, dtype=[types.UINT8, types.FLOAT, types.INT64], ndim=[1, 1, 1])
        image = fn.decoders.image(encoded, device="mixed" if gpu else "cpu", output_type=types.RGB)
        image = fn.resize(image, resize_x=size, resize_y=size)
        mirror = fn.random.coin_flip(probability=0.5) if train else 0
        norm = dict(mean=[255.0 * m for m in mean], std=[255.0 * s for s in std], dtype=out_dtype,
                    output_layout="CHW", mirror=mirror)
        clean = fn.crop_mirror_normalize(image, **norm)
        if not hard_view:
            return clean, target, index
        a = HARD_AUG
        # DALI conditionals route each sample through only the transforms drawn for it, so the
        # ~56% of images that keep their colours skip color_twist and ~80% skip the blur.
        jitter = fn.random.coin_flip(probability=a["jitter_p"], dtype=types.BOOL)
        gray = fn.random.coin_flip(probability=a["gray_p"], dtype=types.BOOL)
        blur = fn.random.coin_flip(probability=a["blur_p"], dtype=types.BOOL)
        jitter_f = fn.cast(jitter, dtype=types.FLOAT)

        def factor(strength):
            return 1.0 + jitter_f * (fn.random.uniform(range=[1.0 - strength, 1.0 + strength]) - 1.0)

        brightness, contrast = factor(a["brightness"]), factor(a["contrast"])
        # grayscale after jitter == saturation 0 of the same twist (see augment.py)
        saturation = factor(a["saturation"]) * (1.0 - fn.cast(gray, dtype=types.FLOAT))
        hue = jitter_f * fn.random.uniform(range=[-360.0 * a["hue"], 360.0 * a["hue"]])
        sigma = fn.random.uniform(range=list(a["blur_sigma"]))
        hard = image
        if jitter | gray:
            hard = fn.color_twist(hard, brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)
        if blur:
            hard = fn.gaussian_blur(hard, window_size=a["blur_window"], sigma=sigma)
        return clean, fn.crop_mirror_normalize(hard, **norm), target, index

    p = pipe()
    p.build()
    return p


class _Feeder:
    """The external_source callback: hands DALI the next readable batch of the epoch and remembers
    the batches DALI has taken but not yet returned (their outputs come back in order)."""

    def __init__(self, loader: "DaliLoader"):
        # A weak reference: the pipeline holds this callback, so a strong one would make
        # loader -> pipeline -> feeder -> loader a cycle that only the garbage collector frees, and a
        # DataLoader worker forked meanwhile would run DALI's destructor and hang (its threads do
        # not exist in the child).
        self._loader = weakref.ref(loader)
        self.batches = iter(())
        self.requeued: deque = deque()
        self.in_flight: deque = deque()

    def start(self, batches) -> None:
        self.batches, self.requeued, self.in_flight = iter(batches), deque(), deque()

    @property
    def loader(self) -> "DaliLoader":
        return self._loader()

    def __call__(self):
        if self.requeued:
            good, data = self.requeued.popleft()
        else:
            for indices in self.batches:
                good, data = self.loader._read_batch(indices)
                if good:
                    break
            else:
                raise StopIteration
        self.in_flight.append((good, data))
        labels = self.loader.labels
        return data, [labels[i].numpy() for i in good], [np.array([i], dtype=np.int64) for i in good]


class DaliLoader(LoaderBase):
    kind = "dali"

    def __init__(self, dataset, observed, device: str | None = None, **kwargs):
        super().__init__(dataset, observed, **kwargs)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' but torch sees no CUDA device")
        self.device = torch.device("cuda", torch.cuda.current_device()) if device == "cuda" else torch.device("cpu")
        self._pipe = None
        self._needs_reset = False
        self._feeder = _Feeder(self)
        self.rebuilds = 0

    def _new_pipeline(self):
        from nvidia.dali import types
        out_dtype = types.FLOAT16 if self.dtype == torch.float16 else types.FLOAT
        self._pipe = _build_pipeline(
            self._feeder, batch_size=self.batch_size, threads=max(1, self.workers),
            device_id=self.device.index if self.device.type == "cuda" else None,
            seed=(self.seed * 1_000_003 + self.rebuilds) % (2 ** 31), size=self.image_size,
            mean=self.mean, std=self.std, train=self.train, hard_view=self.hard_view, out_dtype=out_dtype)
        self._needs_reset = False

    def _read_batch(self, indices):
        good, data = [], []
        for i in indices:
            encoded, reason = read_encoded(self.dataset.image_paths[i])
            if encoded is None:
                self._record_bad(i, reason)
            else:
                good.append(int(i))
                data.append(encoded)
        return good, data

    def _recover(self, error: Exception) -> None:
        """Rebuild the pipeline after a decode error and queue the in-flight batches again minus the
        files PIL cannot decode either; when PIL decodes them all, the error is DALI's: raise."""
        self.rebuilds += 1
        in_flight = list(self._feeder.in_flight)
        kept, dropped = deque(), 0
        for good, data in in_flight:
            ok_idx, ok_data = [], []
            for i, encoded in zip(good, data):
                try:
                    decode_pil(encoded)
                except Exception as exc:  # undecodable: skip it like any bad file
                    self._record_bad(i, f"corrupt image ({type(exc).__name__}: {exc})")
                    dropped += 1
                    continue
                ok_idx.append(i)
                ok_data.append(encoded)
            if ok_idx:
                kept.append((ok_idx, ok_data))
        if dropped == 0:
            files = [self.dataset.image_paths[i] for g, _ in in_flight for i in g][:8]
            self._pipe = None
            raise DataLoadError(f"{self.dataset.name}: the DALI pipeline failed on images that PIL decodes "
                                f"({type(error).__name__}: {str(error).splitlines()[0][:300]}); files: {files}. "
                                "Try loader='pil'.") from error
        self._feeder.in_flight = deque()
        self._feeder.requeued = kept + self._feeder.requeued
        self._new_pipeline()

    def _to_torch(self, tensor_list, dtype):
        from nvidia.dali.plugin.pytorch import feed_ndarray
        from nvidia.dali.tensors import TensorListGPU
        on_gpu = isinstance(tensor_list, TensorListGPU)  # images on a GPU run; index always on the CPU
        tensor = tensor_list.as_tensor()
        out = torch.empty(tensor.shape(), dtype=dtype, device=self.device if on_gpu else "cpu")
        feed_ndarray(tensor, out, cuda_stream=torch.cuda.current_stream(self.device) if on_gpu else None)
        return out

    def __iter__(self):
        self._start_epoch()
        self._feeder.start(self.batch_indices())
        if self._pipe is None:
            self._new_pipeline()
        elif self._needs_reset:
            self._pipe.reset()
            self._needs_reset = False
        image_dtype = torch.float16 if self.dtype == torch.float16 else torch.float32
        finished = False
        try:
            while True:
                try:
                    outputs = self._pipe.run()
                except StopIteration:
                    finished = True
                    self._needs_reset = True  # DALI wants reset() before the next epoch
                    return
                except DataLoadError:
                    raise
                except Exception as exc:  # DALI raises RuntimeError/IndexError subclasses
                    self._recover(exc)
                    continue
                self._feeder.in_flight.popleft()
                image = self._to_torch(outputs[0], image_dtype).to(self.dtype)
                hard = self._to_torch(outputs[1], image_dtype).to(self.dtype) if self.hard_view else None
                index = self._to_torch(outputs[-1], torch.int64)
                yield self._assemble(index, image, hard)
        finally:
            if not finished:
                # An abandoned or failed epoch leaves DALI mid-iteration: start clean next time.
                self._pipe = None

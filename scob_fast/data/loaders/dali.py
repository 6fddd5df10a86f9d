"""The NVIDIA DALI decode pipeline.

Python reads and checks the encoded files (cheap; the rules of scob_fast.data.images, shared with
the PIL loader) and draws the batch's flips and hard-view factors with augment.draw_batch(seed,
epoch, batch number), exactly as the PIL loader does; it feeds, through `external_source`, the
encoded bytes, the multi-hot target, the sample index and those per-sample parameters. DALI's
threads decode ("mixed" = GPU decoding when a GPU is used, "cpu" otherwise), resize to S x S, flip
and normalise the clean view to CHW; with a hard view they also return the resized, flipped uint8
image, from which the loader makes the hard view with the torch definition itself
(augment.hard_view_from_uint8, on the device DALI delivered to, on a worker thread one batch ahead
of the batch the caller gets, so that it overlaps DALI and training): the public code's torchvision
ColorJitter draws a random operation order per image and takes contrast around the image's mean
grey, which DALI's color_twist (fixed order, contrast around 128) cannot express. The pipeline has
no random operator of its own: DALI's are seeded once per pipeline and cannot be keyed per batch,
so a resumed run (a new pipeline) would draw differently. DALI pulls batches through a callback and
keeps two in flight, so Python's file reading overlaps DALI's decoding.

A file DALI cannot decode breaks the pipeline (DALI 2.4 cannot continue after an operator error), so
the loader rebuilds it, finds the culprits of the in-flight batches with PIL, drops them (counted
as skipped) and feeds the rest again.
"""
from __future__ import annotations

import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from ..augment import hard_view_from_uint8
from ..images import decode_checked, read_encoded
from .base import DataLoadError, LoaderBase, draw_shard

_IN_FLIGHT = 2  # prefetch depth: batches DALI works on while Python reads the next files


@dataclass
class _Fed:
    """One batch as handed to DALI: its number, the readable samples and their drawn parameters."""

    batch: int
    index: list[int]
    encoded: list[np.ndarray]
    mirror: np.ndarray
    params: dict[str, np.ndarray] | None

    def keep(self, mask: np.ndarray) -> "_Fed":
        params = None if self.params is None else {k: v[mask] for k, v in self.params.items()}
        return _Fed(self.batch, [i for i, m in zip(self.index, mask) if m],
                    [e for e, m in zip(self.encoded, mask) if m], self.mirror[mask], params)


def _build_pipeline(source, *, batch_size, threads, device_id, seed, size, mean, std, hard_view, out_dtype):
    from nvidia.dali import fn, pipeline_def, types

    gpu = device_id is not None

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=device_id, seed=seed,
                  prefetch_queue_depth=_IN_FLIGHT)
    def pipe():
        # encoded, target, index, mirror
        dtypes = [types.UINT8, types.FLOAT, types.INT64, types.INT32]
        encoded, target, index, mirror = fn.external_source(source=source, num_outputs=len(dtypes), batch=True,
                                                            dtype=dtypes, ndim=[1, 1, 1, 0])
        image = fn.decoders.image(encoded, device="mixed" if gpu else "cpu", output_type=types.RGB)
        image = fn.resize(image, resize_x=size, resize_y=size)
        clean = fn.crop_mirror_normalize(image, mean=[255.0 * m for m in mean], std=[255.0 * s for s in std],
                                         dtype=out_dtype, output_layout="CHW", mirror=mirror)
        if not hard_view:
            return clean, target, index
        # the same resized image with the same flip, uint8 HWC: the loader makes the hard view from it
        return clean, fn.flip(image, horizontal=mirror), target, index

    p = pipe()
    p.build()
    return p


def _scalars(values: np.ndarray, dtype) -> list[np.ndarray]:
    return [np.asarray(v, dtype=dtype) for v in values]


class _Feeder:
    """The external_source callback: hands DALI the next readable batch of the pass and remembers
    the batches DALI has taken but not yet returned (their outputs come back in order)."""

    def __init__(self, loader: "DaliLoader"):
        # A weak reference: the pipeline holds this callback, so a strong one would make
        # loader -> pipeline -> feeder -> loader a cycle that only the garbage collector frees, and a
        # DataLoader worker forked meanwhile would run DALI's destructor and hang (its threads do
        # not exist in the child).
        self._loader = weakref.ref(loader)
        self.epoch = 0
        self.batches = iter(())
        self.requeued: deque = deque()
        self.in_flight: deque = deque()

    def start(self, epoch: int, plan) -> None:
        self.epoch, self.batches, self.requeued, self.in_flight = epoch, iter(plan), deque(), deque()

    @property
    def loader(self) -> "DaliLoader":
        return self._loader()

    def __call__(self):
        if self.requeued:
            fed = self.requeued.popleft()
        else:
            for batch_no, indices, slots, size in self.batches:
                fed = self.loader._read_batch(self.epoch, batch_no, indices, slots, size)
                if fed.index:
                    break
            else:
                raise StopIteration
        self.in_flight.append(fed)
        labels = self.loader.labels
        out = [fed.encoded, [labels[i].numpy() for i in fed.index], [np.array([i], dtype=np.int64) for i in fed.index],
               _scalars(fed.mirror, np.int32)]
        return out


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
        self._executor: ThreadPoolExecutor | None = None
        self.rebuilds = 0

    def _new_pipeline(self):
        from nvidia.dali import types
        out_dtype = types.FLOAT16 if self.dtype == torch.float16 else types.FLOAT
        self._pipe = _build_pipeline(
            self._feeder, batch_size=self.rank_batch_size, threads=max(1, self.workers),
            device_id=self.device.index if self.device.type == "cuda" else None,
            seed=self.seed % (2 ** 31), size=self.image_size, mean=self.mean, std=self.std,
            hard_view=self.hard_view, out_dtype=out_dtype)
        self._needs_reset = False

    def _read_batch(self, epoch: int, batch_no: int, indices, slots=None, size=None) -> _Fed:
        """This rank's images of batch `batch_no` (`slots` of its `size` draws; see base.shard_plan)."""
        size = len(indices) if size is None else size
        mirror, params = draw_shard(self.seed, epoch, batch_no, size, slots, flip=self.train,
                                    hard_view=self.hard_view)
        good = np.zeros(len(indices), dtype=bool)
        encoded = [None] * len(indices)
        for slot, i in enumerate(indices):
            data, problem = read_encoded(self.dataset.image_paths[i], self.max_pixels)
            if data is None:
                self._record_bad(i, str(problem))
            else:
                good[slot], encoded[slot] = True, data
        return _Fed(batch_no, [int(i) for i in indices], encoded, mirror, params).keep(good)

    def _recover(self, error: Exception) -> None:
        """Rebuild the pipeline after a decode error and queue the in-flight batches again minus the
        files PIL cannot decode either; when PIL decodes them all, the error is DALI's: raise."""
        self.rebuilds += 1
        in_flight = list(self._feeder.in_flight)
        kept, dropped = deque(), 0
        for fed in in_flight:
            ok = np.ones(len(fed.index), dtype=bool)
            for slot, (i, encoded) in enumerate(zip(fed.index, fed.encoded)):
                _, problem = decode_checked(encoded)
                if problem is not None:  # undecodable: skip it like any bad file
                    self._record_bad(i, str(problem))
                    ok[slot] = False
                    dropped += 1
            if ok.any():
                kept.append(fed.keep(ok))
        if dropped == 0:
            files = [self.dataset.image_paths[i] for fed in in_flight for i in fed.index][:8]
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

    def _hard_view_thread(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scob-hard-view")
        return self._executor

    def _finish(self, batch_no: int, index, image, hard, mirror):
        self.next_batch = batch_no + 1
        return self._assemble(index, image, None if hard is None else hard.result(),
                              flip=torch.from_numpy(np.asarray(mirror, dtype=bool)))

    def __iter__(self):
        plan = self._start_epoch()
        self._feeder.start(self.epoch, plan)
        if self._pipe is None:
            self._new_pipeline()
        elif self._needs_reset:
            self._pipe.reset()
            self._needs_reset = False
        image_dtype = torch.float16 if self.dtype == torch.float16 else torch.float32
        finished = False
        # One batch of lookahead: while the hard view of batch k is made on a worker thread (torch
        # releases the GIL), DALI delivers batch k+1 and the caller trains; k is yielded after that.
        pending = None
        try:
            while True:
                try:
                    outputs = self._pipe.run()
                except StopIteration:
                    finished = True
                    self._needs_reset = True  # DALI wants reset() before the next epoch
                    break
                except DataLoadError:
                    raise
                except Exception as exc:  # DALI raises RuntimeError/IndexError subclasses
                    self._recover(exc)
                    continue
                fed = self._feeder.in_flight.popleft()
                image = self._to_torch(outputs[0], image_dtype).to(self.dtype)
                index = self._to_torch(outputs[-1], torch.int64)
                hard = None
                if self.hard_view:
                    flipped = self._to_torch(outputs[1], torch.uint8).permute(0, 3, 1, 2)
                    hard = self._hard_view_thread().submit(hard_view_from_uint8, flipped, fed.params, self.mean,
                                                           self.std, self.dtype, clean=image)
                if pending is not None:
                    yield self._finish(*pending)
                pending = (fed.batch, index, image, hard, fed.mirror)
            if pending is not None:
                yield self._finish(*pending)
        finally:
            if not finished:
                # An abandoned or failed epoch leaves DALI mid-iteration: start clean next time.
                self._pipe = None

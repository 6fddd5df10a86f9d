"""The PIL + torch DataLoader fallback: same batches and augmentations as the DALI pipeline.

Each worker process builds a whole batch: read and check the files (scob_fast.data.images), decode
with PIL, bilinear antialiased resize to S x S, flip, normalise; the hard view is made from the same
resized and flipped uint8 batch by the torch definition itself (augment.hard_view_from_uint8, the
public code's torchvision ColorJitter / RandomGrayscale / GaussianBlur), so it is the DALI loader's
distribution exactly. Random draws come from
augment.draw_batch(seed, epoch, batch number): the same images, flips and hard-view factors whatever
the number of workers, and the same after a resume. The DataLoader gets a generator of its own,
so that creating its iterator (which draws the workers' base seed) leaves torch's global RNG alone.
"""
from __future__ import annotations

import gc
import weakref

import numpy as np
import torch
from PIL import Image

from ..augment import hard_view_from_uint8, normalise, subset_params
from ..images import decode_checked, read_encoded
from .base import LoaderBase, draw_shard

class _BatchBuilder(torch.utils.data.Dataset):
    """Maps (epoch, batch number, indices, slots, batch size) to a dict of tensors; runs inside
    DataLoader workers (slots: which of the batch's draws are this rank's, base.shard_plan)."""

    def __init__(self, paths, image_size, mean, std, train, hard_view, dtype, seed, max_pixels):
        self.paths, self.size, self.mean, self.std = paths, image_size, mean, std
        self.train, self.hard_view, self.dtype, self.seed = train, hard_view, dtype, seed
        self.max_pixels = max_pixels

    def __len__(self):  # only batch specs from the sampler index it
        return 0

    def __getitem__(self, spec):
        epoch, batch_no, indices, slots, size = spec
        flips, params = draw_shard(self.seed, epoch, batch_no, size, slots, flip=self.train,
                                   hard_view=self.hard_view)
        clean, slots, good, bad = [], [], [], []
        for slot, i in enumerate(indices):
            data, problem = read_encoded(self.paths[i], self.max_pixels)
            image = None
            if data is not None:
                image, problem = decode_checked(data)
            if image is None:
                bad.append((int(i), str(problem)))
                continue
            image = image.resize((self.size, self.size), Image.BILINEAR)
            if flips[slot]:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            clean.append(np.asarray(image))
            slots.append(slot)
            good.append(i)
        out = {"index": torch.tensor(good, dtype=torch.int64), "bad": bad, "batch": batch_no,
               "flip": torch.from_numpy(np.asarray(flips, dtype=bool)[slots])}
        if not good:
            return out
        batch = torch.from_numpy(np.stack(clean)).permute(0, 3, 1, 2)
        out["image"] = normalise(batch, self.mean, self.std, self.dtype)
        if params is not None:
            out["image_hard"] = hard_view_from_uint8(batch, subset_params(params, slots), self.mean, self.std,
                                                     self.dtype, clean=out["image"])
        return out


class _EpochSampler(torch.utils.data.Sampler):
    """Yields (epoch, batch number, indices, slots, batch size) of the pass the loader has started
    (read at each __iter__, which lets persistent workers serve every epoch)."""

    def __init__(self, loader: "PilLoader"):
        # Weak: a strong reference would make loader -> DataLoader -> sampler -> loader a cycle, and
        # a DataLoader freed by the garbage collector waits 5 s per worker to shut it down.
        self._loader = weakref.ref(loader)

    def __iter__(self):
        epoch, plan = self._loader()._pass
        for k, idx, slots, size in plan:
            yield epoch, k, idx.tolist(), slots, size

    def __len__(self):
        return len(self._loader()._pass[1])


def _no_collate(batch):
    return batch


def _worker_init(_worker_id):
    # A forked worker inherits the parent's objects; if the garbage collector finalised an inherited
    # DALI pipeline here, its destructor would wait forever on threads that only exist in the parent.
    gc.freeze()


class PilLoader(LoaderBase):
    kind = "pil"

    def __init__(self, dataset, observed, **kwargs):
        super().__init__(dataset, observed, **kwargs)
        builder = _BatchBuilder(self.dataset.image_paths, self.image_size, self.mean, self.std,
                                self.train, self.hard_view, self.dtype, self.seed, self.max_pixels)
        extra = {"persistent_workers": True, "prefetch_factor": 2} if self.workers > 0 else {}
        self._pass: tuple[int, list] = (0, [])  # (epoch, base._start_epoch entries of each batch to build)
        self._loader = torch.utils.data.DataLoader(
            builder, sampler=_EpochSampler(self), batch_size=None, num_workers=self.workers,
            collate_fn=_no_collate, worker_init_fn=_worker_init,
            generator=torch.Generator().manual_seed(self.seed), **extra)

    def __iter__(self):
        plan = self._start_epoch()
        self._pass = (self.epoch, plan)
        for out in self._loader:
            for index, reason in out.pop("bad"):
                self._record_bad(index, reason)
            self.next_batch = out.pop("batch") + 1
            if out["index"].numel() == 0:
                continue
            yield self._assemble(out["index"], out["image"], out.get("image_hard"), flip=out["flip"])

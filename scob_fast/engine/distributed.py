"""Data-parallel training under torchrun: the small context the loop and the methods share.

    torchrun --nproc_per_node 2 train.py --dataset demo          # gloo on CPU, NCCL on CUDA
    python train.py --dataset demo                               # one process: SINGLE, no collective at all

`init_from_env` reads torchrun's variables (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT);
without them, or with WORLD_SIZE=1, it returns `SINGLE`, whose helpers return their input
unchanged, so a one-process run executes exactly the operations it executed before this module.

Semantics (what makes N ranks train the model one rank trains):
- `--batch-size` is the GLOBAL batch B. Every epoch has the one-process order (seed, epoch) and
  its batches; rank r reads slots [r B/N, (r+1) B/N) of each (the loaders' `shard`), with the
  augmentation draws of the whole batch (augment.draw_batch), so a sample gets the same flip and
  hard view whatever N is. B must be a multiple of N. Learning rates stay those of batch B.
- The heads run on the local slice. A method then gathers its per-sample outputs (with autograd:
  `gather_with_grad`) and the batch fields (`gather`) and computes the ONE-process loss of the
  global batch on every rank; every stateful update (label estimator rows, banks, pseudo labels,
  corrections) is made from the gathered batch, identically on every copy. The gradients are then
  averaged over the ranks (`DataParallelAmp`, after each backward, before clipping, the finite
  check and the step): for a parameter upstream of the gather, all_gather's backward sums the N
  identical losses' gradients of this rank's slice (N x), the average divides by N; a parameter
  used on the gathered batch (the estimator) has the same gradient on every rank. So the step is
  the one-process step of batch B, up to float rounding, for every loss, batch statistics included.
- Decisions that read the batch (Scob's "contrast only when both levels keep a token") are taken
  over all ranks (`any_each`, `all`); evaluation gathers every rank's scores and drops the padding
  of the last batch (`gather` + dataset index) before the metrics.
- BatchNorm in training mode (SST's 1x1-conv + BN head, --bn-mode train, Scob --published-bn)
  normalises with per-rank batch statistics (B/N images; no SyncBatchNorm: torch's has no CPU
  path), so those runs match one process only up to those statistics; the running statistics are
  rank 0's, broadcast after every step as DDP's broadcast_buffers does, so every copy (and a
  checkpoint) holds one model.
- Why not torch's DistributedDataParallel wrapper: its reducer arms in the wrapper's forward, but a
  method runs several forwards through sub-modules and takes two optimiser steps per iteration
  (Scob), and the wrapper renames every checkpoint key (module.); the average here is DDP's
  gradient rule applied after the backward (one flat all-reduce per dtype, no bucketing and no
  overlap with the backward).

What each method synchronises, and when, is listed in scob_fast/methods/base.py (this layer
names no method).

Rank 0 alone writes the run directory, logs and checkpoints; a checkpoint records the world size
and each rank's RNG state and running log sums, so `--resume` with the same world size continues
exactly (another world size is refused in one line).
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from scob_fast.engine.amp import AmpPolicy

# Rank 0 may work alone for long (generating the demo set, building a feature cache) while the
# others wait on the control group: give that group a timeout that such work cannot reach.
CONTROL_TIMEOUT = datetime.timedelta(hours=12)


@dataclass(eq=False)       # compared (and hashed) by identity: SINGLE is a default argument
class DistContext:
    """rank / world of this process and the collectives the loop and the methods use. With world 1
    every helper returns its input (no communication, no copy)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None
    _control: object = field(default=None, repr=False)       # a gloo group for objects and flags
    _bn_cache: dict = field(default_factory=dict, repr=False)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        """(rank, world): which slots of each global batch this process reads (the loaders' `shard`)."""
        return self.rank, self.world

    # -- tensors ---------------------------------------------------------------------------------
    def _comm(self, tensor: torch.Tensor) -> torch.Tensor:
        """The tensor on a device the data backend serves (NCCL: CUDA; gloo: CPU), contiguous."""
        if self.backend == "nccl" and tensor.device.type != "cuda":
            return tensor.to(torch.device("cuda", torch.cuda.current_device())).contiguous()
        if self.backend == "gloo" and tensor.device.type != "cpu":
            return tensor.cpu().contiguous()
        return tensor.contiguous()

    def _row_counts(self, rows: int, device) -> list[int]:
        counts = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(self.world)]
        torch.distributed.all_gather(counts, torch.tensor([rows], dtype=torch.int64, device=device))
        return [int(c) for c in counts]

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's rows (dim 0), concatenated in rank order, without gradient; ranks may hold
        different numbers of rows."""
        if self.world == 1:
            return tensor
        original = tensor
        flag = tensor.dtype == torch.bool                       # not every backend reduces bool
        local = self._comm(tensor.detach().to(torch.uint8) if flag else tensor.detach())
        counts = self._row_counts(local.shape[0], local.device)
        padded = torch.zeros((max(counts), *local.shape[1:]), dtype=local.dtype, device=local.device)
        padded[:local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        torch.distributed.all_gather(parts, padded)
        out = torch.cat([p[:n] for p, n in zip(parts, counts)])
        out = out.bool() if flag else out
        return out.to(original.device)

    def gather_with_grad(self, tensor: torch.Tensor) -> torch.Tensor:
        """As `gather`, and the gradient of the result flows back to this rank's rows: the sum of
        what every rank's loss sends to them (all_gather's adjoint, a reduce-scatter)."""
        if self.world == 1:
            return tensor
        local = self._comm(tensor)
        counts = self._row_counts(local.shape[0], local.device)
        missing = max(counts) - local.shape[0]
        if missing:
            local = torch.cat([local, local.new_zeros((missing, *local.shape[1:]))])
        stacked = _GatherRows.apply(local, self.rank, self.world, self.backend)      # [world, rows, ...]
        return torch.cat([part[:n] for part, n in zip(stacked.unbind(0), counts)]).to(tensor.device)

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of a (detached) tensor over the ranks."""
        if self.world == 1:
            return tensor
        out = self._comm(tensor.detach().clone())
        torch.distributed.all_reduce(out)
        return (out / self.world).to(tensor.device)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return tensor
        out = self._comm(tensor.detach().clone())
        torch.distributed.all_reduce(out)
        return out.to(tensor.device)

    # -- flags and objects (the control group: CPU, no device synchronisation of its own) -------------
    def any_each(self, *flags: bool) -> tuple[bool, ...]:
        """For each flag: is it true on some rank?"""
        if self.world == 1:
            return tuple(bool(f) for f in flags)
        values = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int64)
        torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.MAX, group=self._control)
        return tuple(bool(v) for v in values.tolist())

    def all(self, flag: bool) -> bool:
        if self.world == 1:
            return bool(flag)
        value = torch.tensor([int(bool(flag))], dtype=torch.int64)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN, group=self._control)
        return bool(value.item())

    def max_int(self, value: int) -> int:
        if self.world == 1:
            return int(value)
        out = torch.tensor([int(value)], dtype=torch.int64)
        torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.MAX, group=self._control)
        return int(out.item())

    def gather_objects(self, obj) -> list:
        """[obj of rank 0, obj of rank 1, ...] on every rank (pickled)."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj, group=self._control)
        return out

    def broadcast_object(self, obj):
        """Rank 0's `obj` on every rank."""
        if self.world == 1:
            return obj
        box = [obj if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0, group=self._control)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier(group=self._control)

    @contextlib.contextmanager
    def main_first(self):
        """The body runs on rank 0 first, then on the others (which find what it made: a generated
        dataset, a feature cache, a run directory); an error on rank 0 is raised on every rank."""
        if self.world == 1:
            yield
            return
        if self.is_main:
            try:
                yield
            except BaseException as exc:
                self.broadcast_object(" ".join(str(exc).split()) or type(exc).__name__)
                raise
            self.broadcast_object(None)
        else:
            failed = self.broadcast_object(None)
            if failed is not None:
                raise RuntimeError(f"rank 0 failed: {failed}")
            yield

    # -- module state --------------------------------------------------------------------------------
    def _broadcast_tensors(self, tensors: list[torch.Tensor]) -> None:
        """Rank 0's values into `tensors` in place, one broadcast per (device, dtype)."""
        by_dtype: dict = {}
        for t in tensors:
            by_dtype.setdefault((t.device, t.dtype), []).append(t)
        for group in by_dtype.values():
            flat = self._comm(torch.cat([t.detach().reshape(-1) for t in group]))
            torch.distributed.broadcast(flat, src=0)
            offset = 0
            for t in group:
                with torch.no_grad():
                    t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()

    def broadcast_state(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers into every rank's `module` (as DDP does when it wraps one)."""
        if self.world > 1:
            self._broadcast_tensors([t for t in module.state_dict().values() if t.numel()])

    def broadcast_batchnorm_statistics(self, module: torch.nn.Module) -> None:
        """Rank 0's BatchNorm running statistics into every rank (DDP's broadcast_buffers); a frozen,
        folded backbone has no BatchNorm left, and then nothing is sent."""
        if self.world == 1:
            return
        key = id(module)
        if key not in self._bn_cache:
            self._bn_cache[key] = [b for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                                   for b in m.buffers() if b is not None and b.numel()]
        buffers = self._bn_cache[key]
        if buffers:
            self._broadcast_tensors(buffers)

    # -- gradients -----------------------------------------------------------------------------------
    def average_gradients(self, parameters: list[torch.Tensor], loss: torch.Tensor) -> torch.Tensor:
        """Average every parameter's gradient over the ranks (a parameter that has none anywhere keeps
        None, so Adam leaves it as it would in one process); returns the loss averaged likewise."""
        if self.world == 1:
            return loss
        device = loss.device
        present = torch.tensor([float(p.grad is not None) for p in parameters] + [float(loss.detach())],
                               dtype=torch.float64)
        torch.distributed.all_reduce(present, group=self._control)
        mean_loss = torch.tensor(float(present[-1]) / self.world, dtype=loss.dtype, device=device)
        chosen = [p for p, n in zip(parameters, present[:-1].tolist()) if n > 0]
        for p in chosen:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        by_dtype: dict = {}
        for p in chosen:
            by_dtype.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
        for grads in by_dtype.values():
            flat = self._comm(torch.cat([g.reshape(-1) for g in grads]))
            torch.distributed.all_reduce(flat)
            flat /= self.world
            offset = 0
            for g in grads:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()
        return mean_loss


SINGLE = DistContext()


class _GatherRows(torch.autograd.Function):
    """all_gather with autograd: forward stacks every rank's equally shaped tensor; backward gives
    this rank the sum over the ranks of the gradient of its part (reduce-scatter on NCCL; gloo has
    none, so an all-reduce of the whole gradient, then this rank's part)."""

    @staticmethod
    def forward(ctx, local, rank, world, backend):
        ctx.rank, ctx.world, ctx.backend = rank, world, backend
        out = local.new_empty((world * local.shape[0], *local.shape[1:]))
        torch.distributed.all_gather_into_tensor(out, local.contiguous())
        return out.view(world, *local.shape)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        if ctx.backend == "nccl":
            mine = grad.new_empty(grad.shape[1:])
            torch.distributed.reduce_scatter_tensor(mine, grad.flatten(0, 1))
        else:
            grad = grad.clone()             # the incoming gradient may be shared: reduce a copy
            torch.distributed.all_reduce(grad)
            mine = grad[ctx.rank]
        return mine, None, None, None


class DataParallelAmp(AmpPolicy):
    """AmpPolicy whose steps average the gradients over the ranks between the backward and the
    finite check / clipping / optimiser step, so every rank takes the same step and the same
    skip decision. With a GradScaler the average comes before unscale_, as under DDP, so that its
    inf/NaN check sees the averaged gradients."""

    def __init__(self, dist: DistContext, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.dist = dist
        if self.scaler is not None:
            self.scaler = _AveragingGradScaler(dist)

    @staticmethod
    def _trainable(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
        return [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]

    def _gradients_ok(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> bool:
        if self.scaler is None:
            loss = self.dist.average_gradients(self._trainable(optimizer), loss)
        else:
            loss = self.dist.mean(loss.detach().float())
        return super()._gradients_ok(loss, optimizer)


class _AveragingGradScaler(torch.amp.GradScaler):
    def __init__(self, dist: DistContext):
        super().__init__("cuda")
        self._dist = dist

    def unscale_(self, optimizer):
        params = DataParallelAmp._trainable(optimizer)
        self._dist.average_gradients(params, torch.zeros((), device=params[0].device if params else "cpu"))
        return super().unscale_(optimizer)


def rank_seed(seed: int, rank: int) -> int:
    """Each rank's seed of the global RNGs once the model is built (dropout masks must differ
    between ranks; the initialisation before it is the same on every rank)."""
    return int(np.random.SeedSequence([int(seed), int(rank), 0xD15]).generate_state(1)[0])


def check_world_size(saved: dict, dist: DistContext, path: str) -> None:
    """A checkpoint continues only under the world size it was trained with."""
    trained = int(saved.get("world_size", 1))
    if trained != dist.world:
        raise ValueError(f"--resume {path}: the checkpoint was trained by {trained} process(es) and this run has "
                         f"{dist.world} (torchrun --nproc_per_node x --nnodes); resume with the same world size")


def init_from_env(device_type: str) -> DistContext:
    """The context of this process: SINGLE without torchrun (or WORLD_SIZE=1), else a process group
    (NCCL for CUDA, gloo for CPU) and this rank's GPU (LOCAL_RANK)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    if not torch.distributed.is_initialized():
        kwargs = {"device_id": torch.device("cuda", local_rank)} if backend == "nccl" else {}
        torch.distributed.init_process_group(backend, **kwargs)
    control = torch.distributed.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    return DistContext(rank=rank, world=world, local_rank=local_rank, backend=backend, _control=control)


def shutdown(dist: DistContext) -> None:
    if dist.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()

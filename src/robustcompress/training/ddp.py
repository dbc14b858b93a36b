"""Data-parallel training helpers for :func:`robustcompress.training.fit` under ``torchrun``.

When ``torch.distributed`` is initialised with more than one process, ``fit`` trains the same
model on every rank and keeps the replicas identical, as DistributedDataParallel (DDP) does:

* **Data**: ``batch_size`` is the *global* batch. Every rank draws the same seeded permutation
  of epoch ``e`` and the same global batches; rank ``r`` takes ``batch[r::world]``. Each global
  batch is cut to a multiple of ``world`` (at most ``world - 1`` samples of a batch are dropped,
  the same ones on every rank), so all ranks hold equally many samples and the average of the
  per-rank mean losses is the global mean loss. Augmentation (flips, crop offsets; see
  :mod:`robustcompress.training.augment`) is drawn for the whole global batch from the epoch
  generator before sharding, so the augmented data do not depend on the number of processes.
* **Gradients**: after the backward pass the gradients of every parameter group are averaged
  over the ranks with one flat ``all_reduce`` per group (bucketed like DDP's reducer, but not
  overlapped with the backward pass). Deviation from wrapping the model in
  ``DistributedDataParallel``: our objectives run attacks (extra forwards and input gradients
  between the training forward and its backward), and multi-group objectives (ANP-VS) take
  per-group gradients with ``torch.autograd.grad``; DDP's reducer forbids the former and never
  sees the latter. Averaging the gradients explicitly is correct for all of them with one code
  path, and the objective receives the plain model.
* **Start and buffers**: parameters and buffers are broadcast from rank 0 before the first step
  (also after a resume); floating-point buffers (BatchNorm running statistics, which each rank
  updates from its own shard) are averaged over the ranks at the end of every epoch.
* **Global RNG** (dropout, stochastic layers without a generator): forked per epoch and seeded
  from (seed, epoch, rank), so ranks draw different noise for their different samples.

Without an initialised process group (or with one process) every helper is the identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    """This process's place in the data-parallel group (``rank 0 of 1`` without torchrun)."""

    rank: int = 0
    size: int = 1

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current_world(enabled: bool | None = None) -> World:
    """The data-parallel world: the process group's rank/size when it is initialised with more
    than one process and ``enabled`` is not False; else ``World(0, 1)``."""
    if enabled is False or not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size())


def rank_seed(epoch_seed: int, rank: int) -> int:
    """Seed of the global-RNG fork of ``rank`` in an epoch (rank 0 keeps ``epoch_seed``, so a
    one-process run is unchanged)."""
    return epoch_seed if rank == 0 else (epoch_seed * 1_000_033 + rank * 104_729) % (2**63 - 1)


def usable_size(n: int, world: int) -> int:
    """Samples of a global batch of ``n`` that are used: the largest multiple of ``world``."""
    return n - n % world


def shard(t: torch.Tensor, w: World) -> torch.Tensor:
    """Rank ``w.rank``'s part ``t[rank::size]`` of a global batch cut to a multiple of the size."""
    if not w.active:
        return t
    return t[: usable_size(t.shape[0], w.size)][w.rank:: w.size]


def batch_starts(n: int, batch_size: int, world: int, max_batches: int | None) -> list[int]:
    """Start offsets of the global batches of an epoch of ``n`` samples.

    A trailing batch that would give a rank fewer than 2 samples is dropped (a 1-sample batch
    breaks BatchNorm in train mode), unless it is the only batch.
    """
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and usable_size(n - starts[-1], world) // world < 2:
        starts.pop()
    if max_batches:
        starts = starts[:max_batches]
    return starts


def _flat_all_reduce_mean(tensors: list[torch.Tensor], world: int) -> None:
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= world
    off = 0
    for t in tensors:
        k = t.numel()
        t.copy_(flat[off: off + k].view_as(t))
        off += k


def average_gradients(params: Iterable[nn.Parameter], w: World) -> None:
    """Average ``p.grad`` over the ranks (one flat all-reduce; missing grads count as zero)."""
    if not w.active:
        return
    params = list(params)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict[tuple, list[torch.Tensor]] = {}
    for p in params:
        by_dtype.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
    for grads in by_dtype.values():
        _flat_all_reduce_mean(grads, w.size)


def broadcast_state(model: nn.Module, w: World) -> None:
    """Copy rank 0's parameters and buffers to every rank (identical replicas)."""
    if not w.active:
        return
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            # collectives want contiguous tensors, and not every backend takes bool
            buf = t.data.contiguous()
            dist.broadcast(buf.view(torch.uint8) if buf.dtype == torch.bool else buf, src=0)
            if buf.data_ptr() != t.data.data_ptr():
                t.data.copy_(buf)


def average_buffers(model: nn.Module, w: World) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over the ranks."""
    if not w.active:
        return
    with torch.no_grad():
        floats = [b for b in model.buffers() if b.is_floating_point()]
        by_dtype: dict[tuple, list[torch.Tensor]] = {}
        for b in floats:
            by_dtype.setdefault((b.dtype, b.device), []).append(b)
        for bufs in by_dtype.values():
            _flat_all_reduce_mean(bufs, w.size)


def sum_over_ranks(values: dict[str, float], w: World, device: torch.device) -> dict[str, float]:
    """Sum each value over the ranks (float64 all-reduce); identity with one process."""
    if not w.active or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def barrier(w: World) -> None:
    if w.active:
        dist.barrier()

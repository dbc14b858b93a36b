"""Sharding helpers for evaluation under ``torchrun`` (gloo on CPU, nccl on GPU).

Without torch.distributed initialised every function is the single-process identity, so the
runner has one code path. Work is split into whole *batches*, each with its own generator seeded
from (seed, unit, batch index); rank r takes batches r, r+W, r+2W, ... and the outcomes are
gathered in batch order. Results are therefore identical for any number of processes.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(device: torch.device | None = None) -> bool:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1); idempotent."""
    if is_distributed() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return is_distributed()
    backend = "nccl" if (device is not None and device.type == "cuda") else "gloo"
    dist.init_process_group(backend=backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def agreed(flag: bool) -> bool:
    """Rank 0's value of ``flag`` on every rank.

    Decisions such as "this unit is already done" must be taken once: a rank that checks the
    store or a file a moment after rank 0 wrote it would otherwise skip work the others do, and
    the next collective would deadlock.
    """
    if not is_distributed():
        return flag
    box = [bool(flag)]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def batch_owner_indices(n: int, rank: int, world: int) -> list[int]:
    """Batches ``rank`` evaluates out of ``n`` (round robin: rank, rank + world, ...)."""
    return list(range(rank, n, world))


def my_indices(n: int) -> list[int]:
    """The batch indices this process evaluates."""
    return batch_owner_indices(n, *rank_and_world())


def gather_ordered(items: list[tuple[int, Any]]) -> list[Any]:
    """Gather ``(batch index, outcome)`` pairs from every rank; outcomes in batch order.

    Tensors are moved to CPU before the exchange. Uses ``all_gather_object`` (in-memory, between
    our own processes; nothing is read from files).
    """
    items = [(b, _to_cpu(o)) for b, o in items]
    if is_distributed():
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, items)
        items = [it for part in gathered for it in part]
    return [o for _, o in sorted(items, key=lambda t: t[0])]


def _to_cpu(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.detach().cpu()
    if isinstance(o, (list, tuple)):
        return type(o)(_to_cpu(v) for v in o)
    if isinstance(o, dict):
        return {k: _to_cpu(v) for k, v in o.items()}
    if hasattr(o, "to_cpu"):
        return o.to_cpu()
    return o

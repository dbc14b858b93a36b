"""Where :func:`~robustcompress.training.fit` keeps the training split: on the host, or resident
on the training device (``TrainConfig.data_on_device``).

* **Host** (the CPU default): every batch is gathered on the host (``x[idx]``) and copied to the
  device (pinned, ``non_blocking``; see :mod:`robustcompress.training.accel`).
* **Resident**: ``x`` and ``y`` are copied to the device once per ``fit`` call; each epoch's
  permutation is copied once, and every batch is gathered on the device. On a GPU this removes
  the per-batch host gather and copy, the bottleneck of small models such as ResNet-20.

Both give the same batches bit for bit: the permutation and the augmentation draws (flips, crop
offsets) still come from the epoch's host generator in the documented order
(:mod:`robustcompress.training.augment`); only the place of the gather moves.

``data_on_device``: ``"auto"`` (default) is resident when the device is CUDA and the split takes
at most :data:`AUTO_FRACTION` of the device's free memory; ``True`` is resident on any device
(on CPU a no-op copy, the same code path), with a :class:`~robustcompress.errors.ConfigError` when
the split exceeds the free memory; ``False`` stays on the host (a split the caller already put on
the device stays there). Memory: a :class:`~robustcompress.data.info.Split` holds float32 inputs
(the loaders scale uint8/int16 arrays to the declared box), so the cost is 4 bytes per input
value plus 8 per label: CIFAR-10's 50,000 training images take 615 MB, MNIST's 60,000 188 MB.
Under torchrun every rank holds the whole training split on its own GPU (any sample of the global
permutation may land in any rank's shard), and the ranks agree on the placement.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from robustcompress.data.info import Split
from robustcompress.errors import ConfigError
from robustcompress.training import ddp

#: ``data_on_device="auto"`` keeps the split on a GPU when it takes at most this fraction of the
#: free device memory (the rest is left to the model, activations and attacks).
AUTO_FRACTION = 0.5

Mode = Union[bool, str]


def split_bytes(split: Split) -> int:
    """Device memory the split's ``x`` and ``y`` take (their own dtypes)."""
    return sum(t.numel() * t.element_size() for t in (split.x, split.y))


def free_bytes(dev: torch.device) -> Optional[int]:
    """Memory a new allocation on ``dev`` can use (the driver's free memory plus what PyTorch's
    allocator holds unused); None where there is no such limit (CPU, other devices)."""
    if dev.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(dev)
    return int(free + torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev))


def _fix() -> str:
    return ("set data_on_device to auto or false (training.data_on_device in a config, "
            "--data-on-device auto|false in `train`) or train on fewer samples (train_limit)")


def wants_resident(mode: Mode, dev: torch.device, nbytes: int, free: Optional[int]) -> bool:
    """Whether a split of ``nbytes`` goes to ``dev`` under ``mode`` with ``free`` bytes free
    (None = no limit). Raises ConfigError when ``mode`` is True and it does not fit."""
    if mode is False:
        return False
    if mode is True:
        if free is not None and nbytes > free:
            raise ConfigError(
                f"data_on_device=true: the training split takes {nbytes / 2**20:.0f} MiB but "
                f"{dev} has {free / 2**20:.0f} MiB free; {_fix()}")
        return True
    if mode != "auto":
        raise ConfigError(f"data_on_device must be auto, true or false, got {mode!r}")
    return dev.type == "cuda" and free is not None and nbytes <= AUTO_FRACTION * free


def to_device(split: Split, dev: torch.device) -> Split:
    """``split`` copied to ``dev`` (no copy where it is there already)."""
    return Split(split.x.to(dev), split.y.to(dev))


def place(split: Split, mode: Mode, dev: torch.device, world: ddp.World) -> Split:
    """The training split as ``fit`` reads it: resident on ``dev`` or as given (see module doc).
    Under torchrun the ranks agree: resident only where every rank's copy fits."""
    # a split the caller put on the GPU already needs no more memory (CPU has no limit to check)
    there = dev.type != "cpu" and split.x.device == dev and split.y.device == dev
    nbytes = 0 if there else split_bytes(split)
    free = free_bytes(dev)
    try:
        ok = wants_resident(mode, dev, nbytes, free)
    except ConfigError as e:
        ok, err = False, e
    else:
        err = None
    if world.active and mode is not False and dev.type == "cuda":
        agreed = ddp.sum_over_ranks({"ok": float(ok)}, world, dev)["ok"] == world.size
        if mode is True and not agreed and err is None:
            err = ConfigError(f"data_on_device=true: the training split ({nbytes / 2**20:.0f} "
                              f"MiB) does not fit on another rank's GPU; {_fix()}")
        ok = agreed
    if err is not None:
        raise err
    if not ok:
        return split
    try:
        return to_device(split, dev)
    except torch.OutOfMemoryError:
        if mode is True:
            raise ConfigError(f"data_on_device=true: out of memory copying the training split "
                              f"({nbytes / 2**20:.0f} MiB) to {dev}; {_fix()}") from None
        return split  # auto: the host path, as if it had not fitted


def epoch_order(perm: torch.Tensor, train: Split) -> torch.Tensor:
    """The epoch's permutation (drawn on the host) where ``train`` lives, copied once per epoch,
    so that every batch indexes the split on its own device."""
    return perm.to(train.x.device, non_blocking=False)

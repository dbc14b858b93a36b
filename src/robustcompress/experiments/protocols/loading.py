"""One way to load a checkpoint and the dataset it was trained on, with the shape check."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from robustcompress.errors import UserInputError


@dataclass
class Loaded:
    """A checkpoint's model on ``device``, its dataset (or None), the dataset info it records and
    the checkpoint's JSON record."""

    model: Any
    data: Any
    info: Any
    record: dict
    device: Any


def checkpoint_info(path: Union[str, Path]):
    """(DatasetInfo recorded in the checkpoint, its JSON record); reads no weights."""
    from robustcompress.data.info import DatasetInfo
    from robustcompress.training.checkpoint import read_checkpoint_meta

    record = read_checkpoint_meta(path)
    return DatasetInfo.from_dict(record["spec"]["info"]), record


def check_same_input(expected, found, what: str, fix: str) -> None:
    """Refuse when ``found`` (a DatasetInfo) has another input shape or class count."""
    if tuple(found.shape) != tuple(expected.shape) or found.num_classes != expected.num_classes:
        raise UserInputError(
            f"{what} takes {expected.name} inputs of shape {tuple(expected.shape)} with "
            f"{expected.num_classes} classes, but {found.name} has shape {tuple(found.shape)} and "
            f"{found.num_classes} classes; {fix}")


def load_checkpoint_data(path: Union[str, Path], *, data_dir: Optional[str] = None,
                         train_limit: Optional[int] = None, test_limit: Optional[int] = None,
                         device: Any = "auto", with_data: bool = True) -> Loaded:
    """Load ``path`` and (``with_data``) the dataset it records, checked to match its input shape
    and classes before the weights are read. Limits of 0/None load the whole split."""
    from robustcompress.data import load_dataset
    from robustcompress.device import resolve_device
    from robustcompress.training import load_checkpoint

    dev = resolve_device(device) if isinstance(device, str) else device
    info, record = checkpoint_info(path)
    data = None
    if with_data:
        kw = {k: v for k, v in (("train_limit", train_limit), ("test_limit", test_limit)) if v}
        data = load_dataset(info.name, root=data_dir, **kw)
        check_same_input(info, data.info, "the checkpoint's model",
                         "point --data-dir at the dataset it was trained on")
    return Loaded(load_checkpoint(path, device=dev), data, info, record, dev)


def load_surrogate(path: Union[str, Path], target_info, device):
    """A surrogate model (transfer attacks) that takes the same inputs as the target."""
    from robustcompress.training import load_checkpoint

    info, _ = checkpoint_info(path)
    check_same_input(info, target_info, f"the surrogate {path}",
                     "use a surrogate trained on the same data")
    return load_checkpoint(path, device=device)


def eval_points(data, limit: Optional[int], device, split: str = "test"):
    """(x, y) on ``device``: ``limit`` class-stratified points of ``split`` (None/0: all)."""
    part = getattr(data, split).sample(limit or None)
    return part.x.to(device), part.y.to(device).long()

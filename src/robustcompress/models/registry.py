"""Model registry: build any architecture by name for a dataset's declared input space.

A builder is registered with :func:`register_model` and called as
``builder(info: DatasetInfo, **kwargs) -> nn.Module``; it must adapt to ``info.shape`` (channels,
size or length) and ``info.num_classes`` and put a :class:`Normalize` with ``info.mean/std`` first,
so the model takes inputs in ``info.bounds`` (the attack space).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from robustcompress.data.info import DatasetInfo
from robustcompress.errors import UserInputError

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_DOCS: dict[str, str] = {}


def register_model(name: str, doc: str = ""):
    """Decorator: register ``fn(info, **kwargs) -> nn.Module`` under ``name``."""

    def deco(fn):
        if name in _MODELS:
            raise RuntimeError(f"model {name!r} registered twice")
        _MODELS[name] = fn
        _DOCS[name] = doc or ((fn.__doc__ or "").strip().splitlines() or [""])[0]
        return fn

    return deco


def list_models() -> dict[str, str]:
    """Registered names and one-line descriptions."""
    _ensure_loaded()
    return dict(sorted(_DOCS.items()))


def build_model(name: str, info: DatasetInfo, **kwargs) -> nn.Module:
    """Build model ``name`` for dataset ``info``; unknown names list the choices."""
    _ensure_loaded()
    if name not in _MODELS:
        raise UserInputError(
            f"unknown model {name!r}; choose one of: {', '.join(sorted(_MODELS))} "
            "(see `robustcompress models`)"
        )
    model = _MODELS[name](info, **kwargs)
    # Recorded in checkpoints so that a model can be rebuilt before its weights are loaded.
    model.robustcompress_spec = {"model": name, "model_kwargs": dict(kwargs), "info": info.to_dict()}
    return model


def _ensure_loaded() -> None:
    # Importing the package registers every architecture module.
    import robustcompress.models  # noqa: F401


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, the first layer of every zoo model.

    Keeping normalisation inside the model means attacks, bounds and eps live in input units
    ([0, 1] images, [-1, 1] audio), never in normalised units (the ANP-VS CIFAR pitfall).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        mean_t = torch.as_tensor(list(mean), dtype=torch.float32)
        std_t = torch.as_tensor(list(std), dtype=torch.float32)
        self.register_buffer("mean", mean_t, persistent=False)
        self.register_buffer("std", std_t, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)

"""How a layer declares randomness and non-differentiability to the evaluator.

The evaluation engine never guesses from names: it walks ``model.modules()`` and reads three
attributes that every layer of :mod:`robustcompress.nn` sets (user layers may set them too):

``stochastic: bool``
    The module draws fresh randomness in ``forward`` *now* (independent of ``.training``, because
    randomised defences such as SAP and the Tucker sketch stay random at test time). Such a module
    also has ``generator: torch.Generator | None``; when ``None`` it draws from the global RNG of
    its device.
``non_differentiable: bool``
    The forward contains an op whose true derivative is zero or undefined almost everywhere
    (sign, round, quantisers, hard masks, bit-depth reduction, median filter). Such a module has
    ``surrogate: str`` naming the backward used (see :mod:`robustcompress.nn.ste`); training sets
    a straight-through default, :func:`straight_through` switches it for BPDA attacks.
``granularity: str`` (optional)
    ``"batch"`` (one draw per forward shared by the batch) or ``"sample"`` (independent per sample).

The context managers below change these attributes for the duration of a ``with`` block and
restore every module's previous value afterwards, even on error. There is no global state.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from torch import nn

from robustcompress.nn.ste import check_surrogate


def is_stochastic(model: nn.Module) -> bool:
    """True if any sub-module currently draws randomness in ``forward``."""
    return any(bool(getattr(m, "stochastic", False)) for m in model.modules())


def is_non_differentiable(model: nn.Module) -> bool:
    """True if any sub-module has a non-differentiable forward op (sign, round, median, ...)."""
    return any(bool(getattr(m, "non_differentiable", False)) for m in model.modules())


@dataclass(frozen=True)
class ModelProperties:
    """What a (defended) model declares to the evaluator."""

    stochastic: bool
    non_differentiable: bool
    stochastic_modules: tuple[str, ...]
    non_differentiable_modules: tuple[str, ...]


def model_properties(model: nn.Module) -> ModelProperties:
    sto = tuple(n for n, m in model.named_modules() if getattr(m, "stochastic", False))
    nd = tuple(n for n, m in model.named_modules() if getattr(m, "non_differentiable", False))
    return ModelProperties(bool(sto), bool(nd), sto, nd)


@contextlib.contextmanager
def _set_attr(model: nn.Module, attr: str, value, where) -> Iterator[nn.Module]:
    saved = []
    try:
        for m in model.modules():
            if where(m):
                saved.append((m, getattr(m, attr)))
                setattr(m, attr, value)
        yield model
    finally:
        for m, old in reversed(saved):
            setattr(m, attr, old)


def use_generator(model: nn.Module, generator: Optional[torch.Generator]):
    """Make every stochastic module draw from ``generator`` inside the ``with`` block.

    Modules that are declared stochastic-capable have a ``generator`` attribute even while
    ``stochastic`` is False, so the generator is set on all of them.
    """
    return _set_attr(model, "generator", generator, lambda m: hasattr(m, "stochastic"))


def freeze_noise(model: nn.Module):
    """Switch every stochastic module to its deterministic forward inside the ``with`` block.

    For debugging and for the "omniscient attacker" of the tensorization paper (theta = 1).
    """
    return _set_attr(model, "stochastic", False, lambda m: getattr(m, "stochastic", False))


def straight_through(model: nn.Module, surrogate: str = "identity"):
    """BPDA: every non-differentiable module uses ``surrogate`` as its backward in the block.

    The forward stays exact. ``surrogate`` is one of :data:`robustcompress.nn.ste.SURROGATES`.
    """
    check_surrogate(surrogate)
    return _set_attr(
        model, "surrogate", surrogate, lambda m: getattr(m, "non_differentiable", False)
    )

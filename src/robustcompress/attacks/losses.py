"""Attacker losses: per sample, oriented so that the attacker maximises them.

Losses are *per sample* and summed (never averaged) before differentiation, so the gradient of one
sample does not depend on the batch size.
"""

from __future__ import annotations

from typing import Callable, Union

import torch
import torch.nn.functional as F

from robustcompress.errors import UserInputError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy."""
    return F.cross_entropy(logits, y, reduction="none")


def mask_label(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A copy of ``logits`` with each sample's class ``y`` set to ``-inf`` (the other classes only)."""
    return logits.scatter(1, y.view(-1, 1), float("-inf"))


def _top_other(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Largest logit among the classes other than ``y`` (per sample)."""
    return mask_label(logits, y).amax(dim=1)


def cw_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini & Wagner's margin, oriented for the attacker: ``max_{i != y} z_i - z_y``.

    Positive exactly when the input is misclassified. Unclamped (no confidence kappa).
    """
    return _top_other(logits, y) - logits.gather(1, y.view(-1, 1)).squeeze(1)


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of Logits Ratio (Croce & Hein, ICML 2020, eq. 6), oriented for the attacker.

    ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)`` with ``z_pi`` the logits sorted in decreasing
    order; invariant to shifting and rescaling the logits. Needs at least 3 classes.
    """
    if logits.shape[1] < 3:
        raise UserInputError("the DLR loss needs at least 3 classes; use loss='ce' or 'cw'")
    z = logits.sort(dim=1, descending=True).values
    return cw_loss(logits, y) / (z[:, 0] - z[:, 2] + 1e-12)


def dlr_targeted_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR of APGD-T (Croce & Hein 2020, eq. 7): ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4)/2)``.

    Maximised by the attacker; needs at least 4 classes.
    """
    if logits.shape[1] < 4:
        raise UserInputError("the targeted DLR loss needs at least 4 classes; use loss='ce'")
    z = logits.sort(dim=1, descending=True).values
    zy = logits.gather(1, y.view(-1, 1)).squeeze(1)
    zt = logits.gather(1, target.view(-1, 1)).squeeze(1)
    return -(zy - zt) / (z[:, 0] - 0.5 * (z[:, 2] + z[:, 3]) + 1e-12)


LOSSES: dict[str, LossFn] = {"ce": ce_loss, "dlr": dlr_loss, "cw": cw_loss}


def loss_label(loss: Union[str, LossFn]) -> str:
    """How an attack's ``params`` record its loss: the name, or ``"custom"`` for a callable."""
    return loss if isinstance(loss, str) else "custom"


def resolve_loss(loss: Union[str, LossFn]) -> LossFn:
    """A loss name (``"ce"``, ``"dlr"``, ``"cw"``) or a callable ``loss(logits, y) -> [B]``."""
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise UserInputError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)} or pass a callable")
    return LOSSES[loss]


__all__ = [
    "LOSSES", "LossFn", "ce_loss", "cw_loss", "dlr_loss", "dlr_targeted_loss", "loss_label",
    "mask_label", "resolve_loss",
]

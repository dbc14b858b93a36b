"""The objective protocol of :func:`robustcompress.training.fit`, and the default objective.

An objective is any callable ``objective(model, x, y) -> Tensor | dict[str, Tensor]``:

* a scalar tensor: one optimizer over every trainable parameter steps on its gradient;
* a dict of scalar losses: the objective also defines ``param_groups(model) -> {name:
  {"params": [...], "lr": float | None, "optimizer": "adam" | "sgd" | None}}`` and ``fit`` keeps
  ONE optimizer per group, each stepping on the gradient of the loss of the same name (ANP-VS
  trains its masks and its weights this way). Loss entries without a group are only logged.

Optional ``train_mode(model)`` sets the module modes at the start of each epoch (default
``model.train()``), e.g. to keep BatchNorm statistics frozen while fine-tuning masks.
"""

from __future__ import annotations

from typing import Protocol, Union, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

Loss = Union[torch.Tensor, dict[str, torch.Tensor]]


@runtime_checkable
class Objective(Protocol):
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Loss: ...


class CrossEntropy:
    """Mean cross-entropy of ``model(x)`` against ``y`` (the default objective)."""

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y)

    def __repr__(self) -> str:
        return "CrossEntropy()"

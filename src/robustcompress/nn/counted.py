"""Parameter-free conv/linear "op modules": a functional conv/linear with the weight given at call
time, wrapped in a module so that hook-based MAC counters see the convs a custom layer *really*
executes (a Tucker layer runs three convs whose sizes change with every sketch draw).

They are plain ``nn.Module`` s, deliberately *not* subclasses of ``nn.Conv*``/``nn.Linear``:
code that walks a model's conv/linear layers and reads ``.weight`` (pruning, spectral norms,
feature selection) never meets a weightless layer. Instead they declare their cost:
``macs_per_output`` is set from the weight just before each call, and
:func:`robustcompress.metrics.compression.macs_per_layer` counts every module that has it
(``output elements x macs_per_output``). They hold no parameters and no state worth saving.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class ConvOp(nn.Module):
    """``F.conv1d`` / ``F.conv2d`` (chosen by ``ndim``) as a hookable, MAC-declaring module."""

    _FNS = {1: F.conv1d, 2: F.conv2d}

    def __init__(self, ndim: int) -> None:
        super().__init__()
        self.ndim = ndim
        self.macs_per_output = 0

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                stride=1, padding=0, dilation=1, groups: int = 1) -> torch.Tensor:
        # each output element of a (grouped) conv costs in_channels/groups x prod(kernel) MACs
        self.macs_per_output = int(weight[0].numel())
        return self._FNS[self.ndim](x, weight, bias, stride, padding, dilation, groups)

    def extra_repr(self) -> str:
        return f"op, {self.ndim}-D"


class LinearOp(nn.Module):
    """``F.linear`` as a hookable, MAC-declaring module."""

    def __init__(self) -> None:
        super().__init__()
        self.macs_per_output = 0

    def forward(self, x: torch.Tensor, weight: torch.Tensor,
                bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        self.macs_per_output = int(weight.shape[-1])
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return "op"

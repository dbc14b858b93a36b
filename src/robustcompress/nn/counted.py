"""Parameter-free conv/linear "op modules" that run a functional conv/linear with a weight given at
call time, so that MAC counters based on forward hooks see the convs a custom layer *really*
executes.

:func:`robustcompress.metrics.compression.count_macs` hooks ``nn.Conv1d/nn.Conv2d/nn.Linear``
modules and computes ``output elements x in_channels/groups x prod(kernel_size)`` (or
``x in_features``). A Tucker layer runs three convs whose sizes change with every sketch draw; it
calls ``self.op(x, weight, ...)`` for each of them, and the op sets ``in_channels``,
``kernel_size`` (``in_features``) from the weight just before running, so every hook reads the
sizes of the conv that actually ran. The ops hold no parameters and no state worth saving.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class _ConvOp:
    _fn = None
    _nd = 0

    def _setup(self) -> None:
        nn.Module.__init__(self)
        self.in_channels = self.out_channels = 0
        self.kernel_size = (1,) * self._nd
        self.stride = self.dilation = (1,) * self._nd
        self.padding = (0,) * self._nd
        self.groups = 1
        self.padding_mode = "zeros"
        self.transposed = False
        self.output_padding = (0,) * self._nd
        self.weight = None
        self.bias = None

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                stride=1, padding=0, dilation=1, groups: int = 1) -> torch.Tensor:
        self.out_channels = int(weight.shape[0])
        self.in_channels = int(weight.shape[1]) * groups
        self.groups = groups
        self.kernel_size = tuple(int(k) for k in weight.shape[2:])
        return type(self)._fn(x, weight, bias, stride, padding, dilation, groups)

    def extra_repr(self) -> str:
        return "op"


class ConvOp1d(_ConvOp, nn.Conv1d):
    """``F.conv1d`` as a hookable module (see the module docstring)."""

    _fn = staticmethod(F.conv1d)
    _nd = 1

    def __init__(self) -> None:
        self._setup()


class ConvOp2d(_ConvOp, nn.Conv2d):
    """``F.conv2d`` as a hookable module (see the module docstring)."""

    _fn = staticmethod(F.conv2d)
    _nd = 2

    def __init__(self) -> None:
        self._setup()


class LinearOp(nn.Linear):
    """``F.linear`` as a hookable module (see the module docstring)."""

    def __init__(self) -> None:
        nn.Module.__init__(self)
        self.in_features = self.out_features = 0
        self.weight = None
        self.bias = None

    def forward(self, x: torch.Tensor, weight: torch.Tensor,
                bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        self.out_features, self.in_features = int(weight.shape[-2]), int(weight.shape[-1])
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return "op"


CONV_OPS = {1: ConvOp1d, 2: ConvOp2d}

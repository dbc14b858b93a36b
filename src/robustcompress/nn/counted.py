"""Parameter-free conv/linear "op modules": a functional conv/linear with the weight given at call
time, wrapped in a module so that hook-based MAC counters see the convs a custom layer *really*
executes (a Tucker layer runs three convs whose sizes change with every sketch draw).

They are plain ``nn.Module`` s, deliberately *not* subclasses of ``nn.Conv*``/``nn.Linear``:
code that walks a model's conv/linear layers and reads ``.weight`` (pruning, spectral norms,
feature selection) never meets a weightless layer. Instead they declare their cost:
``macs_per_output`` is set from the weight just before each call, and
:func:`robustcompress.metrics.compression.macs_per_layer` counts every module that has it
(``output elements x macs_per_output``). They hold no parameters and no state worth saving.

:func:`batched_conv` / :func:`batched_linear` run per-sample weights as one grouped conv (used by
the Tucker and XNOR layers).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn


#: The functional conv of each spatial rank.
CONV_FNS = {1: F.conv1d, 2: F.conv2d}


def pad_arg(padding, ndim: int):
    """``padding`` as the functional convs take it: a string, or a tuple of ``ndim`` ints."""
    return padding if isinstance(padding, str) else tuple(padding) if isinstance(
        padding, (list, tuple)) else (padding,) * ndim


def batched_conv(x: torch.Tensor, weight: torch.Tensor, *, stride=1, padding=0, dilation=1,
                 ndim: int = 2, conv: Optional[Callable] = None) -> torch.Tensor:
    """Per-sample kernels: ``out[b] = conv(x[b], weight[b])`` as one grouped conv (groups=B).

    ``x`` is ``(B, C, ...)``, ``weight`` is ``(B, O, C, k...)``.
    """
    conv = conv or CONV_FNS[ndim]
    b, c = x.shape[:2]
    o = weight.shape[1]
    out = conv(x.reshape(1, b * c, *x.shape[2:]), weight.reshape(b * o, *weight.shape[2:]),
               None, stride, pad_arg(padding, ndim), dilation, b)
    return out.reshape(b, o, *out.shape[2:])


def batched_linear(x: torch.Tensor, weight: torch.Tensor, *, conv: Optional[Callable] = None
                   ) -> torch.Tensor:
    """Per-sample matrices: ``out[b] = x[b] @ weight[b].T`` for ``x (B, ..., I)``, ``weight
    (B, O, I)``, as a grouped 1x1 conv (so hook-based MAC counters see it)."""
    b, i = x.shape[0], x.shape[-1]
    h = x.reshape(b, -1, i).transpose(1, 2)
    out = batched_conv(h, weight.unsqueeze(-1), ndim=1, conv=conv)
    return out.transpose(1, 2).reshape(*x.shape[:-1], weight.shape[1])


class ConvOp(nn.Module):
    """``F.conv1d`` / ``F.conv2d`` (chosen by ``ndim``) as a hookable, MAC-declaring module."""

    _FNS = CONV_FNS

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

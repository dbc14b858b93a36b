"""XNOR-Net binary convolution and linear layers (Rastegari et al., ECCV 2016), as used by the binary
variant of Defensive Tensorization (Bulat et al. 2021, eq. 5)::

    I * W  ~=  (sign(I) (*) sign(W)) . K alpha

* ``alpha_o = mean |W_o|`` per output filter (the analytic optimum of ||W - alpha B||, Sec. 3.1).
* ``K = A (*) k`` with ``A = mean_c |I|`` (channel mean of the input magnitude) and ``k`` a
  ``k x k`` (or ``k``) box filter of value ``1/k^d``, run with the conv's stride, padding and
  dilation (Sec. 3.2). For a linear layer ``K = mean |I|`` per row (``beta`` of the paper).
* ``sign(0) = +1`` (two levels). Padding is applied after ``sign``, so padded positions are 0.

Backward: the forward is exact; gradients use surrogates from :mod:`robustcompress.nn.ste`.
The input ``sign`` uses the layer's ``surrogate`` attribute (training default ``"clipped"``: the
STE ``1_{|x| <= 1}`` of XNOR-Net; attacks switch it with
:func:`robustcompress.nn.protocol.straight_through` to ``"identity"``, ``"tanh"`` or
``"tanh0.75"`` as in the paper's Table 4). The weight ``sign`` always uses ``"clipped"``; with
``alpha`` computed by autograd this gives XNOR-Net's ``dC/dW = dC/dW_b (1/n + alpha 1_{|W|<=1})``
up to the sign-correlation term. Weight surrogates do not affect input gradients, so attacks are
unaffected by that choice.

Block order: XNOR-Net runs BatchNorm -> sign -> binary conv -> ReLU -> pool. Our zoo models feed
convs with ReLU outputs (all >= 0, whose sign is constantly +1), so the binary modules carry an
``input_norm`` (BatchNorm over the input channels, on by default) applied before ``sign``; it is
learnt during fine-tuning. Deviation from a bare conv replacement, faithful to XNOR-Net's block.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from robustcompress.errors import UserInputError
from robustcompress.nn.counted import CONV_FNS, ConvOp, LinearOp, batched_conv, batched_linear
from robustcompress.nn.ste import check_surrogate, sign


def binarize_weight(weight: torch.Tensor, *, batch_dims: int = 0) -> torch.Tensor:
    """``alpha * sign(W)`` with ``alpha`` = mean |W| per output filter (dim ``batch_dims``)."""
    dims = tuple(range(batch_dims + 1, weight.dim()))
    alpha = weight.abs().mean(dim=dims, keepdim=True)
    return alpha * sign(weight, "clipped")


def input_scale(x: torch.Tensor, kernel_size, *, stride=1, padding=0, dilation=1, ndim: int = 2,
                conv: Optional[Callable] = None) -> torch.Tensor:
    """XNOR-Net's ``K``: channel-mean ``|x|`` filtered by a ``1/k^d`` box, shape ``(B, 1, ...)``."""
    ks = (kernel_size,) * ndim if isinstance(kernel_size, int) else tuple(kernel_size)
    a = x.abs().mean(dim=1, keepdim=True)
    box = torch.full((1, 1, *ks), 1.0 / math.prod(ks), dtype=x.dtype, device=x.device)
    return (conv or CONV_FNS[ndim])(a, box, None, stride, padding, dilation)


def xnor_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
              stride=1, padding=0, dilation=1, ndim: int = 2, surrogate: str = "clipped",
              per_sample: bool = False, conv: Optional[Callable] = None) -> torch.Tensor:
    """Binary conv ``(sign(x) (*) alpha sign(W)) . K + b`` (eq. 5).

    ``weight`` is ``(O, I, k...)``, or ``(B, O, I, k...)`` with ``per_sample=True`` (one kernel per
    sample, run as a grouped conv). ``conv`` replaces ``F.conv{ndim}d`` (hookable op modules).
    """
    if ndim not in CONV_FNS:
        raise UserInputError(f"xnor_conv supports ndim 1 or 2, got {ndim}")
    check_surrogate(surrogate)
    wb = binarize_weight(weight, batch_dims=1 if per_sample else 0)
    xb = sign(x, surrogate)
    if per_sample:
        out = batched_conv(xb, wb, stride=stride, padding=padding, dilation=dilation, ndim=ndim,
                           conv=conv)
    else:
        out = (conv or CONV_FNS[ndim])(xb, wb, None, stride, padding, dilation)
    out = out * input_scale(x, weight.shape[-ndim:], stride=stride, padding=padding,
                            dilation=dilation, ndim=ndim, conv=conv)
    if bias is not None:
        out = out + bias.view(1, -1, *([1] * ndim))
    return out


def xnor_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
                surrogate: str = "clipped", per_sample: bool = False,
                linear: Optional[Callable] = None, conv: Optional[Callable] = None
                ) -> torch.Tensor:
    """Binary linear ``(sign(x) . alpha sign(W)^T) * mean|x| + b``; ``x`` is ``(B, ..., I)``.

    ``weight`` is ``(O, I)`` or, with ``per_sample=True``, ``(B, O, I)`` (grouped 1x1 ``conv``).
    """
    check_surrogate(surrogate)
    wb = binarize_weight(weight, batch_dims=1 if per_sample else 0)
    xb = sign(x, surrogate)
    out = batched_linear(xb, wb, conv=conv) if per_sample else (linear or F.linear)(xb, wb)
    out = out * x.abs().mean(dim=-1, keepdim=True)
    return out + bias if bias is not None else out


_NORM = {0: nn.BatchNorm1d, 1: nn.BatchNorm1d, 2: nn.BatchNorm2d}


def input_norm(channels: int, ndim: int) -> nn.Module:
    """The BatchNorm XNOR-Net puts before ``sign`` (see the module docstring)."""
    return _NORM[ndim](channels)


class _XNORBase(nn.Module):
    """Dense latent weight, binary forward; declares ``non_differentiable`` and ``surrogate``."""

    non_differentiable = True
    stochastic = False
    ndim = 0

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], *, norm: bool):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        self.input_norm = input_norm(weight.shape[1], self.ndim) if norm else None
        self.surrogate = "clipped"

    def _normed(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_norm is None:
            return x
        if self.ndim == 0 and x.dim() > 2:  # BatchNorm1d over the features of (B, ..., I)
            return self.input_norm(x.reshape(-1, x.shape[-1])).reshape(x.shape)
        return self.input_norm(x)

    def export_tensors(self) -> dict[str, torch.Tensor]:
        """1 bit per weight (packed to uint8) plus one float scale per output filter."""
        w = self.weight.detach()
        bits = (w >= 0).flatten()
        pad = (-bits.numel()) % 8
        bits = torch.cat([bits, bits.new_zeros(pad)]).view(-1, 8).to(torch.uint8)
        packed = (bits << torch.arange(8, dtype=torch.uint8)).sum(1).to(torch.uint8)
        out = {"sign_bits": packed, "alpha": w.abs().flatten(1).mean(1)}
        if self.bias is not None:
            out["bias"] = self.bias.detach()
        return out


class _XNORConvNd(_XNORBase):
    def __init__(self, conv: nn.Module, *, norm: bool = True):
        if conv.groups != 1 or getattr(conv, "padding_mode", "zeros") != "zeros":
            raise UserInputError("XNOR conversion needs groups=1 and padding_mode='zeros'")
        super().__init__(conv.weight, conv.bias, norm=norm)
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.op = ConvOp(self.ndim)  # runs the convs, visible to MAC-counting hooks
        self.to(device=conv.weight.device)

    @classmethod
    def from_conv(cls, conv: nn.Module, *, norm: bool = True):
        """Binary layer with ``conv``'s weights as its latent real weights."""
        return cls(conv, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return xnor_conv(self._normed(x), self.weight, self.bias, stride=self.stride,
                         padding=self.padding, dilation=self.dilation, ndim=self.ndim,
                         surrogate=self.surrogate, conv=self.op)


class XNORConv1d(_XNORConvNd):
    """XNOR-Net binary ``Conv1d`` (see the module docstring)."""

    ndim = 1


class XNORConv2d(_XNORConvNd):
    """XNOR-Net binary ``Conv2d`` (see the module docstring)."""

    ndim = 2


class XNORLinear(_XNORBase):
    """XNOR-Net binary ``Linear`` (see the module docstring)."""

    ndim = 0

    def __init__(self, linear: nn.Linear, *, norm: bool = True):
        super().__init__(linear.weight, linear.bias, norm=norm)
        self.op = LinearOp()
        self.to(device=linear.weight.device)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, norm: bool = True):
        return cls(linear, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return xnor_linear(self._normed(x), self.weight, self.bias, surrogate=self.surrogate,
                           linear=self.op)

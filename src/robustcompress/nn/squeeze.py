"""Feature squeezers of Xu, Evans & Qi (NDSS 2018): bit-depth reduction and median smoothing.

Pure functions :func:`bit_depth` and :func:`median_filter` plus thin modules
:class:`BitDepth` and :class:`MedianFilter` that follow the BPDA protocol of
:mod:`robustcompress.nn.protocol` (``non_differentiable = True`` and a ``surrogate``).

Gradients. ``surrogate = "exact"`` (the default) is what a naive white-box attacker sees: the true
derivative, i.e. zero for bit-depth reduction (round) and the piecewise-linear derivative of the
median (gradient flows to the selected pixel). :func:`robustcompress.nn.straight_through`
switches every squeezer to ``"identity"`` (BPDA, Athalye et al. 2018), the adaptive attack that
breaks feature squeezing (He et al. 2017; Sharma & Chen 2018).

Median convention for even windows (the paper does not fix it): we reproduce
``scipy.ndimage.median_filter(x, size=k, mode="reflect")``, the function the authors' code
calls: the window of output pixel ``i`` covers input offsets ``-(k // 2) .. k - 1 - k // 2``
(for k = 2: the pixel and its upper/left neighbour), borders are padded by half-sample symmetric
reflection (for a 1-pixel pad this repeats the edge pixel), and for an even number of values the
*upper* median (element ``k*k // 2`` of the sorted window) is returned, not the mean of the two
middle values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustcompress.errors import UserInputError
from robustcompress.nn.ste import check_surrogate, surrogate_gradient


def bit_depth(x: torch.Tensor, bits: int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """``round(x' * (2^bits - 1)) / (2^bits - 1)`` with ``x'`` = x rescaled from [lo, hi] to [0, 1].

    Inputs outside the box are clipped first. Exact forward, zero true gradient.
    """
    if not 1 <= int(bits) <= 16:
        raise UserInputError(f"bit depth must be an integer in 1..16, got {bits}")
    levels = 2 ** int(bits) - 1
    u = ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
    return torch.round(u * levels) / levels * (hi - lo) + lo


def _symmetric_index(n: int, before: int, after: int, device) -> torch.Tensor:
    """Indices of a half-sample symmetric pad ("d c b a | a b c d | d c b a", scipy 'reflect')."""
    i = torch.arange(-before, n + after, device=device)
    period = 2 * n
    i = torch.remainder(i, period)
    return torch.where(i >= n, period - 1 - i, i)


def median_filter(x: torch.Tensor, size: int = 2) -> torch.Tensor:
    """Median over a ``size x size`` window per channel of ``x`` [B, C, H, W] (or [B, C, L] for
    1-D signals, window ``size``), same output shape; conventions in the module docstring.

    Differentiable as computed (gradient goes to the selected element of each window).
    """
    size = int(size)
    if size < 1:
        raise UserInputError(f"median filter size must be >= 1, got {size}")
    if size == 1:
        return x
    before, after = size // 2, size - 1 - size // 2
    if x.dim() == 3:  # 1-D signal: treat as an image of height 1 with a 1 x size window
        return _median_1d(x, size, before, after)
    if x.dim() != 4:
        raise UserInputError(f"median_filter expects [B, C, H, W] or [B, C, L], got {tuple(x.shape)}")
    b, c, h, w = x.shape
    xp = x.index_select(2, _symmetric_index(h, before, after, x.device))
    xp = xp.index_select(3, _symmetric_index(w, before, after, x.device))
    patches = F.unfold(xp.reshape(b * c, 1, h + size - 1, w + size - 1), size)  # [BC, k*k, HW]
    med = patches.sort(dim=1).values[:, (size * size) // 2, :]
    return med.reshape(b, c, h, w)


def _median_1d(x: torch.Tensor, size: int, before: int, after: int) -> torch.Tensor:
    n = x.shape[-1]
    xp = x.index_select(2, _symmetric_index(n, before, after, x.device))
    win = xp.unfold(2, size, 1)  # [B, C, L, size]
    return win.sort(dim=-1).values[..., size // 2]


class BitDepth(nn.Module):
    """Bit-depth squeezer (module form of :func:`bit_depth`), BPDA-switchable."""

    non_differentiable = True

    def __init__(self, bits: int, bounds: tuple[float, float] = (0.0, 1.0),
                 surrogate: str = "exact"):
        super().__init__()
        check_surrogate(surrogate)
        self.bits, self.bounds, self.surrogate = int(bits), tuple(bounds), surrogate
        bit_depth(torch.zeros(1), self.bits)  # validates bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return surrogate_gradient(bit_depth(x, self.bits, *self.bounds), x, self.surrogate,
                                  *self.bounds)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, surrogate={self.surrogate!r}"


class MedianFilter(nn.Module):
    """Median squeezer (module form of :func:`median_filter`), BPDA-switchable.

    ``surrogate="exact"`` uses the median's own (piecewise-linear) derivative, any other value
    the named surrogate of :mod:`robustcompress.nn.ste` (``"identity"`` is BPDA).
    """

    non_differentiable = True

    def __init__(self, size: int = 2, surrogate: str = "exact"):
        super().__init__()
        check_surrogate(surrogate)
        self.size, self.surrogate = int(size), surrogate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.surrogate == "exact":
            return median_filter(x, self.size)
        with torch.no_grad():
            value = median_filter(x, self.size)
        return surrogate_gradient(value, x, self.surrogate)

    def extra_repr(self) -> str:
        return f"size={self.size}, surrogate={self.surrogate!r}"

"""Stochastic Activation Pruning (Dhillon et al., "Stochastic Activation Pruning for Robust
Adversarial Defense", ICLR 2018): functional core and a thin module.

The operator, per sample (one row of the batch, flattened to ``D`` values ``h_1..h_D``):

1. ``p_j = |h_j| / sum_k |h_k|`` (the paper's |h|; the original MXNet operator divides by the
   plain sum, which is the same after a ReLU);
2. ``r = int(frac * D)`` indices are drawn **with replacement** from ``Categorical(p)``
   ("SAP-100" is ``frac = 1.0``, the original default);
3. every index drawn at least once is kept and scaled by ``1 / (1 - (1 - p_j)^r)``, the inverse
   of its keep probability; the others are set to 0. So ``E[sap(h)] = h`` exactly;
4. the mask is a constant in the backward pass: ``d out / d h = mask`` and no gradient flows
   through ``p`` or the rescale (as in the original operator; Athalye et al.'s reimplementation
   differentiates through the rescale, which we do not).

A fresh, independent draw is made for every sample on every call.

Exact sampler (``method="exact"``, the default)
-----------------------------------------------
``torch.multinomial(p, r, replacement=True)`` is exact but slow on CPU, and inverse-CDF sampling
with ``torch.searchsorted`` is no faster (a binary search per draw, cache-unfriendly; numbers in
bench/RESULTS.md). We use inverse-CDF sampling with a *cell table* instead (the "guide table"
method of Chen & Asau, 1974, vectorised over the whole batch):

* scale each row's CDF to ``[0, M]`` with ``M = CELLS_PER_ENTRY * D`` unit cells; keep only the
  upper boundaries of bins of positive width (zero activations have no bin, so runs of zeros cost
  nothing), all rows in one flat, row-major list;
* a histogram of those boundaries per (row, cell) and its cumulative sum give, for every cell,
  the index of the first boundary at or after it and the number of boundaries inside it;
* a draw is a float64 uniform on ``[0, M)``: its cell is its integer part. A draw in a cell with
  no boundary inside belongs to the bin spanning the cell (one lookup); only draws in cells that
  hold a boundary (about ``#nonzero / M`` of them) are resolved by a vectorised binary search
  over the few boundaries in their cell.

This is inverse-CDF sampling, hence exact: each draw selects bin ``j`` with probability equal to
the width of bin ``j`` in the computed CDF. The keep probability and the rescale are computed
from *those same widths*, so ``E[sap(h)] = h`` holds for the realised distribution, not only up
to rounding. The CDF is accumulated in the working precision (float32 for float32/half inputs,
float64 for float64 inputs), so each bin's probability is that of ``|h_j| / sum |h|`` up to about
one float ulp of the row mass (``~2**-23`` in float32, the precision ``torch.multinomial`` works at
too). The only deviation from the ideal sampler: an entry whose share is below that resolution may
get a zero-width bin, is then never kept, and the output loses that (negligible) mass.

``method="bernoulli"`` is a labelled approximation, never the default: every entry is kept
independently with probability ``1 - (1 - p_j)^r`` (the correct marginals and unbiased, but it
ignores the negative correlation between entries that comes from a fixed number of draws).

Numerics: all-zero rows give all-zero outputs (no NaN); ``1 - (1 - p)^r`` is computed as
``-expm1(r * log1p(-p))``, accurate for tiny ``p``; half/bfloat16 inputs are sampled in float32.
``r = max(1, int(frac * D))``: the original would draw nothing on a layer with ``frac * D < 1``;
we always draw at least once.

``torch.func``: :func:`sap` composes with ``torch.func.grad``/``vjp`` (the mask is computed from
``h.detach()``). ``method="bernoulli"`` also runs under ``torch.func.vmap`` (``randomness=
"different"`` gives independent draws per vmapped sample, ``"same"`` one shared draw). The exact
sampler does not run under ``vmap``: it uses in-place ``scatter_add_`` into a per-row table and
compacts the draws that need a binary search (``nonzero``, a data-dependent shape), which vmap
cannot batch. It needs no vmap: every row of the first dimension already gets an independent draw
(``granularity="sample"``), so EOT stacks copies of the batch instead.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from robustcompress.errors import UserInputError

METHODS = ("exact", "bernoulli")
CELLS_PER_ENTRY = 2


def _check(frac: float, method: str) -> None:
    if not (isinstance(frac, (int, float)) and math.isfinite(frac) and frac > 0):
        raise UserInputError(
            f"SAP frac={frac!r} must be a positive number (draws per activation; 1.0 is SAP-100)")
    if method not in METHODS:
        raise UserInputError(f"unknown SAP method {method!r}; choose one of {', '.join(METHODS)}")


def num_draws(numel: int, frac: float) -> int:
    """``r = max(1, int(frac * numel))`` draws with replacement per sample."""
    return max(1, int(frac * numel))


def keep_probability(p: torch.Tensor, r: int) -> torch.Tensor:
    """``1 - (1 - p)^r`` computed as ``-expm1(r * log1p(-p))`` (accurate for tiny ``p``)."""
    return torch.log1p(-p).mul_(r).expm1_().neg_()


def _rand(kind: str, shape, generator: Optional[torch.Generator], device, dtype=None,
          high: int = 0) -> torch.Tensor:
    """Uniforms (``kind="rand"``) or integers in ``[0, high)`` drawn on the generator's device."""
    gdev = generator.device if generator is not None else device
    if kind == "rand":
        out = torch.rand(shape, generator=generator, device=gdev, dtype=dtype)
    else:
        out = torch.randint(high, shape, generator=generator, device=gdev)
    return out.to(device)


def _search_cells(cb: torch.Tensor, x: torch.Tensor, lo: torch.Tensor, n_in: torch.Tensor
                  ) -> torch.Tensor:
    """Resolve the draws that fall in a cell containing bin boundaries.

    ``cb`` holds the upper boundaries of all positive-width bins (all rows, row-major, so sorted
    within a row); ``x`` the draws (scaled to ``[0, M)``); ``lo`` the index in ``cb`` of the first
    boundary at or after each draw's cell and ``n_in`` the number of boundaries inside the cell.
    Returns, for every draw, the index in ``cb`` of the first boundary ``> x`` (its bin).
    """
    ans = lo.clone()
    need = n_in.nonzero().squeeze(1)  # draws in a cell that holds a boundary
    if need.numel() == 0:
        return ans
    xv = x.index_select(0, need)
    left = lo.index_select(0, need)
    right = left + n_in.index_select(0, need).long()
    slot = need
    # Binary search for the first boundary > x in cb[left:right] (right: the next cell's first
    # boundary is > x). Finished draws are written back and dropped once they are the majority.
    while True:
        mid = (left + right) >> 1
        go = cb.index_select(0, mid).to(xv.dtype) <= xv
        active = left < right
        left = torch.where(active & go, mid + 1, left)
        right = torch.where(active & ~go, mid, right)
        done = left >= right
        n_done = int(done.sum())
        if n_done == slot.numel():
            return ans.index_copy_(0, slot, left)
        if 2 * n_done >= slot.numel():
            d = done.nonzero().squeeze(1)
            ans.index_copy_(0, slot.index_select(0, d), left.index_select(0, d))
            keep = (~done).nonzero().squeeze(1)
            slot, left, right, xv = (t.index_select(0, keep) for t in (slot, left, right, xv))


def _exact_drawn(a: torch.Tensor, r: int, generator: Optional[torch.Generator]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact "drawn at least once in ``r`` draws" indicators (B, D) for rows ``a >= 0``.

    Returns ``(drawn, p)`` with ``p`` the realised per-draw probability of each entry (the bin
    widths of the computed CDF). See the module docstring for the algorithm. Only bins of
    positive width enter the cell table, so runs of zero activations cost nothing.
    """
    B, D = a.shape
    M = CELLS_PER_ENTRY * D
    c = a.cumsum(1)
    total = c[:, -1:]
    c.mul_(torch.where(total > 0, M / total, torch.zeros_like(total)))
    c.clamp_(max=M)
    c[:, -1] = M  # the last boundary closes the row exactly (all-zero rows: one bin of width M)
    width = c.clone()
    width[:, 1:] -= c[:, :-1]
    bins = (width > 0).view(-1).nonzero().squeeze(1)  # flat indices of positive-width bins
    cb = c.view(-1).index_select(0, bins)
    stride = M + 1  # cells 0..M-1 take draws; cell M holds each row's closing boundary
    cell = bins.div(D, rounding_mode="floor").mul_(stride).add_(cb.long().clamp_(max=M))
    n_in = torch.zeros(B * stride, dtype=torch.int32, device=a.device)
    n_in.scatter_add_(0, cell, torch.ones(1, dtype=torch.int32, device=a.device).expand(cell.numel()))
    before = n_in.cumsum(0, dtype=torch.int64).sub_(n_in)  # boundaries (all rows) before each cell
    # draws: uniform on [0, M) per row, in float64 so cells and offsets are exact to 2**-53 * M
    x = _rand("rand", (B, r), generator, a.device, dtype=torch.float64).mul_(M)
    gcell = x.long().clamp_(max=M - 1).add_(
        torch.arange(0, B * stride, stride, device=a.device).unsqueeze(1)).view(-1)
    pos = _search_cells(cb, x.view(-1), before.index_select(0, gcell), n_in.index_select(0, gcell))
    drawn = torch.zeros(B * D, dtype=torch.bool, device=a.device)
    drawn.index_fill_(0, bins.index_select(0, pos), True)
    return drawn.view(B, D), width.div_(M)


def sap_mask(h: torch.Tensor, frac: float = 1.0, *, generator: Optional[torch.Generator] = None,
             method: str = "exact") -> torch.Tensor:
    """The SAP multiplier for ``h`` (shape of ``h``; no gradient): ``1/keep_j`` where entry ``j``
    was drawn, else 0. One independent draw per sample (first dimension).

    Parameters
    ----------
    h : activations ``(B, ...)``; every sample is flattened to one row.
    frac : draws per activation, ``r = max(1, int(frac * D))``; 1.0 is the paper's SAP-100.
    generator : the random source (``None``: the global RNG of ``h``'s device).
    method : ``"exact"`` (multinomial draws with replacement, default) or ``"bernoulli"``
        (independent keeps with the exact marginals; an approximation, see module docstring).
    """
    _check(frac, method)
    if h.dim() < 1 or h.shape[0] == 0 or h.numel() == 0:
        return torch.ones_like(h)
    with torch.no_grad():
        B = h.shape[0]
        work = torch.float64 if h.dtype == torch.float64 else torch.float32
        a = h.detach().reshape(B, -1).abs().to(work)
        r = num_draws(a.shape[1], frac)
        if method == "exact":
            drawn, p = _exact_drawn(a, r, generator)
        else:
            total = a.sum(1, keepdim=True)
            p = a / torch.where(total > 0, total, torch.ones_like(total))
            drawn = _rand("rand", a.shape, generator, a.device, dtype=work) < keep_probability(p, r)
        keep = keep_probability(p, r)
        drawn &= keep > 0
        mask = torch.where(drawn, keep.reciprocal(), torch.zeros_like(keep))
        return mask.to(h.dtype).view_as(h)


def sap(h: torch.Tensor, frac: float = 1.0, *, generator: Optional[torch.Generator] = None,
        method: str = "exact") -> torch.Tensor:
    """Stochastic activation pruning of ``h``: ``h * sap_mask(h, ...)``.

    The backward pass multiplies the incoming gradient by the same mask (the mask is a constant),
    as the original operator does. See the module docstring for the algorithm and deviations.
    """
    return h * sap_mask(h, frac, generator=generator, method=method)


class SAP(nn.Module):
    """SAP layer: applies :func:`sap` with a fresh per-sample draw on every forward.

    It is random in train *and* eval mode (SAP is a test-time defense applied post hoc). While
    ``stochastic`` is False (e.g. inside :func:`robustcompress.nn.freeze_noise`) it returns its
    input unchanged, which is the mean of the random output.

    Attributes follow :mod:`robustcompress.nn.protocol`: ``stochastic=True``,
    ``granularity="sample"``, ``generator`` (``None``: global RNG), ``non_differentiable=False``.
    """

    non_differentiable = False
    granularity = "sample"

    def __init__(self, frac: float = 1.0, method: str = "exact",
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        _check(frac, method)
        self.frac = float(frac)
        self.method = method
        self.generator = generator
        self.stochastic = True

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not self.stochastic:
            return h
        return sap(h, self.frac, generator=self.generator, method=self.method)

    def extra_repr(self) -> str:
        return f"frac={self.frac}, method={self.method!r}"

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
with ``torch.searchsorted`` is no faster (both ~8x a LeNet-5 forward for the first layer alone,
see ``bench/sap_overhead.py``). We use inverse-CDF sampling with a *cell table* instead (the
"guide table" method of Chen & Asau, 1974, vectorised over the batch):

* scale the row's CDF to ``[0, M]`` with ``M = CELLS_PER_ENTRY * D`` unit cells;
* a uniform draw on ``[0, M)`` is a uniform integer cell ``k`` plus a uniform offset ``f``;
* a histogram of the CDF boundaries per cell (``scatter_add`` + ``cumsum``) gives, for every
  cell, the number of boundaries before it and inside it; a draw in a cell with no boundary
  inside lands in the bin spanning the cell, found by one ``gather``;
* only draws in cells that contain a boundary (a small fraction) draw their offset ``f`` and are
  resolved by a vectorised binary search over the boundaries inside their cell.

This is inverse-CDF sampling, hence exact: each draw selects bin ``j`` with probability equal to
the width of bin ``j`` in the computed CDF. The keep probability and the rescale are computed
from *those same widths*, so ``E[sap(h)] = h`` holds for the realised distribution, not only up
to rounding. The CDF is accumulated in float64 when ``M > 2**14`` (so that bins are resolved to
better than ``2**-29`` of the row's mass) and in float32 otherwise (better than ``2**-10`` of one
cell, i.e. a relative error below ``5e-4`` on a bin of average mass). The only deviation from
the ideal sampler: an entry whose share ``|h_j| / sum |h|`` is below that resolution may get a
zero-width bin, is then never kept, and the output loses that (negligible) mass.

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
_FLOAT64_ABOVE = 2 ** 14


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


def _cell_search(c: torch.Tensor, k: torch.Tensor, lo: torch.Tensor, n_in: torch.Tensor,
                 generator: Optional[torch.Generator], r: int) -> torch.Tensor:
    """Resolve the draws that fall in a cell containing CDF boundaries.

    ``c`` is the scaled CDF (B, D); ``k`` the cells of the draws (B, r); ``lo`` the number of
    boundaries before each draw's cell and ``n_in`` the number inside it. Returns the bin index
    of every draw (B, r): ``lo`` plus the number of in-cell boundaries ``<= k + f``, ``f`` a
    uniform offset drawn here only for the draws that need it.
    """
    B, D = c.shape
    ans = lo.long()
    need = n_in.reshape(-1).nonzero().squeeze(1)
    if need.numel() == 0:
        return ans
    f = _rand("rand", (need.numel(),), generator, c.device, dtype=c.dtype)
    kv = k.reshape(-1).index_select(0, need).to(c.dtype)
    left = ans.reshape(-1).index_select(0, need)
    right = left + n_in.reshape(-1).index_select(0, need)
    base = need.div(r, rounding_mode="floor").mul_(D)
    cflat = c.reshape(-1)
    slot = need
    flat_ans = ans.view(-1)
    # Binary search for the number of boundaries <= k + f among c[left:right]. Draws whose search
    # has finished are written back and dropped once they are the majority, so a few cells with
    # many boundaries (runs of zero activations share one boundary value) cost little.
    while slot.numel():
        mid = (left + right) >> 1
        go = (cflat.take(base + mid.clamp(max=D - 1)) - kv) <= f
        active = left < right
        left = torch.where(active & go, mid + 1, left)
        right = torch.where(active & ~go, mid, right)
        done = left >= right
        n_done = int(done.sum())
        if n_done == slot.numel():
            flat_ans.index_copy_(0, slot, left)
            break
        if 2 * n_done >= slot.numel():
            d = done.nonzero().squeeze(1)
            flat_ans.index_copy_(0, slot.index_select(0, d), left.index_select(0, d))
            keep = (~done).nonzero().squeeze(1)
            slot, left, right, kv, f, base = (t.index_select(0, keep)
                                              for t in (slot, left, right, kv, f, base))
    return ans


def _exact_drawn(a: torch.Tensor, r: int, generator: Optional[torch.Generator]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact "drawn at least once in ``r`` draws" indicators (B, D) for rows ``a >= 0``.

    Returns ``(drawn, p)`` with ``p`` the realised per-draw probability of each entry (the bin
    widths of the computed CDF). See the module docstring for the algorithm.
    """
    B, D = a.shape
    M = CELLS_PER_ENTRY * D
    cdtype = torch.float64 if M > _FLOAT64_ABOVE else torch.float32
    c = a.to(cdtype).cumsum(1)
    total = c[:, -1:]
    c.mul_(torch.where(total > 0, M / total, torch.zeros_like(total)))
    c[:, -1] = M  # the last boundary closes the row exactly (all-zero rows: one bin of width M)
    cell = c.long().clamp_(max=M)
    n_in = torch.zeros(B, M + 1, dtype=torch.int32, device=a.device)
    n_in.scatter_add_(1, cell, torch.ones(1, 1, dtype=torch.int32, device=a.device).expand(B, D))
    before = n_in.cumsum(1, dtype=torch.int32).sub_(n_in)
    k = _rand("int", (B, r), generator, a.device, high=M)
    idx = _cell_search(c, k, before.gather(1, k), n_in.gather(1, k), generator, r)
    drawn = torch.zeros(B, D, dtype=torch.bool, device=a.device)
    drawn.scatter_(1, idx.clamp_(max=D - 1), True)
    width = torch.diff(c, dim=1, prepend=torch.zeros(B, 1, dtype=cdtype, device=a.device))
    return drawn, width.div_(M)


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

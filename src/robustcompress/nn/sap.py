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
``torch.multinomial(p, r, replacement=True)`` is exact but slow on CPU (10-20x a LeNet-5 forward),
and inverse-CDF sampling with ``torch.searchsorted`` is no faster. Two exact implementations of
inverse-CDF sampling with a guide table ("guide table" / cell method of Chen & Asau, 1974) are
used instead; both give the same law, with different random streams:

*On CPU* (when numba is installed, a declared dependency): a compiled kernel
(:mod:`robustcompress.nn._sap_cpu`) handles one row at a time in cache: it compacts the positive
entries, builds their float64 CDF scaled to ``[0, M)`` with ``M = 4 * #positive`` cells and a
guide table (first bin per cell, from a histogram, without data-dependent branches), then makes
the ``r`` draws, each a 53-bit uniform ``x``, one table lookup and a forward step while
``c_j <= x`` (one step without a branch, further steps only when a cell holds several
boundaries). The random numbers come from a SplitMix64 stream per row whose seed is drawn from
the caller's ``torch.Generator``, so the evaluator's generator still fixes every draw. The
inverse keep probabilities are computed in the kernel for the drawn entries only (short series
where ``p`` and ``r p`` are small, else ``log1p``/``exp``; relative error below ``2**-43``).
Rows are split over ``torch.get_num_threads()`` threads when the batch is large; the result does
not depend on the thread count.

*On CUDA* (when triton is installed, as it is with CUDA builds of torch): the same guide table
in three Triton kernels without a host synchronisation (:mod:`robustcompress.nn._sap_triton`):
the CDF from exact fixed-point prefix sums (so a parallel scan cannot make it step back), the
draws from Philox streams seeded per row from the caller's generator, and the multiplier.

*Elsewhere* (CPU without numba, CUDA without triton): the vectorised torch cell table below,
batched over all rows:

* scale each row's CDF, accumulated in float64, to ``[0, M]`` with ``M = CELLS_PER_ENTRY * D``
  unit cells (``c_j``: upper boundary of bin ``j``; ``c_{D-1} = M`` closes the row exactly);
* a histogram of ``ceil(c_j)`` per row and its cumulative sum give ``lo[k] = #{j : c_j <= k}``
  (the bin of a draw at the start of cell ``k``); one int32 table packs ``4 * lo[k]`` with
  ``min(2, #boundaries in (k, k + 1])``;
* a draw is a uniform cell ``k`` (``randint``, exactly uniform over the ``M`` cells) and one
  table lookup. Only if its cell holds a boundary (about ``#nonzero / M`` of the draws) does it
  get a float64 offset ``u`` in the cell: with one boundary a single comparison resolves it, with
  several (runs of tiny or zero-width bins) a vectorised binary search over that cell's
  boundaries. Comparisons are made as ``c_j - k <= u``, exact for ``c_j`` in ``(k, k + 1]``, so
  the draw ``k + u`` is never rounded into a neighbouring bin.

Both are inverse-CDF sampling, hence exact: each draw selects bin ``j`` with probability equal to
the width of bin ``j`` in the computed CDF (up to the ``2**-53`` grid of the float64 draw).
Zero activations get no (or zero-width) bins and are never drawn. The keep probability and the
rescale are computed from *those same widths*, so ``E[sap(h)] = h`` holds for the realised
distribution to working precision, not only up to the rounding of the CDF. The CDF is float64,
so each bin's probability is ``|h_j| / sum |h|`` to about ``2**-53 * D`` relative to the row mass
(``torch.multinomial`` works in float32). An entry whose share is below that resolution may get
a zero-width bin, is then never kept, and the output loses that (negligible) mass.

Speed (``bench/sap_overhead.py``, figures in bench/RESULTS.md): the compiled CPU kernel brings an
exact SAP-100 LeNet-5 forward (MNIST-shaped batch 256, one thread) to 2.1x-2.6x the plain
forward (the vectorised torch cell table: 5.7x to 8.5x; ``torch.multinomial``: 11x to 19x), and
the EOT-100 input gradient of a SAP ResNet-20 on 512 CIFAR inputs to ~3 s per draw; the
labelled Bernoulli option costs about the same as the kernel on CPU. The torch cell table costs
several passes of random memory access per draw (``randint``, a table gather, a scatter of the
drawn flags, plus the table build), which is why the CPU path is compiled. Measured and
rejected for the torch path: sorted uniforms from exponential spacings merged with the CDF by
one ``searchsorted`` of the ``D`` boundaries; Poissonisation (exact with a top-up of ``r - N``
draws; ``torch.poisson`` or inversion per entry is slower); 2 to 4 cells per entry and an int64
table (2 cells, int32, fastest).

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
samplers do not run under ``vmap``: the compiled kernel needs real (non-batched) tensors, and the
torch cell table uses in-place ``scatter_add_`` into a per-row table and compacts the draws that
need a comparison or a binary search (``nonzero``, a data-dependent shape), which vmap cannot
batch. Under ``vmap`` the exact sampler raises a ``RuntimeError`` that says so and names the
alternatives. It needs no vmap:
every row of the first dimension already gets an independent draw (``granularity="sample"``),
so EOT stacks copies of the batch instead.
"""

from __future__ import annotations

import functools
import math
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np
import torch
from torch import nn

from robustcompress.errors import UserInputError
from robustcompress.triton_support import cuda_kernels

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


def random_draw(kind: str, shape, generator: Optional[torch.Generator], device, dtype=None,
          high: int = 0) -> torch.Tensor:
    """Uniforms (``kind="rand"``), integers in ``[0, high)`` (``"int"``) or uniform 64-bit
    integers (``"int64"``) drawn on the generator's device."""
    gdev = generator.device if generator is not None else device
    if kind == "rand":
        out = torch.rand(shape, generator=generator, device=gdev, dtype=dtype)
    elif kind == "int64":
        out = torch.randint(-2 ** 63, 2 ** 63 - 1, shape, generator=generator, device=gdev)
    else:
        out = torch.randint(high, shape, generator=generator, device=gdev)
    return out.to(device)


def _search(c: torch.Tensor, k: torch.Tensor, u: torch.Tensor, left: torch.Tensor,
            right: torch.Tensor) -> torch.Tensor:
    """Vectorised binary search: for every draw ``x = k + u`` (cell ``k``, offset ``u``), the
    first index ``i`` in ``[left, right)`` of the flat, row-wise sorted boundaries ``c`` with
    ``c[i] > x`` (``right`` when there is none). ``c[i] - k <= u`` is tested instead of
    ``c[i] <= k + u``: the boundaries searched lie in ``(k, k + 1]``, where that difference is
    exact, so no rounding of ``k + u`` can move a draw into another bin.

    Finished draws are written back and dropped once they are the majority, so the work follows
    the draws that still need steps.
    """
    ans = torch.empty_like(left)
    slot = torch.arange(left.numel(), device=left.device)
    while True:
        mid = (left + right) >> 1
        go = c.index_select(0, mid).sub_(k) <= u
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
            slot, left, right, k, u = (t.index_select(0, keep) for t in (slot, left, right, k, u))


def _exact_drawn(a: torch.Tensor, r: int, generator: Optional[torch.Generator]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact "drawn at least once in ``r`` draws" indicators (B, D) for rows ``a >= 0``.

    Returns ``(drawn, p)`` with ``p`` the realised per-draw probability of each entry (the bin
    widths of the computed CDF). See the module docstring for the algorithm.
    """
    B, D = a.shape
    M = CELLS_PER_ENTRY * D
    dev = a.device
    c = a.cumsum(1, dtype=torch.float64)
    total = c[:, -1:]
    c.mul_(torch.where(total > 0, M / total, torch.zeros_like(total)))
    c.clamp_(max=M)
    c[:, -1] = M  # the last boundary closes the row exactly (all-zero rows: one bin of width M)
    # hist[b, i] = #{j : ceil(c_j) = i}; lo[b, k] = #{j : c_j <= k} is its cumulative sum.
    hist = torch.zeros(B, M + 1, dtype=torch.int32, device=dev)
    hist.scatter_add_(1, c.ceil().long(), torch.ones(1, dtype=torch.int32, device=dev).expand(B, D))
    lo = hist.cumsum(1, dtype=torch.int32)
    # table[b, k] = 4 * (bin of the draws in cell k that lie below the cell's first boundary)
    #               + min(2, number of boundaries c_j in (k, k + 1])
    table = torch.add(hist[:, 1:].clamp(max=2), lo[:, :M], alpha=4)
    cell = random_draw("int", (B, r), generator, dev, high=M)
    t = table.gather(1, cell)
    n_in = (t & 3).view(-1)
    need = n_in.nonzero().squeeze(1)
    t = (t >> 2).long()
    if need.numel():  # draws in a cell with a boundary: exact offset in the cell, then compare
        tf = t.view(-1)
        row = need.div(r, rounding_mode="floor")
        k = cell.view(-1).index_select(0, need)
        kf = k.to(torch.float64)
        u = random_draw("rand", (need.numel(),), generator, dev, dtype=torch.float64)
        base = row * D
        first = tf.index_select(0, need).add_(base)  # first boundary > k, the only one if n_in=1
        ans = first + (c.view(-1).index_select(0, first).sub_(kf) <= u)
        many = (n_in.index_select(0, need) & 2).nonzero().squeeze(1)
        if many.numel():  # >= 2 boundaries in the cell: binary search up to the next cell's
            kr = row.index_select(0, many) * (M + 1) + k.index_select(0, many) + 1
            right = lo.view(-1).index_select(0, kr).long().add_(base.index_select(0, many))
            sel = [v.index_select(0, many) for v in (kf, u, first)]
            ans.index_copy_(0, many, _search(c.view(-1), *sel, right))
        tf.index_copy_(0, need, ans.sub_(base))
    drawn = torch.zeros(B, D, dtype=torch.bool, device=dev).scatter_(1, t, True)
    width = c.clone()
    width[:, 1:] -= c[:, :-1]
    return drawn, width.div_(M)


@functools.lru_cache(maxsize=1)
def _compiled_kernel():
    """The numba kernel :func:`robustcompress.nn._sap_cpu.sap_rows`, or ``None`` without numba."""
    try:
        from robustcompress.nn._sap_cpu import sap_rows
    except ImportError:  # numba missing: the vectorised torch sampler is used
        return None
    try:  # compile (or load from numba's cache) now, so that a failure falls back here
        sap_rows(np.ones((1, 2), np.float32), 2, np.zeros(1, np.uint64), np.empty((1, 2), np.float32))
    except Exception as err:  # e.g. numba cannot compile or cache on this machine
        warnings.warn(f"the compiled SAP sampler is unavailable ({err}); using the torch sampler "
                      "(same law, slower on CPU)", RuntimeWarning, stacklevel=2)
        return None
    return sap_rows


@functools.lru_cache(maxsize=4)
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix="robustcompress-sap")


MIN_ROW_CHUNK = 16  # rows per thread below which splitting the batch does not pay


def _kernel_inverse_keep(a: torch.Tensor, r: int, generator: Optional[torch.Generator]
                         ) -> Optional[torch.Tensor]:
    """``1/keep`` where drawn, else 0, for CPU rows ``a`` (B, D) by the compiled kernel; ``None``
    where it cannot run (numba missing, or ``a`` is a torch.func wrapper without storage)."""
    kernel = _compiled_kernel()
    if kernel is None or a.device.type != "cpu" or _functorch_wrapped(a):
        return None
    arr = a.numpy()
    B = a.shape[0]
    # one 64-bit stream seed per row, drawn from the caller's generator
    seeds = random_draw("int64", (B,), generator, a.device).numpy().view(np.uint64)
    out = torch.empty_like(a)
    res = out.numpy()
    workers = min(torch.get_num_threads(), B // MIN_ROW_CHUNK)
    if workers <= 1:
        kernel(arr, r, seeds, res)
        return out
    bounds = np.linspace(0, B, workers + 1).astype(int)
    jobs = [_pool(workers).submit(kernel, arr[lo:hi], r, seeds[lo:hi], res[lo:hi])
            for lo, hi in zip(bounds[:-1], bounds[1:])]
    for job in jobs:
        job.result()
    return out


def _triton_kernels(device: torch.device):
    """The Triton kernels for ``device`` (CUDA only), or ``None`` (triton missing or unusable)."""
    return cuda_kernels(device, "robustcompress.nn._sap_triton", _warm_up, "SAP sampler")


def _warm_up(kernels, device: str) -> None:
    kernels.inverse_keep(torch.ones(2, 8, device=device), 8,
                         torch.zeros(2, dtype=torch.int64, device=device), CELLS_PER_ENTRY)


def _triton_inverse_keep(h: torch.Tensor, r: int, generator: Optional[torch.Generator]
                         ) -> Optional[torch.Tensor]:
    """``1/keep`` where drawn, else 0, in ``h``'s dtype for rows ``h`` (B, D) by the Triton
    kernels; ``None`` where they cannot run (not CUDA, no triton, a torch.func wrapper)."""
    kernels = _triton_kernels(h.device)
    if kernels is None or _functorch_wrapped(h):
        return None
    seeds = random_draw("int64", (h.shape[0],), generator, h.device)
    return kernels.inverse_keep(h, r, seeds, CELLS_PER_ENTRY)


def _functorch_wrapped(t: torch.Tensor) -> bool:
    """Whether ``t`` is a torch.func (grad / vmap) wrapper: no storage, so the compiled kernels,
    which read memory directly, cannot take it (the torch samplers can)."""
    return torch._C._functorch.is_functorch_wrapped_tensor(t)


def _refuse_vmap(h: torch.Tensor) -> None:
    """One clear error for the exact sampler under ``torch.func.vmap`` (see module docstring)."""
    functorch = torch._C._functorch
    t = h
    while _functorch_wrapped(t):
        if functorch.is_batchedtensor(t):
            raise RuntimeError(
                "the exact SAP sampler does not run under torch.func.vmap (its draws have a "
                "data-dependent shape); every row of the batch already gets an independent draw, "
                "so stack copies of the batch instead, or use method='bernoulli', which vmaps")
        t = functorch.get_unwrapped(t)


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
        flat = h.detach().reshape(B, -1)
        r = num_draws(flat.shape[1], frac)
        if method == "exact":
            _refuse_vmap(h)
            inverse_keep = _triton_inverse_keep(flat, r, generator)
            if inverse_keep is not None:
                return inverse_keep.view_as(h)
        work = torch.float64 if h.dtype == torch.float64 else torch.float32
        a = flat.abs().to(work)
        if method == "exact":
            inverse_keep = _kernel_inverse_keep(a, r, generator)
            if inverse_keep is not None:
                return inverse_keep.to(h.dtype).view_as(h)
            drawn, p = _exact_drawn(a, r, generator)
            p = p.to(work)
        else:
            total = a.sum(1, keepdim=True)
            p = a / torch.where(total > 0, total, torch.ones_like(total))
            u = random_draw("rand", a.shape, generator, a.device, dtype=work)
            drawn = u < keep_probability(p, r)
        keep = keep_probability(p, r)
        drawn &= keep > 0
        mask = torch.where(drawn, keep.reciprocal_(), 0.0)
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

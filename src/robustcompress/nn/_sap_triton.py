"""Triton kernels of the exact SAP sampler for CUDA (see :mod:`robustcompress.nn.sap`).

The same law as the other exact samplers (inverse-CDF sampling with a guide table, Chen & Asau,
1974), in three launches and one small torch op, with no host synchronisation:

1. :func:`_cdf_kernel`, a block of rows per program: ``|h|`` accumulated in float64 in chunks,
   made monotone (a running maximum: a parallel prefix sum of non-negative numbers can step back
   by an ulp, which would leave an unsorted CDF), scaled to ``[0, M]`` with ``M = cells * D``
   (the last boundary set to ``M`` exactly), and a histogram of ``ceil(c_j)`` by atomic adds;
   its running sum (``torch.cumsum``) is the guide table ``lo[k] = #{j : c_j <= k}``.
2. :func:`_draw_kernel`, a block of draws per program, flat over ``B * r``: a 53-bit uniform
   ``x`` in ``[0, M)`` from Philox (counter = draw index, key = the row's 64-bit seed, drawn from
   the caller's ``torch.Generator``), then the first bin ``j`` with ``c_j > x``, searched between
   ``lo[floor(x)]`` and ``lo[floor(x) + 1]`` (the boundaries inside the draw's cell; usually none
   or one, so the binary search usually ends at once), and a flag for that bin.
3. :func:`_mask_kernel`, flat over ``B * D``: ``1 / keep_j`` for the flagged bins, with
   ``keep_j = 1 - (1 - p_j)^r`` and ``p_j`` the realised bin width, else 0, written in ``h``'s
   dtype. ``keep`` is computed as in the compiled CPU kernel (short series for small ``p`` and
   small ``|r log(1 - p)|``, else ``log``/``exp``; relative error below about ``2**-43``).

Deviation from the CPU kernel: zeros are not compacted away; they get zero-width bins, which the
binary search steps over and which are never drawn.

Imported lazily, only where triton is installed. Under ``TRITON_INTERPRET=1`` the same kernels
run on CPU tensors, which is how the test suite checks their law without a GPU.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

ROW_BLOCK = 1024  # columns per chunk of the CDF kernel
# elements per program: (CDF chunk, draw / mask kernels) on a GPU, and under the interpreter on
# CPU tensors, where a program is a numpy step and fewer, larger programs are much faster
BLOCKS = {"cuda": (4096, 1024), "cpu": (65536, 65536)}


@triton.jit
def _fixed_point(h_ptr, rows, cols, ok, D, rmax, unit):
    """``floor(|h| / rowmax * 2**K)`` as int64 (``unit = 2**K``): exact integers, so that the
    prefix sums below are exact and monotone whatever order a parallel scan adds them in."""
    x = tl.abs(tl.load(h_ptr + rows[:, None] * D + cols[None, :], mask=ok, other=0.0).to(tl.float64))
    ratio = tl.where(rmax[:, None] > 0, x / tl.where(rmax[:, None] > 0, rmax[:, None], 1.0), 0.0)
    return tl.math.floor(ratio * unit).to(tl.int64)


@triton.jit
def _cdf_kernel(h_ptr, c_ptr, hist_ptr, par_ptr, B, D, M, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < B
    cols = tl.arange(0, BLOCK)
    unit = tl.load(par_ptr)
    Mf = M.to(tl.float64)
    rmax = tl.zeros((ROWS,), tl.float64)
    for start in range(0, D, BLOCK):
        ok = row_ok[:, None] & (start + cols < D)[None, :]
        x = tl.load(h_ptr + rows[:, None] * D + start + cols[None, :], mask=ok, other=0.0)
        rmax = tl.maximum(rmax, tl.max(tl.abs(x.to(tl.float64)), axis=1))
    total = tl.zeros((ROWS,), tl.int64)
    for start in range(0, D, BLOCK):
        ok = row_ok[:, None] & (start + cols < D)[None, :]
        total += tl.sum(_fixed_point(h_ptr, rows, start + cols, ok, D, rmax, unit), axis=1)
    scale = tl.where(total > 0, Mf / tl.where(total > 0, total, 1).to(tl.float64), 0.0)
    carry = tl.zeros((ROWS,), tl.int64)
    for start in range(0, D, BLOCK):
        j = start + cols
        ok = row_ok[:, None] & (j < D)[None, :]
        q = _fixed_point(h_ptr, rows, j, ok, D, rmax, unit)
        cum = tl.cumsum(q, axis=1) + carry[:, None]
        carry += tl.sum(q, axis=1)
        c = tl.minimum(cum.to(tl.float64) * scale[:, None], Mf)
        c = tl.where((j == D - 1)[None, :], Mf, c)  # the last boundary closes the row exactly
        tl.store(c_ptr + rows[:, None] * D + j[None, :], c, mask=ok)
        cell = tl.math.ceil(c).to(tl.int64)
        tl.atomic_add(hist_ptr + rows[:, None] * (M + 1) + cell, 1, mask=ok)


@triton.jit
def _draw_kernel(c_ptr, lo_ptr, seed_ptr, drawn_ptr, par_ptr, B, D, M, r, BLOCK: tl.constexpr):
    n = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = n < B * r
    row = tl.where(ok, n // r, 0)
    seed = tl.load(seed_ptr + row)
    r0, r1, _, _ = tl.randint4x(seed, (n - row * r).to(tl.int32))
    hi = (r0.to(tl.uint32, bitcast=True) >> 5).to(tl.float64)  # 27 bits
    lo = (r1.to(tl.uint32, bitcast=True) >> 6).to(tl.float64)  # 26 bits
    top = tl.load(par_ptr + 1)  # the largest float64 below M
    x = tl.minimum((hi * 67108864.0 + lo) * (M.to(tl.float64) * 2.0 ** -53), top)  # on [0, M)
    cell = x.to(tl.int64)
    left = tl.load(lo_ptr + row * (M + 1) + cell).to(tl.int64)
    right = tl.load(lo_ptr + row * (M + 1) + cell + 1).to(tl.int64)
    left = tl.where(ok, left, right)
    # first j in [left, right) with c_j > x (right if none): the boundaries in x's cell
    while tl.max((left < right).to(tl.int32), axis=0) > 0:
        active = left < right
        mid = (left + right) >> 1
        go = tl.load(c_ptr + row * D + mid, mask=active, other=0.0) <= x
        left = tl.where(active & go, mid + 1, left)
        right = tl.where(active & ~go, mid, right)
    tl.store(drawn_ptr + row * D + left, 1, mask=ok)


@triton.jit
def _keep_probability(p, r):
    """``1 - (1 - p)^r`` for ``0 <= p <= 1`` in float64 (see the CPU kernel's twin)."""
    small = p < 0.0009765625
    lg_small = -p * (1.0 + p * (0.5 + p * (1.0 / 3.0 + p * (0.25 + p * 0.2))))
    lg = tl.where(small, lg_small, tl.log(tl.maximum(1.0 - p, 1e-300)))  # p = 1: keep = 1
    y = r * lg
    series = -y * (1.0 + y * (0.5 + y * (1.0 / 6.0 + y * (1.0 / 24.0 + y / 120.0))))
    return tl.where(y > -0.0009765625, series, 1.0 - tl.exp(y))


@triton.jit
def _mask_kernel(c_ptr, drawn_ptr, out_ptr, B, D, M, r, BLOCK: tl.constexpr):
    n = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = n < B * D
    first = (n % D) == 0
    c = tl.load(c_ptr + n, mask=ok, other=0.0)
    prev = tl.load(c_ptr + n - 1, mask=ok & ~first, other=0.0)
    drawn = tl.load(drawn_ptr + n, mask=ok, other=0) != 0
    keep = _keep_probability((c - prev) / M.to(tl.float64), r.to(tl.float64))
    out = tl.where(drawn & (keep > 0), 1.0 / tl.where(keep > 0, keep, 1.0), 0.0)
    if out_ptr.dtype.element_ty != tl.float64:  # via float32, as the CPU samplers round
        out = out.to(tl.float32)
    tl.store(out_ptr + n, out, mask=ok)


def inverse_keep(h: torch.Tensor, r: int, seeds: torch.Tensor, cells: int) -> torch.Tensor:
    """The SAP multiplier (``1 / keep`` where drawn, else 0) for the rows of ``h`` (``B x D``,
    any float dtype, any sign: ``|h|`` is used), ``r`` draws per row, one int64 seed per row."""
    h = h.contiguous()
    B, D = h.shape
    M = cells * D
    dev = h.device
    c = torch.empty(B, D, dtype=torch.float64, device=dev)
    hist = torch.zeros(B, M + 1, dtype=torch.int32, device=dev)
    chunk, flat = BLOCKS["cpu" if dev.type == "cpu" else "cuda"]
    block = min(ROW_BLOCK, triton.next_power_of_2(D))
    rows = max(1, min(1024, chunk // block))
    # 2**K with K = 62 - ceil(log2 D): D fixed-point masses of at most 2**K sum below 2**62
    par = torch.tensor([2.0 ** (62 - max(D - 1, 1).bit_length()), math.nextafter(M, 0.0)],
                       dtype=torch.float64, device=dev)
    _cdf_kernel[(triton.cdiv(B, rows),)](h, c, hist, par, B, D, M, ROWS=rows, BLOCK=block)
    lo = hist.cumsum(1, dtype=torch.int32)
    drawn = torch.zeros(B, D, dtype=torch.int8, device=dev)
    _draw_kernel[(triton.cdiv(B * r, flat),)](c, lo, seeds.contiguous(), drawn, par, B, D, M, r,
                                                    BLOCK=flat)
    out = torch.empty(B, D, dtype=h.dtype, device=dev)
    _mask_kernel[(triton.cdiv(B * D, flat),)](c, drawn, out, B, D, M, r, BLOCK=flat)
    return out

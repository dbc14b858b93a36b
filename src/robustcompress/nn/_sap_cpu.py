"""Compiled CPU kernel of the exact SAP sampler (see :mod:`robustcompress.nn.sap`).

One pass per row (sample), all in cache: the positive entries compacted, their CDF in float64
scaled to ``[0, M)`` with ``M = CELLS * #positive``, a guide table (Chen & Asau, 1974) with
``CELLS`` cells per positive entry, then ``r`` inverse-CDF draws, each a 53-bit uniform ``x`` in
``[0, M)``, one table lookup ``j = guide[floor(x)]`` and a forward step while ``c_j <= x``. Bin
``j`` is selected iff ``c_{j-1} <= x < c_j``: that is inverse-CDF sampling with replacement,
hence exact up to the 53-bit grid of ``x`` (``torch.multinomial`` works in float32).

Random numbers: SplitMix64 (Steele, Lea & Flood, 2014), one stream per row whose 64-bit seed is
drawn from the caller's ``torch.Generator``, so the generator the evaluator controls still fixes
every draw. The kernel writes the SAP multiplier itself: ``1 / (1 - (1 - p_j)^r)`` for every
drawn entry, with ``p_j`` the realised bin width (like the vectorised sampler), 0 elsewhere.

Imported lazily by :mod:`robustcompress.nn.sap`; if numba is missing the vectorised torch
sampler is used instead.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_TWO_M53 = 2.0 ** -53
_SMALL = 2.0 ** -10  # below it, truncated series are accurate to ~2**-53
CELLS = 4  # guide-table cells per positive entry (fewer forward steps per draw)


@njit(cache=True, nogil=True)
def keep_probability(p, r):  # pragma: no cover - compiled; tested against torch in float64
    """``1 - (1 - p)^r = -expm1(r * log1p(-p))`` for ``0 < p <= 1``, to about ``2**-43``
    relative error: short series for small ``p`` and small ``|r log1p(-p)|`` (SAP's usual
    case) so that the usual cost is one ``exp`` instead of a ``log1p`` and an ``expm1``."""
    if p < _SMALL:
        lg = -p * (1.0 + p * (0.5 + p * (1.0 / 3.0 + p * (0.25 + p * 0.2))))
    else:
        lg = math.log1p(-p)
    y = r * lg
    if y > -_SMALL:
        return -y * (1.0 + y * (0.5 + y * (1.0 / 6.0 + y * (1.0 / 24.0 + y / 120.0))))
    return 1.0 - math.exp(y)


@njit(cache=True, nogil=True)
def sap_rows(a, r, seeds, out):  # pragma: no cover - compiled; tested through nn.sap
    """For every row of ``a`` (``B x D``, non-negative), make ``r`` draws with replacement from
    ``p = a_row / sum(a_row)`` and write into ``out`` the SAP multiplier: ``1 / keep_j`` with
    ``keep_j = 1 - (1 - p_j)^r`` (``p_j`` the bin width of the float64 CDF) for every entry drawn
    at least once, 0 elsewhere. All-zero rows give all-zero outputs. ``1 / keep`` is computed
    only for the drawn entries, by :func:`keep_probability`'s short series."""
    B, D = a.shape
    nz = np.empty(D, np.int64)
    c = np.empty(D, np.float64)
    guide = np.empty(CELLS * D + 1, np.int32)
    drawn = np.empty(D, np.bool_)
    for b in range(B):
        # the positive entries only (zeros are never drawn; ReLU maps are about half zeros),
        # compacted without a data-dependent branch
        n = 0
        for j in range(D):
            nz[n] = j
            n += a[b, j] > 0.0
        out[b, :] = 0.0
        if n == 0:
            continue
        s = 0.0
        for i in range(n):
            s += a[b, nz[i]]
            c[i] = s
        M = CELLS * n  # cells of the guide table
        scale = M / s
        # guide[k] = #{i : c_i <= k} = first bin whose upper boundary exceeds k, built without
        # data-dependent branches: a histogram of ceil(c_i), then its running sum
        guide[: M + 1] = 0
        for i in range(n - 1):
            ci = min(c[i] * scale, M)
            c[i] = ci
            guide[int(math.ceil(ci))] += 1
        c[n - 1] = M  # the last boundary closes the row exactly
        run = 0
        for k in range(M):
            run += guide[k]
            guide[k] = run
        drawn[:n] = False
        state = np.uint64(seeds[b])
        step = M * _TWO_M53
        top = np.nextafter(float(M), 0.0)  # x < M = c[n-1], so every scan stops by bin n - 1
        for _ in range(r):
            state += _GOLDEN
            z = state
            z = (z ^ (z >> _S30)) * _MIX1
            z = (z ^ (z >> _S27)) * _MIX2
            z ^= z >> _S31
            x = min(float(np.int64(z >> _S11)) * step, top)  # uniform on [0, M), 53 bits
            i = guide[int(x)]
            i += c[i] <= x  # the usual case, without a branch: at most one boundary passed
            while c[i] <= x:  # rare: several boundaries in the cell below x
                i += 1
            drawn[i] = True
        prev = 0.0
        inv = 1.0 / M
        for i in range(n):
            ci = c[i]
            if drawn[i]:  # 1 / keep probability, keep = 1 - (1 - p)^r = -expm1(r * log1p(-p))
                out[b, nz[i]] = 1.0 / keep_probability((ci - prev) * inv, r)
            prev = ci

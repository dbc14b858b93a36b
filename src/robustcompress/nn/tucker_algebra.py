"""Tucker tensor algebra for :mod:`robustcompress.nn.tucker`: mode products and unfoldings,
reconstruction, rank resolution (per-mode ints, fractions of each dimension, clamped to valid
Tucker ranks) and the decompositions that initialise a layer from pretrained weights: truncated
HOSVD (De Lathauwer et al. 2000), HOOI, and a random Tucker tensor."""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch

from robustcompress.errors import UserInputError

RankSpec = Union[int, float, None, Sequence[Union[int, float, None]]]

# ----------------------------------------------------------------------------- tensor algebra

def mode_dot(tensor: torch.Tensor, matrix: torch.Tensor, mode: int) -> torch.Tensor:
    """n-mode product ``tensor x_mode matrix``: contracts ``tensor``'s dim ``mode`` with
    ``matrix``'s columns, so dim ``mode`` becomes ``matrix.shape[0]``."""
    out = torch.tensordot(matrix, tensor, dims=([1], [mode]))
    return torch.movedim(out, 0, mode)


def unfold(tensor: torch.Tensor, mode: int) -> torch.Tensor:
    """Mode-``mode`` unfolding: a ``(dim_mode, prod(other dims))`` matrix."""
    return torch.movedim(tensor, mode, 0).reshape(tensor.shape[mode], -1)


def tucker_to_tensor(core: torch.Tensor, factors: Sequence[torch.Tensor], *,
                     batch_dims: int = 0) -> torch.Tensor:
    """Reconstruct ``W = core x_0 U_0 x_1 U_1 ...`` (one factor per mode of ``core``).

    ``batch_dims`` leading dims of ``core`` are batch dims (per-sample cores, shared factors).
    """
    if len(factors) != core.dim() - batch_dims:
        raise UserInputError(
            f"a Tucker core of order {core.dim() - batch_dims} needs that many factors, "
            f"got {len(factors)}")
    out = core
    for mode, u in enumerate(factors):
        out = mode_dot(out, u, mode + batch_dims)
    return out


# ----------------------------------------------------------------------------- ranks

def _mode_rank(r: Union[int, float, None], dim: int, mode: int) -> int:
    if r is None:
        return dim
    if isinstance(r, bool):
        raise UserInputError(f"rank for mode {mode} must be an int, a fraction or None, got {r!r}")
    if isinstance(r, float):
        if not 0.0 < r <= 1.0:
            raise UserInputError(
                f"fractional rank {r} for mode {mode} must lie in (0, 1]; give an int for an "
                "absolute rank"
            )
        return max(1, int(round(r * dim)))
    if isinstance(r, int):
        if r < 1:
            raise UserInputError(f"rank {r} for mode {mode} must be >= 1")
        return r
    raise UserInputError(f"rank for mode {mode} must be an int, a fraction or None, got {r!r}")


def clamp_ranks(ranks: Sequence[int], shape: Sequence[int]) -> tuple[int, ...]:
    """Clamp Tucker ranks to valid sizes: ``R_n <= dim_n`` and ``R_n <= prod_{m != n} R_m``.

    A mode-n rank above the product of the other ranks cannot be reached (the mode-n unfolding of
    the core has only that many columns), so it is lowered; repeated until nothing changes.
    """
    r = [min(int(a), int(d)) for a, d in zip(ranks, shape)]
    changed = True
    while changed:
        changed = False
        for n in range(len(r)):
            other = math.prod(r[:n] + r[n + 1:])
            if r[n] > other:
                r[n] = other
                changed = True
    return tuple(r)


def resolve_ranks(rank: RankSpec, shape: Sequence[int], *, fixed_modes: Sequence[int] = ()
                  ) -> tuple[int, ...]:
    """Turn a rank spec into clamped per-mode integer ranks for a weight of ``shape``.

    Parameters
    ----------
    rank : one int/float/None applied to every mode not in ``fixed_modes`` (those stay full), or
        one entry per mode (then ``fixed_modes`` is ignored: an explicit rank is obeyed).
    shape : the dense weight shape, ``(O, I, k...)`` or ``(O, I)``.
    fixed_modes : modes kept at full rank when ``rank`` is a scalar (default for convs: the
        spatial modes ``2, 3, ...``).
    """
    shape = tuple(int(s) for s in shape)
    if isinstance(rank, (list, tuple)):
        if len(rank) != len(shape):
            raise UserInputError(
                f"rank {tuple(rank)} has {len(rank)} entries but the weight {shape} has "
                f"{len(shape)} modes; give one rank per mode or a single number"
            )
        per_mode = list(rank)
    else:
        per_mode = [None if n in fixed_modes else rank for n in range(len(shape))]
    return clamp_ranks([_mode_rank(r, d, n) for n, (r, d) in enumerate(zip(per_mode, shape))], shape)


# ----------------------------------------------------------------------------- decompositions

def _leading_left_singular(mat: torch.Tensor, r: int) -> torch.Tensor:
    u, _, _ = torch.linalg.svd(mat, full_matrices=False)
    return u[:, :r]


def hosvd(weight: torch.Tensor, ranks: Sequence[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Truncated higher-order SVD (De Lathauwer, De Moor & Vandewalle 2000).

    ``U_n`` = leading ``R_n`` left singular vectors of the mode-n unfolding; core =
    ``W x_n U_n^T`` for all n. Exact when every rank is full. Computed in float64 for accuracy and
    returned in ``weight``'s dtype.
    """
    w = weight.detach().to(torch.float64)
    factors = [_leading_left_singular(unfold(w, n), r) for n, r in enumerate(ranks)]
    core = w
    for n, u in enumerate(factors):
        core = mode_dot(core, u.T, n)
    return core.to(weight.dtype), [u.to(weight.dtype) for u in factors]


def hooi(weight: torch.Tensor, ranks: Sequence[int], *, n_iter: int = 5, tol: float = 1e-6
         ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Higher-order orthogonal iteration (De Lathauwer et al. 2000), started from the HOSVD.

    Each sweep re-fits ``U_n`` to the leading singular vectors of the mode-n unfolding of
    ``W x_{m != n} U_m^T``. Stops after ``n_iter`` sweeps or when the relative change of the
    core norm (the captured energy) is below ``tol``. tensorly's ``tucker`` (used by
    tensorly-torch) runs the same algorithm with up to 100 sweeps.
    """
    w = weight.detach().to(torch.float64)
    _, factors = hosvd(w, ranks)
    last = None
    for _ in range(n_iter):
        for n in range(w.dim()):
            y = w
            for m, u in enumerate(factors):
                if m != n:
                    y = mode_dot(y, u.T, m)
            factors[n] = _leading_left_singular(unfold(y, n), ranks[n])
        core = w
        for m, u in enumerate(factors):
            core = mode_dot(core, u.T, m)
        norm = float(core.norm())
        if last is not None and abs(norm - last) <= tol * max(last, 1e-30):
            break
        last = norm
    core = w
    for m, u in enumerate(factors):
        core = mode_dot(core, u.T, m)
    return core.to(weight.dtype), [u.to(weight.dtype) for u in factors]


def random_tucker(shape: Sequence[int], ranks: Sequence[int], *, std: float,
                  generator: Optional[torch.Generator] = None, dtype=torch.float32
                  ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Random Tucker weights whose reconstruction has entries of standard deviation ~``std``.

    Factors have orthonormal columns (QR of a Gaussian), so ``Var(W) ~= Var(G) prod(R)/prod(dim)``
    and the core is drawn with ``std * sqrt(prod(dim)/prod(R))``.
    """
    factors = []
    for d, r in zip(shape, ranks):
        q, _ = torch.linalg.qr(torch.randn(d, r, generator=generator, dtype=torch.float64))
        factors.append(q.to(dtype))
    scale = std * math.sqrt(math.prod(shape) / math.prod(ranks))
    core = torch.randn(tuple(ranks), generator=generator, dtype=torch.float64).to(dtype) * scale
    return core, factors


# ----------------------------------------------------------------------------- functional core

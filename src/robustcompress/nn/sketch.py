"""Random rank sketch of a Tucker weight (Defensive Tensorization, Bulat et al. 2021, eq. 3-4).

For each sketched mode n a keep vector ``lambda_n in {0,1}^{R_n}`` with i.i.d. Bernoulli(theta)
entries is drawn, and ``W~ = (G x_n diag(lambda_n)) x_n U_n``: the core is sketched, the factors
are the original ones (eq. 4). As the paper prescribes (end of Sec. 3), the diagonal products are
never formed: the kept core slices and the matching factor columns are *selected*
(``index_select``), so factorized execution really runs smaller convs.

Choices the paper leaves open (documented defaults, all configurable)
----------------------------------------------------------------------
modes
    Default: the two channel modes (0 = output, 1 = input), as tensorly-torch's tensor dropout
    does (it skips modes of rank <= 3, i.e. 3x3 spatial modes). Dropping a spatial rank of a 3x3
    kernel removes a third of its spatial basis at once. Algorithm 1 of the paper lists all four
    modes: pass ``modes=(0, 1, 2, 3)`` for that.
rescale
    ``"unbiased"`` (default): the core is multiplied by ``prod_n 1/p_n`` over the sketched modes,
    where ``p_n`` is the exact marginal keep probability (below), so ``E[W~] = W``. Then the
    theta=1 weights are the mean of the random weights, the omniscient attacker of the paper's
    Table 3 attacks the right mean model, and a pretrained layer converted at theta<1 keeps its
    activation scale before any fine-tuning. ``"none"`` is the paper's literal eq. 3-4 (no
    rescale; the network absorbs the theta^m shrinkage during training). tensorly-torch's
    ``tensor_dropout`` is biased either way (rescale over all modes even when spatial modes are
    skipped; no rescale when ``drop_test=True``), see docs/reference; it is not used.
all-dropped guard
    If every index of a mode is dropped (probability ``(1-theta)^R``), the index with the smallest
    uniform draw is kept instead (a uniformly random index), so no layer ever outputs only its
    bias. The marginal keep probability of an index is then ``p = theta + (1-theta)^R / R``,
    which the unbiased rescale uses, so unbiasedness is exact, not approximate.
granularity
    ``"batch"`` (default): one draw per forward, shared by the batch (tensorly-torch; cheapest:
    the factorized convs shrink). ``"sample"``: an independent draw per sample, realised as
    per-sample 0/1 masks on the core and a grouped conv with one group per sample; it costs the
    full-rank MACs (no saving) plus a per-sample core fold.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from robustcompress.errors import UserInputError

RESCALES = ("unbiased", "none")
GRANULARITIES = ("batch", "sample")


def check_sketch_args(theta: float, modes: Sequence[int], order: int, rescale: str,
                      granularity: str) -> None:
    """Validate sketch settings; raises :class:`UserInputError` naming the bad value."""
    if not 0.0 < float(theta) <= 1.0:
        raise UserInputError(f"keep probability theta={theta} must lie in (0, 1]")
    bad = [m for m in modes if not 0 <= int(m) < order]
    if bad:
        raise UserInputError(
            f"sketch modes {bad} do not exist for a weight with {order} modes "
            f"(valid: 0..{order - 1}; 0 = output channels, 1 = input channels)")
    if rescale not in RESCALES:
        raise UserInputError(f"unknown rescale {rescale!r}; choose one of {RESCALES}")
    if granularity not in GRANULARITIES:
        raise UserInputError(f"unknown granularity {granularity!r}; choose one of {GRANULARITIES}")


def keep_probability(theta: float, rank: int) -> float:
    """Marginal probability that one of ``rank`` indices is kept, all-dropped guard included."""
    return float(theta) + (1.0 - float(theta)) ** rank / rank


def sketch_scale(theta: float, ranks: Sequence[int], rescale: str) -> float:
    """The core multiplier: ``prod 1/p_n`` over the sketched ranks (``"unbiased"``) or 1."""
    if rescale == "none":
        return 1.0
    out = 1.0
    for r in ranks:
        out /= keep_probability(theta, r)
    return out


def _uniform(shape, generator: Optional[torch.Generator], device) -> torch.Tensor:
    gdev = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gdev).to(device)


def draw_keep_mask(shape: Sequence[int], theta: float, *,
                   generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
    """Bernoulli(theta) keep masks over the last dim of ``shape``, at least one True per row.

    Branch-free guard: in a row with nothing kept, the index with the smallest uniform draw is
    kept (uniform among indices by symmetry).
    """
    u = _uniform(tuple(shape), generator, device)
    keep = u < theta
    first = u == u.amin(-1, keepdim=True)  # (no one_hot: it is not vmappable)
    return keep | (first & ~keep.any(-1, keepdim=True))


def draw_kept_indices(rank: int, theta: float, *, generator: Optional[torch.Generator] = None,
                      device=None) -> torch.Tensor:
    """Sorted indices of the kept rank components of one mode (never empty)."""
    keep = draw_keep_mask((rank,), theta, generator=generator, device=device)
    try:
        return keep.nonzero().squeeze(1)
    except RuntimeError as e:  # torch.func.vmap(randomness="different")
        if "dynamic shape" not in str(e):
            raise
        raise UserInputError(
            "the 'batch' Tucker sketch selects a random number of rank components, which "
            "torch.func.vmap cannot batch with randomness='different'; use "
            "vmap(..., randomness='same') (one draw shared by the vmapped samples, i.e. "
            "'batch' semantics) or set granularity='sample' on the Tucker layers") from None


def sketch_tucker(core: torch.Tensor, factors: Sequence[torch.Tensor], theta: float,
                  modes: Sequence[int], *, rescale: str = "unbiased",
                  generator: Optional[torch.Generator] = None
                  ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One sketch draw (eq. 4): select kept core slices and factor columns on each mode in
    ``modes``; multiply the core by :func:`sketch_scale`. ``theta == 1`` returns the inputs."""
    factors = list(factors)
    if theta >= 1.0:
        return core, factors
    scale = sketch_scale(theta, [core.shape[m] for m in modes], rescale)
    for mode in modes:
        idx = draw_kept_indices(core.shape[mode], theta, generator=generator, device=core.device)
        core = core.index_select(mode, idx)
        factors[mode] = factors[mode].index_select(1, idx)
    return core * scale, factors


def sample_core_masks(core: torch.Tensor, theta: float, modes: Sequence[int], batch: int, *,
                      rescale: str = "unbiased", generator: Optional[torch.Generator] = None
                      ) -> torch.Tensor:
    """Per-sample sketch ("sample" granularity): a ``(batch, *core.shape)`` multiplier that is the
    product of independent per-sample keep masks on each sketched mode, times the rescale.

    Multiplying the core by it equals selecting the kept slices sample by sample (zeroed slices
    contribute nothing); it is an elementwise broadcast, not a diagonal-matrix product.
    """
    shape = (batch,) + tuple(core.shape)
    mult = torch.ones((batch,) + (1,) * core.dim(), dtype=core.dtype, device=core.device)
    for mode in modes:
        m = draw_keep_mask((batch, core.shape[mode]), theta, generator=generator,
                           device=core.device).to(core.dtype)
        view = [batch] + [1] * core.dim()
        view[mode + 1] = core.shape[mode]
        mult = mult * m.view(view)
    scale = sketch_scale(theta, [core.shape[m] for m in modes], rescale)
    return (mult * scale).expand(shape)

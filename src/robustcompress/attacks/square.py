"""Square attack, Linf (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020), score-based.

A black-box random search that needs only the model's scores: start from vertical stripes of
``+-eps`` and, at every iteration, propose to overwrite one random square window (per sample) of
the current perturbation with a fresh ``+-eps`` value per channel; keep the proposal if the margin
loss ``Z_y - max_{j != y} Z_j`` (targeted: ``max_{j != t} Z_j - Z_t``) decreases. The window side
follows the paper's piecewise-constant schedule of the fraction ``p`` of pixels changed
(:func:`p_selection`, rescaled to ``n_queries``). Only samples that are not yet adversarial are
queried; the query count per sample is returned.

Defaults: ``n_queries=5000`` and ``p_init=0.8`` are AutoAttack's settings for Square in its
standard evaluation (the paper uses ``p_init=0.05`` on ImageNet and 10000 queries); pass fewer
queries for quick runs. Deviations:

* randomness comes from a ``torch.Generator`` (the reference uses NumPy's global RNG), and the
  window and signs are drawn per sample in one batched operation (the reference loops over
  images in NumPy, the AutoAttack port shares one window position across the batch);
* inputs of any rank ``[B, C, *spatial]`` are supported: the "square" is a hyper-cube of side
  ``s = round((p * n_features / C) ** (1 / n_spatial))`` (a segment for 1-D audio), at most one
  less than the smallest spatial size;
* stochastic models (AutoAttack issue #56): the margin is averaged over ``eot_samples`` forward
  passes per query, and a sample stops being queried only when its *averaged* margin is
  negative; the caller re-judges every adversarial with MC-averaged predictions;
* host syncs: the rows still queried are looked up (one sync) only at the iterations
  :func:`~robustcompress.attacks.iterative.check_due` names (every one on CPU; 1, 2, 4, 8 and then
  every 8th on an accelerator); rows that fall in between are frozen on the device (queried but
  never updated), which changes no result when a row's scores do not depend on its batch (a
  stochastic model draws for them, so its draws, not the semantics, differ on an accelerator).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from robustcompress.attacks import iterative
from robustcompress.attacks.cw import margin
from robustcompress.attacks.draws import generator_scope
from robustcompress.attacks.registry import register_attack
from robustcompress.attacks.results import AttackResult
from robustcompress.attacks.threat import ThreatModel
from robustcompress.attacks.verdicts import finish
from robustcompress.errors import ThreatModelError, UserInputError

_P_SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64),
               (6000, 128), (8000, 256), (10000, 512))


def p_selection(p_init: float, it: int, n_queries: int) -> float:
    """Fraction of features changed at iteration ``it`` (the paper's schedule, for 10k queries).

    The iteration is first rescaled to a 10000-query budget, as in the reference code.
    """
    it = int(it / n_queries * 10000)
    for i, (stop, div) in enumerate(_P_SCHEDULE):
        start = 0 if i == 0 else _P_SCHEDULE[i - 1][0]
        if start < it <= stop:
            return p_init / div
    return p_init


@dataclass
class SquareOutput:
    x_adv: torch.Tensor
    margin: torch.Tensor
    queries: torch.Tensor


_MASK32 = 0xFFFFFFFF


def _mix32(h: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (Wang / Mueller), on int64 tensors holding values below 2**32."""
    h = h & _MASK32
    h = ((h ^ (h >> 16)) * 0x45D9F3B) & _MASK32
    h = ((h ^ (h >> 16)) * 0x45D9F3B) & _MASK32
    return h ^ (h >> 16)


def uniform_block(seeds: torch.Tensor, steps: torch.Tensor, stream: int, n: int) -> torch.Tensor:
    """``[B, S, n]`` uniforms in [0, 1) that depend only on (sample seed, step, stream, position).

    A counter-based generator: each sample's numbers are a hash of its own seed and counters, so
    the attack draws the same numbers for a sample whichever batch it is in and whichever other
    samples are still being attacked (the batch-size invariance the tests check); drawing many
    steps at once gives the same numbers as drawing them one by one.
    """
    pos = torch.arange(n, device=seeds.device, dtype=torch.int64)
    step_keys = _mix32(steps.to(device=seeds.device, dtype=torch.int64) * 7919 + stream * 104729)
    key = _mix32(seeds[:, None] + step_keys[None, :])
    h = _mix32(key[:, :, None] ^ _mix32(pos * 2654435 + 12345)[None, None, :])
    return h.to(torch.float64).div(2.0**32).float()


def sample_uniform(seeds: torch.Tensor, step: int, stream: int, n: int) -> torch.Tensor:
    """``[B, n]`` uniforms of one step (see :func:`uniform_block`)."""
    return uniform_block(seeds, torch.tensor([step]), stream, n)[:, 0]


def _signs(seeds: torch.Tensor, step: int, stream: int, shape: tuple[int, ...], like) -> torch.Tensor:
    u = sample_uniform(seeds, step, stream, int(torch.tensor(shape).prod()) if shape else 1)
    return torch.where(u < 0.5, -1.0, 1.0).to(like.dtype).view((seeds.shape[0],) + shape)


#: proposals per iteration at most: a fresh draw replaces one that would not change the point
_MAX_ATTEMPTS = 10


class _Draws:
    """Every sample's random numbers for a block of iterations, hashed in one pass (the per-step
    hashing was a third of the attack's own overhead): window positions ``[B, S, n_spatial]``
    and the per-channel signs of all proposal attempts ``[B, S, attempts, C]``."""

    def __init__(self, seeds: torch.Tensor, n_spatial: int, channels: int, n_queries: int):
        self.seeds, self.n_spatial, self.channels, self.n_queries = seeds, n_spatial, channels, n_queries
        self.span = max(1, min(100, 2_000_000 // max(1, seeds.numel() * _MAX_ATTEMPTS * channels)))
        self.start = None

    def at(self, it: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(window uniforms ``[B, n_spatial]``, signs ``[B, attempts, C]``) of iteration ``it``."""
        if self.start is None or not self.start <= it < self.start + self.span:
            self.start = it
            steps = torch.arange(it, min(it + self.span, self.n_queries), device=self.seeds.device)
            self.window = uniform_block(self.seeds, steps, 1, self.n_spatial)
            u = torch.stack([uniform_block(self.seeds, steps, 2 + a, self.channels)
                             for a in range(_MAX_ATTEMPTS)], dim=2)
            self.signs = torch.where(u < 0.5, -1.0, 1.0)
        j = it - self.start
        return self.window[:, j], self.signs[:, j]


def averaged_margin(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, targeted: bool, eot_samples: int
) -> torch.Tensor:
    """Margin loss per sample, averaged over ``eot_samples`` forward passes (no gradient)."""
    with torch.no_grad():
        total = margin(model(x), y, targeted)
        for _ in range(eot_samples - 1):
            total = total + margin(model(x), y, targeted)
    return total / eot_samples


def window_mask(spatial: tuple[int, ...], side: int, u: torch.Tensor) -> torch.Tensor:
    """``[n, 1, *spatial]`` boolean mask of one window of side ``side`` per sample, placed by the
    uniforms ``u`` ``[n, len(spatial)]``."""
    n, device = u.shape[0], u.device
    mask = None
    for d, size in enumerate(spatial):
        start = (u[:, d] * (size - side + 1)).long().clamp(max=size - side)
        pos = torch.arange(size, device=device)
        inside = (pos[None, :] >= start[:, None]) & (pos[None, :] < start[:, None] + side)
        view = [n, 1] + [1] * len(spatial)
        view[2 + d] = size
        mask = inside.view(view) if mask is None else mask & inside.view(view)
    return mask


def _unmoved(cand: torch.Tensor, xb: torch.Tensor, mask: torch.Tensor, lead: int) -> torch.Tensor:
    """Per proposal (the first ``lead`` axes): True if it leaves its window as ``xb`` (to 1e-7)."""
    return (((cand - xb).abs() < 1e-7) | ~mask).flatten(lead).all(dim=lead)


def _redraws(xc, xb, mask, signs, eps, lo, hi, sign_view) -> torch.Tensor:
    """Per row, the first of the draws ``signs[:, 1:]`` that moves the point (else the last)."""
    t, rest = xc.shape[0], _MAX_ATTEMPTS - 1
    s_rest = signs[:, 1:].view((t, rest) + sign_view)
    delta = (xb - xc)[:, None]
    cand = (xc[:, None] + torch.where(mask[:, None], eps * s_rest, delta)).clamp(lo, hi)
    moved = ~_unmoved(cand, xb[:, None], mask[:, None], 2)
    first = torch.where(moved.any(dim=1), moved.to(torch.uint8).argmax(dim=1), rest - 1)
    return cand[torch.arange(t, device=cand.device), first]


def _proposal(xc, xb, mask, signs, eps, lo, hi, sign_view, all_rows: bool = False) -> torch.Tensor:
    """The current best point with a fresh ``+-eps`` per channel in the window; where that would
    not change the point, the first of the next ``_MAX_ATTEMPTS - 1`` draws that does (else the
    last), as the reference's redraw loop does. The redraws are tried all at once, in row chunks
    of at most ~4M values: for the rows that need them (a host sync), or with ``all_rows`` for
    every row, kept where needed (no sync; the same result)."""
    n = xc.shape[0]
    first = eps * signs[:, 0].view((n,) + sign_view)
    x_new = (xc + torch.where(mask, first, xb - xc)).clamp(lo, hi)
    todo = _unmoved(x_new, xb, mask, 1)
    chunk = max(1, 4_000_000 // ((_MAX_ATTEMPTS - 1) * xc[0].numel()))
    if all_rows:
        for a in range(0, n, chunk):
            r = slice(a, a + chunk)
            redrawn = _redraws(xc[r], xb[r], mask[r], signs[r], eps, lo, hi, sign_view)
            x_new[r] = torch.where(todo[r].view((-1,) + (1,) * (xc.dim() - 1)), redrawn, x_new[r])
        return x_new
    for part in todo.nonzero().flatten().split(chunk):
        x_new[part] = _redraws(xc[part], xb[part], mask[part], signs[part], eps, lo, hi, sign_view)
    return x_new


def square_linf_perturb(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    bounds: tuple[float, float] = (0.0, 1.0),
    targeted: bool = False,
    n_queries: int = 5000,
    p_init: float = 0.8,
    eot_samples: int = 1,
    seeds: Optional[torch.Tensor] = None,
) -> SquareOutput:
    """Run Square-Linf on ``(x, y)``; see the module docstring.

    ``seeds`` (int64 ``[B]``, values below 2**31) key each sample's random stream; draw them in
    order from the caller's generator. Returns the best point found per sample (always inside the
    eps-ball and the box), its (averaged) margin (``< 0`` means adversarial) and the number of
    queries spent per sample (the initial point counts as one).
    """
    lo, hi = bounds
    x0 = x.detach()
    x_view = x0[:, None, :] if x0.dim() == 2 else x0  # flat features: one channel
    B, C = x_view.shape[:2]
    spatial = tuple(x_view.shape[2:])
    n_features = x_view[0].numel()
    dev = x0.device
    if seeds is None:
        seeds = torch.arange(B, device=dev, dtype=torch.int64)
    seeds = seeds.to(device=dev, dtype=torch.int64)

    def fwd_margin(xv: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return averaged_margin(model, xv.view((-1,) + x0.shape[1:]), y[idx], targeted, eot_samples)

    # initialisation: vertical stripes (one sign per channel and position along the last axis)
    stripe_shape = (C,) + (1,) * (len(spatial) - 1) + (spatial[-1],)
    x_best = (x_view + eps * _signs(seeds, 0, 0, stripe_shape, x0)).clamp(lo, hi)
    margin_best = fwd_margin(x_best, torch.arange(B, device=dev))
    queries = torch.ones(B, dtype=torch.long, device=dev)
    sign_view = (C,) + (1,) * len(spatial)
    draws = _Draws(seeds, len(spatial), C, n_queries)

    every = iterative.check_interval(dev)
    rows_view = (-1,) + (1,) * (x_view.dim() - 1)
    for it in range(1, n_queries):
        if iterative.check_due(it, every):  # the host drops the rows found adversarial: one sync
            idx = (margin_best >= 0).nonzero().flatten()
            if idx.numel() == 0:
                break
        mb = margin_best[idx]
        active = mb >= 0  # rows fallen since the last check are frozen: queried, never updated
        xc, xb = x_view[idx], x_best[idx]
        p = p_selection(p_init, it, n_queries)
        side = round((p * n_features / C) ** (1.0 / len(spatial)))
        side = max(1, min(side, min(spatial) - 1)) if min(spatial) > 1 else 1
        u_window, signs = draws.at(it)
        mask = window_mask(spatial, side, u_window[idx])
        signs = signs[idx].to(x0.dtype)
        x_new = _proposal(xc, xb, mask, signs, eps, lo, hi, sign_view, all_rows=every > 1)
        m_new = fwd_margin(x_new, idx)
        better = active & (m_new < mb)
        queries.index_add_(0, idx, active.long())
        margin_best.index_copy_(0, idx, torch.where(better, m_new, mb))
        x_best.index_copy_(0, idx, torch.where(better.view(rows_view), x_new, xb))
    return SquareOutput(x_best.view(x0.shape), margin_best, queries)


def _seeds(n: int, generator: Optional[torch.Generator]) -> torch.Tensor:
    """One stream key per sample, drawn in order (prefix-consistent on CPU generators)."""
    gdev = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(0, 2**31 - 1, (n,), generator=generator, device=gdev).cpu()


@register_attack("square", kind="black-box")
def square(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    *,
    n_queries: int = 5000,
    p_init: float = 0.8,
    eot_samples: int = 1,
    mc_samples: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
) -> AttackResult:
    """Square attack (Linf, score-based black box; Andriushchenko et al. 2020).

    Parameters
    ----------
    n_queries : query budget per sample (AutoAttack: 5000; lower it for quick runs).
    p_init : initial fraction of features changed per query (AutoAttack: 0.8).
    eot_samples : forward passes averaged per query for stochastic models (AutoAttack #56).
    mc_samples : draws for the final verdict (see :func:`robustcompress.attacks.verdicts.judge`).
    generator : the attack's random streams and the model's randomness come from it.

    ``extra["queries"]`` holds the queries spent per sample.
    """
    if threat.norm != "linf":
        raise ThreatModelError("the square attack is implemented for norm='linf' only; "
                               "use --norm linf or another attack for L2")
    if n_queries < 1:
        raise UserInputError(f"n_queries must be >= 1, got {n_queries}")
    seeds = _seeds(x.shape[0], generator)
    with generator_scope(model, generator):
        out = square_linf_perturb(
            model, x, y, eps=threat.eps, bounds=threat.bounds, targeted=threat.targeted,
            n_queries=n_queries, p_init=p_init, eot_samples=eot_samples, seeds=seeds,
        )
    params = {"n_queries": n_queries, "p_init": p_init, "eot_samples": eot_samples}
    return finish("square", params, model, x, y, out.x_adv, threat, mc_samples=mc_samples,
                  generator=generator, extra={"queries": out.queries})

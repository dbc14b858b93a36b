"""FAB: the Fast Adaptive Boundary attack (Linf and L2), untargeted, targeted and FAB-T.

Reference: Croce & Hein, "Minimally distorted Adversarial Examples with a Fast Adaptive Boundary
Attack", ICML 2020, Algorithm 1, and the structure of AutoAttack's ``fab_base.py`` (fra31/auto-attack).
Per step, from the iterate ``x_k`` (clean input ``x``):

* linearise the classifier at ``x_k`` and take the closest linearised decision hyperplane (in the
  dual norm) among ``f_j - f_y`` for every class ``j != y`` (untargeted), ``f_t - f_y`` (FAB-T:
  target ``t``, success = any misclassification) or ``f_t - f_c`` with ``c`` the strongest other
  class at ``x_k`` (targeted by the user: success = class ``t``);
* project ``x_k`` and ``x`` onto that hyperplane intersected with the box
  (:func:`project_hyperplane_box`: the exact minimal-norm point, Linf and L2), giving ``d_k``, ``d_0``;
* extrapolate: ``x_{k+1} = clip((1 - a)(x_k + eta d_k) + a (x + eta d_0))`` with the bias towards
  the clean input ``a = min(|d_k| / (|d_k| + |d_0|), alpha_max)``;
* if ``x_{k+1}`` is adversarial, keep it when it is the closest so far and step back towards ``x``:
  ``x_{k+1} = x + beta (x_{k+1} - x)``.

Restarts start from random points at half the radius ``min(eps, best distance)`` around ``x``
(uniform direction in the Linf cube, Gaussian in L2) and run only on the samples not yet broken
within ``eps``; FAB-T runs once per target among the top ``n_target_classes`` other classes of the
clean logits. Defaults are AutoAttack's (100 steps, ``alpha_max=0.1``, ``eta=1.05``, ``beta=0.9``).

Deviations: the paper's final search is the shared bisection along the segment from ``x``
(``boundary_search`` steps, :mod:`robustcompress.attacks.boundary`; AutoAttack has none); the Linf
and L2 projections solve the same problem as the reference's but by a sort and a cumulative sum
instead of a bisection over the sorted breakpoints (exact; when the hyperplane does not meet the box
the unconstrained projection is used and the point is clipped, as in the reference); with
``eps == 0`` restarts start around the best adversarial found (none: no restart); random starts
come from per-sample streams (:class:`~robustcompress.attacks.seeds.SampleNoise`), so results do
not depend on the batch size. Stochastic models get one draw per forward (no EOT).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from robustcompress.attacks.boundary import check_search_steps, tighten_to_boundary
from robustcompress.attacks.deepfool import candidate_gradients
from robustcompress.attacks.draws import bcast_rows, generator_scope
from robustcompress.attacks.fmn import lp_norm
from robustcompress.attacks.losses import mask_label
from robustcompress.attacks.registry import register_attack
from robustcompress.attacks.results import AttackResult
from robustcompress.attacks.seeds import SampleNoise
from robustcompress.attacks.threat import ThreatModel
from robustcompress.attacks.verdicts import finish_minimal
from robustcompress.errors import UserInputError


def project_hyperplane_box(t: torch.Tensor, w: torch.Tensor, c: torch.Tensor, norm: str,
                           lo: float, hi: float) -> torch.Tensor:
    """The smallest ``d [N, D]`` (Linf or L2) with ``w . d = c`` and ``lo <= t + d <= hi``.

    With ``c >= 0`` (else flip ``w``), the best step of size ``lam`` is ``d_i = sign(w_i) s_i
    min(lam, r_i)`` with ``r_i`` where coordinate ``i`` hits the box; ``w . d = g(lam) = sum_i a_i
    min(lam, r_i)`` (Linf: ``a = |w|, s = 1, r = room``; L2: ``a = w^2, s = |w|, r = room / |w|``)
    is piecewise linear and increasing, so the smallest ``lam`` with ``g(lam) = c`` is found
    exactly among the sorted breakpoints. Infeasible rows get the unconstrained projection.
    """
    flip = torch.where(c < 0, -1.0, 1.0).to(w.dtype)
    w, c = w * flip[:, None], c * flip
    aw = w.abs()
    active = aw > 0
    room = torch.where(w > 0, hi - t, t - lo).clamp_min(0)
    if norm == "linf":
        a, r, s = aw, room, torch.ones_like(aw)
    else:
        a, r, s = w * w, room / aw.clamp_min(1e-30), aw
    r = torch.where(active, r, torch.full_like(r, float("inf")))
    ar = torch.where(active, a * torch.where(active, r, torch.zeros_like(r)), torch.zeros_like(r))
    rs, order = r.sort(dim=1)
    cum_a, cum_ar = a.gather(1, order).cumsum(1), ar.gather(1, order).cumsum(1)
    total = cum_a[:, -1]
    g = cum_ar + rs * (total[:, None] - cum_a)  # g at each breakpoint
    ok = (g >= c[:, None]) & torch.isfinite(rs)
    feasible = ok.any(dim=1)
    k = ok.to(torch.int8).argmax(dim=1)
    zero = torch.zeros_like(total)
    prev = (k - 1).clamp_min(0)[:, None]
    before_ar = torch.where(k > 0, cum_ar.gather(1, prev)[:, 0], zero)
    before_a = torch.where(k > 0, cum_a.gather(1, prev)[:, 0], zero)
    lam_box = (c - before_ar) / (total - before_a).clamp_min(1e-30)
    lam = torch.where(feasible, lam_box, c / total.clamp_min(1e-30))
    cap = torch.where(feasible[:, None], r, torch.full_like(r, float("inf")))
    d = w.sign() * s * torch.minimum(lam[:, None], cap)
    return torch.where(active, d, torch.zeros_like(d)) * flip[:, None]


def _linearisation(model, x1, y, target, user_targeted: bool, classes=None):
    """``(f [B, K], g [B, K, ...])``: the linearised boundaries at ``x1`` (module doc);
    untargeted: against ``classes`` (:func:`_all_classes`)."""
    if target is None:
        _, picked, grads = candidate_gradients(model, x1, classes)
        return picked[:, 1:] - picked[:, :1], grads[:, 1:] - grads[:, :1]
    xi = x1.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(xi)
        base = mask_label(logits.detach(), target).argmax(dim=1) if user_targeted else y
        diff = logits.gather(1, target[:, None])[:, 0] - logits.gather(1, base[:, None])[:, 0]
        (g,) = torch.autograd.grad(diff.sum(), xi)
    return diff.detach()[:, None], g[:, None]


def _all_classes(model, x1, y):
    """``[B, C]``: each sample's label first, then every other class in order (the reference
    uses all); one forward of one sample for ``C``, and no host sync."""
    with torch.no_grad():
        n = model(x1[:1]).shape[1]
    k = torch.arange(n - 1, device=y.device).expand(y.shape[0], n - 1)
    return torch.cat([y[:, None], k + (k >= y[:, None]).to(k.dtype)], dim=1)


def fab_run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, start: torch.Tensor, goal, *,
            norm: str, bounds: tuple[float, float], steps: int, alpha_max: float, eta: float,
            beta: float, target: Optional[torch.Tensor] = None,
            user_targeted: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One FAB run from ``start`` (module docstring): closest adversarial and its norm (``inf``
    where none was found). ``goal(pred) -> bool [B]`` says which points are adversarial."""
    lo, hi = bounds
    b = x.shape[0]
    rows = torch.arange(b, device=x.device)
    x0, x1 = x.detach(), start.detach().clone()
    best_adv, best = x0.clone(), torch.full((b,), float("inf"), device=x.device, dtype=x.dtype)
    classes = _all_classes(model, x1, y) if target is None else None  # once, not per step
    for _ in range(steps):
        f, g = _linearisation(model, x1, y, target, user_targeted, classes)
        gf = g.flatten(2)
        dual = gf.abs().sum(2) if norm == "linf" else gf.norm(dim=2)
        j = (f.abs() / (dual + 1e-12)).argmin(dim=1)
        w, fj = gf[rows, j], f[rows, j]
        c0 = -fj - (w * (x0 - x1).flatten(1)).sum(1)
        d = project_hyperplane_box(torch.cat([x1.flatten(1), x0.flatten(1)]), torch.cat([w, w]),
                                   torch.cat([-fj, c0]), norm, lo, hi)
        size = lp_norm(d, norm).clamp_min(1e-8)
        a = (size[:b] / (size[:b] + size[b:])).clamp(0.0, alpha_max)
        d1, d0 = d[:b].view_as(x0), d[b:].view_as(x0)
        x1 = ((x1 + eta * d1) * bcast_rows(1 - a, x0) + (x0 + eta * d0) * bcast_rows(a, x0)).clamp(lo, hi)
        with torch.no_grad():
            adv = goal(model(x1).argmax(dim=1))
        dist = lp_norm(x1 - x0, norm)
        better = adv & (dist < best)
        best = torch.where(better, dist, best)
        best_adv = torch.where(bcast_rows(better, x0), x1, best_adv)
        x1 = torch.where(bcast_rows(adv, x0), x0 + beta * (x1 - x0), x1)
    return best_adv, best


def _random_start(x: torch.Tensor, radius: torch.Tensor, norm: str, noise: SampleNoise,
                  bounds: tuple[float, float]) -> torch.Tensor:
    """``x`` plus a random direction of size ``radius / 2`` (the reference's restart point)."""
    if norm == "linf":
        t = noise.rand(x) * 2 - 1
        t = t / bcast_rows(t.flatten(1).abs().amax(dim=1).clamp_min(1e-12), t)
    else:
        t = noise.randn(x)
        t = t / bcast_rows(t.flatten(1).norm(dim=1).clamp_min(1e-12), t)
    return (x + bcast_rows(radius / 2, x) * t).clamp(*bounds)


def fab_perturb(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
                targets: list, steps: int, restarts: int, alpha_max: float, eta: float, beta: float,
                generator: Optional[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
    """All runs: per entry of ``targets`` (``None``: untargeted; a ``[B]`` tensor: FAB-T's target,
    or the user's targets when ``threat.targeted``), ``restarts`` runs on the samples not yet
    broken within ``eps`` (``eps == 0``: every sample, for the smallest distance). Returns the
    closest adversarial per sample and its norm (``x`` and ``inf`` where none was found)."""
    user = threat.targeted
    goal = (lambda p, yy: p == yy) if user else (lambda p, yy: p != yy)
    with torch.no_grad():
        clean = goal(model(x).argmax(dim=1), y)
    best = torch.full(clean.shape, float("inf"), dtype=x.dtype, device=x.device).masked_fill(clean, 0.0)
    best_adv = x.detach().clone()
    noise = SampleNoise(x.shape[0], generator, x.device)
    limit = threat.eps if threat.eps > 0 else 0.0
    for target in targets:
        for r in range(restarts):
            radius = torch.minimum(best, torch.full_like(best, threat.eps if threat.eps > 0 else float("inf")))
            todo = (best > limit) & (torch.isfinite(radius) if r > 0 else True)
            idx = todo.nonzero().flatten()
            if idx.numel() == 0:
                continue
            xs, ys = x[idx], y[idx]
            start = xs if r == 0 else _random_start(xs, radius[idx], threat.norm,
                                                    noise.select(idx.tolist()), threat.bounds)
            adv, dist = fab_run(model, xs, ys, start, lambda p, yy=ys: goal(p, yy), norm=threat.norm,
                                bounds=threat.bounds, steps=steps, alpha_max=alpha_max, eta=eta,
                                beta=beta, target=None if target is None else target[idx],
                                user_targeted=user)
            better = dist < best[idx]
            best[idx] = torch.where(better, dist, best[idx])
            best_adv[idx] = torch.where(bcast_rows(better, xs), adv, best_adv[idx])
    return best_adv, best


def _check(steps, restarts, alpha_max, eta, beta, boundary_search) -> None:
    if int(steps) < 1 or int(restarts) < 1:
        raise UserInputError(f"fab needs steps >= 1 and restarts >= 1, got {steps}, {restarts}")
    if not (0 <= alpha_max <= 1 and eta > 0 and 0 < beta <= 1):
        raise UserInputError(f"fab needs 0 <= alpha_max <= 1, eta > 0 and 0 < beta <= 1, got "
                             f"{alpha_max}, {eta}, {beta} (defaults: 0.1, 1.05, 0.9)")
    check_search_steps(boundary_search)


def _finish(name, params, model, x, y, threat, adv, dist, boundary_search, mc_samples, generator):
    """Final search to the boundary, then judged as every minimal attack is."""
    crit = (lambda logits, t: logits.argmax(dim=1) == t) if threat.targeted else None
    kw = {"adversarial": crit} if crit is not None else {}
    out = tighten_to_boundary(model, x, adv, y, steps=boundary_search, bounds=threat.bounds, **kw)
    if out is not adv:
        moved = (out != adv).flatten(1).any(dim=1)
        dist = torch.where(moved, threat.norm_of(out - x), dist)
    return finish_minimal(name, params, model, x, y, out, dist, threat, mc_samples=mc_samples,
                          generator=generator, extra={})


@register_attack("fab", kind="minimal")
def fab(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
        steps: int = 100, restarts: int = 1, alpha_max: float = 0.1, eta: float = 1.05,
        beta: float = 0.9, boundary_search: int = 20, generator: Optional[torch.Generator] = None,
        mc_samples: Optional[int] = None) -> AttackResult:
    """FAB (Croce & Hein 2020) in the threat's norm: untargeted, or towards ``y`` when targeted.

    A minimal-perturbation attack: ``x_adv`` is the closest adversarial found (possibly outside the
    eps-ball); with ``threat.eps > 0`` success needs ``norm <= eps`` (and later restarts run only
    on samples not yet broken within it), with ``eps == 0`` any adversarial counts.
    ``extra["min_norm"]`` holds the distances (``inf`` where none was found).
    """
    _check(steps, restarts, alpha_max, eta, beta, boundary_search)
    with generator_scope(model, generator):
        adv, dist = fab_perturb(model, x, y, threat, targets=[y if threat.targeted else None],
                                steps=int(steps), restarts=int(restarts), alpha_max=alpha_max,
                                eta=eta, beta=beta, generator=generator)
        params = {"steps": int(steps), "restarts": int(restarts), "alpha_max": alpha_max, "eta": eta,
                  "beta": beta, "boundary_search": boundary_search}
        return _finish("fab", params, model, x, y, threat, adv, dist, boundary_search, mc_samples,
                       generator)


@register_attack("fab-t", kind="minimal")
def fab_t(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
          steps: int = 100, restarts: int = 1, n_target_classes: int = 9, alpha_max: float = 0.1,
          eta: float = 1.05, beta: float = 0.9, boundary_search: int = 20,
          generator: Optional[torch.Generator] = None,
          mc_samples: Optional[int] = None) -> AttackResult:
    """FAB-T (AutoAttack's targeted FAB): FAB towards each of the top ``n_target_classes`` other
    classes of the clean logits in turn; success = any misclassification (untargeted goal)."""
    if threat.targeted:
        raise UserInputError("fab-t picks its own targets; use fab with a targeted threat for "
                             "user-given targets")
    _check(steps, restarts, alpha_max, eta, beta, boundary_search)
    with generator_scope(model, generator):
        with torch.no_grad():
            order = model(x).sort(dim=1, descending=True).indices
        k = max(1, min(int(n_target_classes), order.shape[1] - 1))
        targets = [order[:, r] for r in range(1, k + 1)]
        adv, dist = fab_perturb(model, x, y, threat, targets=targets, steps=int(steps),
                                restarts=int(restarts), alpha_max=alpha_max, eta=eta, beta=beta,
                                generator=generator)
        params = {"steps": int(steps), "restarts": int(restarts), "n_target_classes": k,
                  "alpha_max": alpha_max, "eta": eta, "beta": beta, "boundary_search": boundary_search}
        return _finish("fab-t", params, model, x, y, threat, adv, dist, boundary_search, mc_samples,
                       generator)

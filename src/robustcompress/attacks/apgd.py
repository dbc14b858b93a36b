"""APGD: Auto-PGD with momentum and an automatic step-size schedule (CE and DLR losses), and APGD-T.

Reference: Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020, Algorithm 1, and the reference code fra31/auto-attack @a392200
(``autopgd_base.py``), whose constants are kept:

* start: ``x0 = x + eps * t / ||t||_inf`` with ``t ~ U[-1, 1]^d`` (Linf) or ``x0 = x + eps * n / ||n||_2``
  with ``n ~ N(0, I)`` (L2), clipped to the box; step size ``eta = 2 eps`` per sample;
* step: ``z = P(x_k + eta * steepest(grad))``, ``x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1}))``
  with momentum ``a = 0.75`` (``a = 1`` on the first step);
* checkpoints: first after ``max(int(0.22 N), 1)`` steps, then the interval shrinks by
  ``max(int(0.03 N), 1)`` down to ``max(int(0.06 N), 1)``; at a checkpoint eta is halved and the
  iterate reset to the best point for every sample whose loss increased in at most ``0.75 k`` of
  the last ``k`` steps (condition 1), or whose step was not reduced at the previous checkpoint and
  whose best loss did not improve since (condition 2);
* 100 iterations by default (torchattacks' port silently uses 10: we do not), restarts on the
  samples not yet fooled only;
* APGD-T (:func:`apgd_t`): targeted DLR loss against each of the top ``n_target_classes`` (9)
  other classes of the clean prediction in turn, success = any misclassification.

Deviations: (1) the oscillation count of the first checkpoint compares the first step's loss with
the loss at the start point (the reference compares it with a zero-initialised buffer row);
(2) the returned point per sample is the successful iterate with the largest loss, else the
largest-loss iterate (the reference returns the last successful iterate, else the clean input);
(3) with EOT, success during the run is judged on the logits averaged over the draws (the
reference uses the last draw); the final verdict is always the MC-averaged prediction.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from robustcompress.attacks.draws import bcast_rows, input_gradient, objective
from robustcompress.attacks.iterative import Best, default_early_stop, evaluate_point, finish_best
from robustcompress.attacks.losses import LossFn, dlr_targeted_loss, loss_label, resolve_loss
from robustcompress.attacks.registry import register_attack
from robustcompress.attacks.results import AttackResult
from robustcompress.attacks.seeds import SampleNoise
from robustcompress.attacks.threat import ThreatModel
from robustcompress.attacks.verdicts import reached_goal
from robustcompress.errors import UserInputError

MOMENTUM = 0.75
RHO = 0.75


def checkpoints(steps: int) -> list[int]:
    """The iterations (1-based counts) after which APGD checks its step size."""
    first, shrink, minimum = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    out, k, at = [], first, first
    while at <= steps:
        out.append(at)
        k = max(k - shrink, minimum)
        at += k
    return out


def apgd_start(x: torch.Tensor, threat: ThreatModel, noise: SampleNoise) -> torch.Tensor:
    """The reference's random start (see module doc), clipped to the box."""
    if threat.norm == "linf":
        t = noise.rand(x) * 2 - 1
        t = t / bcast_rows(t.flatten(1).abs().amax(1).clamp_min(1e-12), t)
    else:
        t = noise.randn(x)
        t = t / bcast_rows(t.flatten(1).norm(dim=1).clamp_min(1e-12), t)
    return threat.clip(x + threat.eps * t)


def apgd_run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    x_start: torch.Tensor,
    *,
    steps: int = 100,
    loss: Union[str, LossFn] = "ce",
    y_loss: Optional[torch.Tensor] = None,
    eot_samples: Optional[int] = 1,
    generator: Optional[torch.Generator] = None,
    max_rows: Optional[int] = None,
) -> Best:
    """One APGD run from ``x_start`` (Algorithm 1); returns the best iterate per sample.

    ``y`` decides success; ``y_loss`` (default ``y``) is what the loss receives, e.g. stacked
    ``(label, target)`` pairs for the targeted DLR loss.
    """
    fn = resolve_loss(loss)
    y_loss = y if y_loss is None else y_loss
    kw = dict(loss=fn, eot_samples=eot_samples, generator=generator, targeted=threat.targeted,
              max_rows=max_rows)
    b = x.shape[0]
    x_adv = x_start.detach().clone()
    obj, grad, logits = input_gradient(model, x_adv, y_loss, return_logits=True, **kw)
    best = Best.empty(x_adv)
    best.update(None, x_adv, obj.to(x.dtype), reached_goal(logits.argmax(1), y, threat.targeted), logits)
    x_max, f_max, g_max = x_adv.clone(), obj.clone(), grad.clone()
    eta = torch.full((b,), 2.0 * threat.eps, device=x.device, dtype=x.dtype)
    x_prev = x_adv.clone()
    history = [obj]  # objective at the start point, then after each step
    checks = set(checkpoints(steps))
    last_check = 0
    f_max_at_check = f_max.clone()
    reduced_at_check = torch.ones(b, dtype=torch.bool, device=x.device)
    for i in range(1, steps + 1):
        grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
        a = MOMENTUM if i > 1 else 1.0
        z = threat.project(x_adv + bcast_rows(eta, x) * threat.steepest(grad), x)
        x_new = threat.project(x_adv + a * (z - x_adv) + (1 - a) * (x_adv - x_prev), x)
        x_prev, x_adv = x_adv, x_new
        obj, grad, logits = input_gradient(model, x_adv, y_loss, return_logits=True, **kw)
        best.update(None, x_adv, obj.to(x.dtype), reached_goal(logits.argmax(1), y, threat.targeted),
                    logits)
        history.append(obj)
        up = obj > f_max  # torch.where, not boolean indexing: no host sync per step on a GPU
        x_max = torch.where(bcast_rows(up, x), x_adv, x_max)
        g_max = torch.where(bcast_rows(up, x), grad, g_max)
        f_max = torch.where(up, obj, f_max)
        if i in checks:
            k = i - last_check
            steps_up = (torch.stack(history[-k:]) > torch.stack(history[-k - 1:-1])).sum(0)
            oscillating = steps_up <= k * RHO
            stalled = ~reduced_at_check & (f_max_at_check >= f_max)
            reduce = oscillating | stalled
            reduced_at_check, f_max_at_check, last_check = reduce, f_max.clone(), i
            eta = torch.where(reduce, eta / 2, eta)
            x_adv = torch.where(bcast_rows(reduce, x), x_max, x_adv)
            grad = torch.where(bcast_rows(reduce, x), g_max, grad)
    return best


def _attack(model, x, y, threat, runs, *, steps, restarts, early_stop, generator, eot_samples,
            max_rows) -> Best:
    """Clean point, then ``restarts`` APGD runs per loss target in ``runs`` on not-yet-fooled samples."""
    kw = dict(eot_samples=eot_samples, generator=generator, max_rows=max_rows)
    best = _clean(model, x, y, threat, kw)
    noise = SampleNoise(x.shape[0], generator, x.device)
    for run_loss, y_loss in runs:
        for _ in range(restarts):
            idx, rows = best.pending(early_stop)  # None: all rows
            if rows == []:
                return best
            xs, ys, yl = (x, y, y_loss) if idx is None else (x[idx], y[idx], _rows(y_loss, idx))
            start = apgd_start(xs, threat, noise if rows is None else noise.select(rows))
            best.merge(idx, apgd_run(model, xs, ys, threat, start, steps=steps, loss=run_loss,
                                     y_loss=yl, **kw))
    return best


def _rows(t: Optional[torch.Tensor], idx: torch.Tensor) -> Optional[torch.Tensor]:
    return None if t is None else t[idx]


def _clean(model, x, y, threat, kw) -> Best:
    """The clean inputs as the first candidates (scored with CE so any loss can be compared later).

    Only its success flag matters for later candidates from a run (a failing clean point has
    objective -inf so every iterate of a run beats it).
    """
    b = evaluate_point(model, x, y, threat, loss="ce", **kw)
    b.obj = torch.where(b.success, b.obj, torch.full_like(b.obj, float("-inf")))
    return b


def _params(steps, restarts, loss, eot_samples, **more) -> dict:
    return {"steps": steps, "restarts": restarts, "loss": loss_label(loss),
            "eot_samples": eot_samples, "momentum": MOMENTUM, "rho": RHO, **more}


@register_attack("apgd", kind="white-box")
def apgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    *,
    steps: int = 100,
    restarts: int = 1,
    loss: Union[str, LossFn] = "ce",
    early_stop: Optional[bool] = None,
    generator: Optional[torch.Generator] = None,
    eot_samples: Optional[int] = 1,
    mc_samples: Optional[int] = None,
    max_rows: Optional[int] = None,
) -> AttackResult:
    """APGD (Croce & Hein 2020) with the CE (``loss="ce"``) or DLR (``loss="dlr"``) loss.

    Parameters
    ----------
    steps : iterations per run (100, as in the reference).
    restarts : runs from fresh random starts, each on the samples not yet fooled.
    loss : ``"ce"``, ``"dlr"`` (untargeted only), ``"cw"`` or a callable.
    early_stop : skip samples already fooled in later restarts (default: True for deterministic
        models, False for stochastic ones).
    generator, eot_samples, mc_samples, max_rows : as in :func:`~robustcompress.attacks.pgd.pgd`.
    """
    steps, restarts = int(steps), int(restarts)
    if steps < 1 or restarts < 1:
        raise UserInputError(f"apgd needs steps >= 1 and restarts >= 1, got {steps}, {restarts}")
    if threat.targeted and loss == "dlr":
        raise UserInputError("targeted APGD with loss='dlr' needs the true labels; use loss='ce' or "
                             "'cw', or the apgd-t attack (AutoAttack's targeted DLR over top classes)")
    best = _attack(model, x, y, threat, [(loss, None)], steps=steps, restarts=restarts,
                   early_stop=default_early_stop(model, early_stop), generator=generator,
                   eot_samples=eot_samples, max_rows=max_rows)
    return finish_best("apgd", _params(steps, restarts, loss, eot_samples), model, x, y, best, threat,
                       mc_samples=mc_samples, generator=generator)


def _dlr_targeted_pair(logits: torch.Tensor, pair: torch.Tensor) -> torch.Tensor:
    return dlr_targeted_loss(logits, pair[:, 0], pair[:, 1])


@register_attack("apgd-t", kind="white-box")
def apgd_t(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    *,
    steps: int = 100,
    restarts: int = 1,
    n_target_classes: int = 9,
    early_stop: Optional[bool] = None,
    generator: Optional[torch.Generator] = None,
    eot_samples: Optional[int] = 1,
    mc_samples: Optional[int] = None,
    max_rows: Optional[int] = None,
) -> AttackResult:
    """APGD-T: targeted DLR towards each of the top ``n_target_classes`` wrong classes in turn.

    An *untargeted* attack (success = misclassification), as in AutoAttack's standard version;
    targets are ranked by the clean (MC-averaged) logits. Needs at least 4 classes.
    """
    if threat.targeted:
        raise UserInputError("apgd-t picks its own targets; use apgd with loss='ce' for user-given targets")
    _, logits = objective(model, x, y, loss="ce", eot_samples=eot_samples, generator=generator,
                          max_rows=max_rows)
    n_classes = logits.shape[1]
    if n_classes < 4:
        raise UserInputError("apgd-t needs at least 4 classes; use apgd")
    order = logits.sort(dim=1, descending=True).indices
    k = max(1, min(int(n_target_classes), n_classes - 1))
    runs = []
    for r in range(1, k + 1):  # the r-th largest logit other than the top one (reference: -target_class)
        runs.append((_dlr_targeted_pair, torch.stack([y, order[:, r]], dim=1)))
    best = _attack(model, x, y, threat, runs, steps=int(steps), restarts=int(restarts),
                   early_stop=default_early_stop(model, early_stop), generator=generator,
                   eot_samples=eot_samples, max_rows=max_rows)
    return finish_best("apgd-t", _params(int(steps), int(restarts), "dlr-targeted", eot_samples,
                                         n_target_classes=k),
                       model, x, y, best, threat, mc_samples=mc_samples, generator=generator)

"""Verdicts: whether an adversarial input reached the attacker's goal, and the attack's result.

* :func:`judge`: Monte-Carlo averaged predictions, the verdict a robust-accuracy figure is
  computed from (a sample is robust only under the averaged prediction; ``fooled_any`` also
  reports "fooled in at least one of n draws"). With a single draw (deterministic models) the
  verdict is the argmax of the logits themselves, exactly what a user re-predicting gets (softmax
  can round two nearly equal logits to equal probabilities).
* :func:`finish` and :func:`finish_minimal`: project (or clip), judge and build the
  :class:`~robustcompress.attacks.results.AttackResult` every attack returns.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from robustcompress.attacks.draws import DEFAULT_MC_SAMPLES, draw_logits, resolve_draws
from robustcompress.attacks.results import AttackResult
from robustcompress.attacks.threat import ThreatModel
from robustcompress.nn.protocol import is_stochastic


def prediction(logits: torch.Tensor) -> torch.Tensor:
    """The predicted class ``[B]`` from the logits of ``n`` draws ``[n, B, C]`` (see
    :func:`~robustcompress.attacks.draws.draw_logits`).

    One draw (deterministic models): the argmax of the logits, exactly what re-predicting the
    input gives; two logits closer than float rounding would tie after softmax and could give
    another class. Several draws: the argmax of the mean softmax (the MC-averaged prediction).
    """
    if logits.shape[0] == 1:
        return logits[0].argmax(dim=1)
    return F.softmax(logits, dim=2).mean(0).argmax(dim=1)


def within_budget(norm: torch.Tensor, eps: float) -> torch.Tensor:
    """``norm <= eps`` up to float rounding (relative 1e-6, absolute 1e-12)."""
    return norm <= eps * (1 + 1e-6) + 1e-12


def reached_goal(pred: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Misclassified (untargeted) or classified as the target (targeted)."""
    return pred == y if targeted else pred != y


def judge(
    model: nn.Module,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    mc_samples: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    batch_size: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(success, fooled_any, pred)`` of ``x_adv`` under MC-averaged predictions.

    ``success``: the prediction (:func:`prediction`: the logits' argmax for a deterministic model,
    the MC-averaged softmax's for a stochastic one) reaches the goal; ``fooled_any``: at least one
    draw's own prediction (the argmax of its logits) does.
    """
    logits = draw_logits(model, x_adv, mc_samples=mc_samples, generator=generator, batch_size=batch_size)
    pred = prediction(logits)
    success = reached_goal(pred, y, threat.targeted)
    fooled_any = reached_goal(logits.argmax(dim=2), y.unsqueeze(0), threat.targeted).any(dim=0)
    return success, fooled_any | success, pred


def finish(
    attack: str,
    params: dict,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    x_adv: torch.Tensor,
    threat: ThreatModel,
    *,
    mc_samples: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    project: bool = True,
    logits: Optional[torch.Tensor] = None,
    extra: Optional[dict] = None,
) -> AttackResult:
    """Project ``x_adv`` into the threat model (if ``project``), judge it and build the result.

    Without projection (minimal-perturbation attacks) ``success`` additionally requires the
    perturbation to fit the budget. ``logits`` of exactly ``x_adv`` (already inside the threat
    model) spare the final forward pass for a deterministic model; stochastic models are always
    judged afresh on ``mc_samples`` draws.
    """
    x_adv = x_adv.detach()
    norm = threat.norm_of(x_adv - x)
    reuse = (  # a stochastic model's point is judged by fresh draws, never by the crafting draw
        logits is not None
        and not is_stochastic(model)
        and resolve_draws(model, mc_samples, DEFAULT_MC_SAMPLES) == 1
        and bool(_reusable(logits, x_adv, norm, threat))
    )
    if reuse:
        pred = logits.argmax(dim=1)
        success = reached_goal(pred, y, threat.targeted)
        return AttackResult(x_adv, success, success.clone(), pred, norm, attack, dict(params),
                            dict(extra or {}))
    if project:
        x_adv = threat.project(x_adv, x).detach()
    return _judged(attack, params, model, x, y, x_adv, threat, budget=not project,
                   mc_samples=mc_samples, generator=generator, extra=dict(extra or {}))


def _reusable(logits: torch.Tensor, x_adv: torch.Tensor, norm: torch.Tensor,
              threat: ThreatModel) -> torch.Tensor:
    """No NaN logits, every point in the ball and the box: one device flag (one host sync)."""
    in_box = ((x_adv >= threat.bounds[0]) & (x_adv <= threat.bounds[1])).all()
    return ~torch.isnan(logits).any() & within_budget(norm, threat.eps).all() & in_box


def finish_minimal(attack: str, params: dict, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   x_adv: torch.Tensor, min_norm: torch.Tensor, threat: ThreatModel, *,
                   mc_samples: Optional[int], generator: Optional[torch.Generator],
                   extra: dict) -> AttackResult:
    """Judge the result of a minimal-perturbation attack (shared by C&W and DeepFool).

    ``x_adv`` is clipped to the box but not projected onto the ball; it is judged with the
    MC-averaged prediction, and with ``threat.eps > 0`` a success also needs ``norm <= eps``
    (``eps == 0``: no budget). ``extra["min_norm"]`` keeps the attack's own minimal norms.
    """
    return _judged(attack, params, model, x, y, threat.clip(x_adv).detach(), threat,
                   budget=threat.eps > 0, mc_samples=mc_samples, generator=generator,
                   extra={"min_norm": min_norm, **extra})


def _judged(attack: str, params: dict, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
            x_adv: torch.Tensor, threat: ThreatModel, *, budget: bool, mc_samples: Optional[int],
            generator: Optional[torch.Generator], extra: dict) -> AttackResult:
    """Judge ``x_adv`` afresh; with ``budget`` a success also needs the perturbation to fit eps."""
    norm = threat.norm_of(x_adv - x)
    success, fooled_any, pred = judge(model, x_adv, y, threat, mc_samples, generator)
    if budget:
        fits = within_budget(norm, threat.eps)
        success, fooled_any = success & fits, fooled_any & fits
    return AttackResult(x_adv, success, fooled_any, pred, norm, attack, dict(params), extra)


__all__ = ["finish", "finish_minimal", "judge", "prediction", "reached_goal", "within_budget"]

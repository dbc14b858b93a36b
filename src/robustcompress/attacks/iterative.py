"""The shared core of the iterative gradient attacks (BIM, PGD, MIM): steps, best-iterate tracking.

One step is ``x <- Proj_{ball ∩ box}(x + a * steepest(g))`` with ``steepest`` the unit-size
steepest-ascent direction of the threat model's norm (``sign`` for Linf, ``g / ||g||_2`` for L2)
and ``g`` the input gradient of the per-sample attacker objective (optionally with MI-FGSM momentum,
the gradient then being L1-normalised per sample). Every iterate is evaluated, and per sample the
best one is kept: successful iterates beat unsuccessful ones, and among equals the larger objective
wins (as AutoAttack keeps its best point). With ``early_stop`` a sample leaves the batch at its first
success, which saves forwards without changing any other sample's result.

On a randomized model a "success" seen while crafting is one random draw, so keeping the best
iterate would count a point as broken if any single draw along the way misclassified it (the
paper-protocol number then falls towards 0 with the step count). There the *final* iterate is
returned (as the papers' PGD did) and judged afresh by :func:`~robustcompress.attacks.verdicts.finish`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import nn

from robustcompress.attacks.draws import bcast_rows, input_gradient, objective
from robustcompress.attacks.losses import LossFn
from robustcompress.attacks.results import AttackResult
from robustcompress.attacks.threat import ThreatModel
from robustcompress.attacks.verdicts import finish, reached_goal
from robustcompress.nn.protocol import is_stochastic


@dataclass
class Best:
    """Per-sample best iterate: successes first, then the larger attacker objective.

    ``logits`` holds the (EOT-averaged) logits of each kept point, so that a deterministic model
    need not be run again to judge the result (see :func:`~robustcompress.attacks.verdicts.finish`).
    """

    x: torch.Tensor
    obj: torch.Tensor
    success: torch.Tensor
    logits: Optional[torch.Tensor] = None

    @classmethod
    def empty(cls, x: torch.Tensor) -> "Best":
        b = x.shape[0]
        return cls(
            x.detach().clone(),
            torch.full((b,), float("-inf"), device=x.device, dtype=x.dtype),
            torch.zeros(b, dtype=torch.bool, device=x.device),
        )

    def update(self, idx: torch.Tensor, x: torch.Tensor, obj: torch.Tensor, success: torch.Tensor,
               logits: Optional[torch.Tensor] = None) -> None:
        """Offer candidates ``x`` (rows ``idx`` of the batch) with their objective and success."""
        old_s, old_obj = self.success[idx], self.obj[idx]
        better = (success & ~old_s) | ((success == old_s) & (obj > old_obj))
        # rows that are not better are written back unchanged: no boolean indexing, so no host
        # sync per attack step on a GPU (``idx[better]`` needs the count on the host)
        keep = bcast_rows(better, x)
        self.x.index_copy_(0, idx, torch.where(keep, x.detach(), self.x[idx]))
        self.obj.index_copy_(0, idx, torch.where(better, obj.to(self.obj.dtype), old_obj))
        self.success.index_copy_(0, idx, torch.where(better, success, old_s))
        if logits is not None:
            if self.logits is None:
                self.logits = torch.full((self.x.shape[0], logits.shape[1]), float("nan"),
                                         device=logits.device, dtype=logits.dtype)
            rows = better[:, None]
            self.logits.index_copy_(0, idx, torch.where(rows, logits.detach(), self.logits[idx]))

    def merge(self, idx: torch.Tensor, other: "Best") -> None:
        self.update(idx, other.x, other.obj, other.success, other.logits)

    def pending(self, early_stop: bool) -> torch.Tensor:
        """Rows a further restart attacks: those not yet fooled (``early_stop``), else all rows."""
        if early_stop:
            return (~self.success).nonzero().squeeze(1)
        return torch.arange(self.success.shape[0], device=self.success.device)


def evaluate_point(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    *,
    loss: Union[str, LossFn] = "ce",
    eot_samples: Optional[int] = 1,
    generator: Optional[torch.Generator] = None,
    max_rows: Optional[int] = None,
) -> Best:
    """A :class:`Best` holding ``x`` itself (e.g. the clean inputs: already-misclassified ones win)."""
    obj, logits = objective(
        model, x, y, loss=loss, eot_samples=eot_samples, generator=generator,
        targeted=threat.targeted, max_rows=max_rows,
    )
    return Best(x.detach().clone(), obj.to(x.dtype), reached_goal(logits.argmax(1), y, threat.targeted),
                logits)


def iterate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    x_start: torch.Tensor,
    *,
    steps: int,
    step_size: float,
    loss: Union[str, LossFn] = "ce",
    eot_samples: Optional[int] = 1,
    generator: Optional[torch.Generator] = None,
    early_stop: bool = True,
    momentum: Optional[float] = None,
    max_rows: Optional[int] = None,
) -> Best:
    """Run ``steps`` projected steepest-ascent steps from ``x_start``; return the best iterates.

    Costs ``steps`` forward+backward passes and one final forward (times the EOT draws), on the
    samples still active. ``momentum`` (MI-FGSM decay ``mu``) accumulates
    ``g <- mu * g + grad / ||grad||_1`` per sample before the steepest-ascent direction is taken.
    NaN/inf gradient entries are treated as zero.
    """
    best = Best.empty(x_start)
    final_only = is_stochastic(model)  # noisy verdicts: keep the final point (module docstring)
    x_adv = x_start.detach().clone()
    n = x.shape[0]
    active = torch.arange(n, device=x.device)
    velocity = torch.zeros_like(x) if momentum is not None else None
    kw = dict(loss=loss, eot_samples=eot_samples, generator=generator, targeted=threat.targeted,
              max_rows=max_rows)
    for t in range(steps + 1):
        everyone = active.numel() == n  # skip gathers/scatters while no sample has left
        xa, ya, xc = (x_adv, y, x) if everyone else (x_adv[active], y[active], x[active])
        if t < steps:
            obj, grad, logits = input_gradient(model, xa, ya, return_logits=True, **kw)
        else:
            obj, logits = objective(model, xa, ya, **kw)
        success = reached_goal(logits.argmax(1), ya, threat.targeted)
        if not final_only or t == steps:
            best.update(active, xa, obj.to(x.dtype), success, logits)
        if t == steps:
            break
        if early_stop and bool(success.any()):
            if final_only:  # a sample leaving now ends at this point
                best.update(active[success], xa[success], obj[success].to(x.dtype),
                            success[success], logits[success])
            keep = ~success
            active, xa, xc, grad = active[keep], xa[keep], xc[keep], grad[keep]
            if active.numel() == 0:
                break
            everyone = False
        grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
        if velocity is not None:
            l1 = grad.abs().flatten(1).sum(1).clamp_min(1e-12)
            grad = momentum * (velocity if everyone else velocity[active]) + grad / bcast_rows(l1, grad)
            if everyone:
                velocity = grad
            else:
                velocity[active] = grad
        stepped = threat.project(xa + step_size * threat.steepest(grad), xc)
        if everyone:
            x_adv = stepped
        else:
            x_adv[active] = stepped
    return best


def finish_best(attack: str, params: dict, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                best: Best, threat: ThreatModel, *, mc_samples: Optional[int],
                generator: Optional[torch.Generator]) -> AttackResult:
    """:func:`~robustcompress.attacks.verdicts.finish` on the best iterates, reusing their logits.

    ``extra["objective"]`` is the attacker objective of each returned point.
    """
    return finish(attack, params, model, x, y, best.x, threat, mc_samples=mc_samples,
                  generator=generator, logits=best.logits, extra={"objective": best.obj})


def default_step_size(eps: float, steps: int) -> float:
    """Madry et al. (2018)'s rule ``2.5 * eps / steps``: enough to cross the ball and come back."""
    return 2.5 * eps / max(int(steps), 1)


def default_early_stop(model: nn.Module, early_stop: Optional[bool]) -> bool:
    """Early stopping is safe for deterministic models only: under noise a success is not final."""
    return (not is_stochastic(model)) if early_stop is None else bool(early_stop)

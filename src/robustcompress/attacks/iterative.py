"""The shared core of the iterative gradient attacks (BIM, PGD, MIM): steps, best-iterate tracking.

One step is ``x <- Proj_{ball ∩ box}(x + a * steepest(g))`` with ``steepest`` the unit-size
steepest-ascent direction of the threat model's norm (``sign`` for Linf, ``g / ||g||_2`` for L2)
and ``g`` the input gradient of the per-sample attacker objective (optionally with MI-FGSM momentum,
the gradient then being L1-normalised per sample). Every iterate is evaluated, and per sample the
best one is kept: successful iterates beat unsuccessful ones, and among equals the larger objective
wins (as AutoAttack keeps its best point). With ``early_stop`` a sample stops at its first success,
which saves forwards without changing any other sample's result.

Early stopping without a host sync per step: a sample that reaches its goal is *frozen* on the
device (its point stays, it takes no further step and offers no further candidate), and the host
looks at which samples are still running, and drops the frozen ones from the batch, only at the
iterates :func:`check_due` names (:func:`check_interval`: every iterate on CPU, where looking costs
nothing; 0, 1, 2, 4, 8 and then every :data:`CHECK_EVERY`-th on an accelerator). Results equal those
of dropping each sample at once whenever the model's per-sample outputs do not depend on which
other rows share its batch (deterministic models without batch statistics); the frozen rows only
cost forwards until the next check.

On a randomized model a "success" seen while crafting is one random draw, so keeping the best
iterate would count a point as broken if any single draw along the way misclassified it (the
paper-protocol number then falls towards 0 with the step count). There the *final* iterate is
returned (as the papers' PGD did), or with ``early_stop`` the point at which the sample left, and
judged afresh by :func:`~robustcompress.attacks.verdicts.finish`. (Frozen rows there still draw
randomness until the next check, so on an accelerator the draws, not the semantics, differ from a
per-step drop.)
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

#: On an accelerator the host checks for finished samples at iterates 0, 1, 2, 4, ... (powers of
#: two below this) and then at every multiple of it: one host sync per check instead of one or
#: more per step, against at most ``CHECK_EVERY - 1`` wasted steps per late-finishing sample
#: (most samples that fall do so in the first few steps, which the doubling start covers).
#: A reasoned value, not yet a GPU measurement. CPU checks every iterate: forcing 8 there cost 5-15%
#: more time on ResNet-20 (forwards of frozen rows) for no gain.
CHECK_EVERY = 8


def check_interval(device: torch.device) -> int:
    """Iterates between host checks on ``device``: 1 on CPU (no host/device queue to stall)."""
    return 1 if torch.device(device).type == "cpu" else CHECK_EVERY


def check_due(t: int, every: int) -> bool:
    """True if the host looks at iterate ``t``: multiples of ``every`` and powers of two below it."""
    return t % every == 0 or (t < every and t & (t - 1) == 0)


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

    def update(self, idx: Optional[torch.Tensor], x: torch.Tensor, obj: torch.Tensor,
               success: torch.Tensor, logits: Optional[torch.Tensor] = None,
               mask: Optional[torch.Tensor] = None) -> None:
        """Offer candidates ``x`` for rows ``idx`` of the batch (``None``: all rows, in order).

        ``mask`` (per candidate) limits the offer to some rows. Rows that are not better are
        written back unchanged (``torch.where``, no boolean indexing): no host sync.
        """
        old_s, old_obj = self._rows(idx, self.success), self._rows(idx, self.obj)
        better = (success & ~old_s) | ((success == old_s) & (obj > old_obj))
        if mask is not None:
            better = better & mask
        keep = bcast_rows(better, x)
        self.x = self._put(idx, self.x, torch.where(keep, x.detach(), self._rows(idx, self.x)))
        self.obj = self._put(idx, self.obj, torch.where(better, obj.to(self.obj.dtype), old_obj))
        self.success = self._put(idx, self.success, torch.where(better, success, old_s))
        if logits is not None:
            if self.logits is None:
                self.logits = torch.full((self.x.shape[0], logits.shape[1]), float("nan"),
                                         device=logits.device, dtype=logits.dtype)
            new = torch.where(better[:, None], logits.detach(), self._rows(idx, self.logits))
            self.logits = self._put(idx, self.logits, new)

    @staticmethod
    def _rows(idx: Optional[torch.Tensor], t: torch.Tensor) -> torch.Tensor:
        return t if idx is None else t[idx]

    @staticmethod
    def _put(idx: Optional[torch.Tensor], t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return rows if idx is None else t.index_copy_(0, idx, rows)

    def merge(self, idx: Optional[torch.Tensor], other: "Best") -> None:
        self.update(idx, other.x, other.obj, other.success, other.logits)

    def pending(self, early_stop: bool) -> tuple[Optional[torch.Tensor], Optional[list[int]]]:
        """Rows a further restart attacks, on the device and as a host list; ``(None, None)``: all.

        With ``early_stop`` those not yet fooled (one host sync: this runs once per restart),
        else every row.
        """
        if not early_stop:
            return None, None
        rows = (~self.success).cpu().nonzero().squeeze(1)
        if rows.numel() == self.success.shape[0]:
            return None, None
        return rows.to(self.success.device), rows.tolist()


@dataclass
class Running:
    """The rows an :func:`iterate` run still computes on: current iterates and what they need.

    ``idx`` maps them to the run's batch (``None``: all rows, in order); ``alive`` marks those not
    yet frozen (``None``: all). Frozen rows stay until :meth:`compact` drops them.
    """

    idx: Optional[torch.Tensor]
    x_adv: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    velocity: Optional[torch.Tensor] = None
    alive: Optional[torch.Tensor] = None

    def freeze(self, done: torch.Tensor) -> None:
        """Freeze the rows that are ``done`` (on the device: no sync)."""
        self.alive = ~done if self.alive is None else self.alive & ~done

    def compact(self, grad: torch.Tensor) -> Optional[torch.Tensor]:
        """Drop the frozen rows (one host sync); return ``grad``'s rows kept, ``None`` if none."""
        if self.alive is None:
            return grad
        keep = self.alive.nonzero().squeeze(1)
        if keep.numel() == 0:
            return None
        if keep.numel() < self.alive.shape[0]:
            self.idx = keep if self.idx is None else self.idx[keep]
            self.x_adv, self.x, self.y, grad = self.x_adv[keep], self.x[keep], self.y[keep], grad[keep]
            if self.velocity is not None:
                self.velocity = self.velocity[keep]
        self.alive = None
        return grad

    def step(self, threat: ThreatModel, step_size: float, grad: torch.Tensor,
             momentum: Optional[float]) -> None:
        """One projected steepest-ascent step (MI-FGSM momentum if given); frozen rows stay."""
        grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
        if momentum is not None:
            l1 = grad.abs().flatten(1).sum(1).clamp_min(1e-12)
            grad = momentum * self.velocity + grad / bcast_rows(l1, grad)
            self.velocity = grad
        stepped = threat.project(self.x_adv + step_size * threat.steepest(grad), self.x)
        if self.alive is not None:
            stepped = torch.where(bcast_rows(self.alive, stepped), stepped, self.x_adv)
        self.x_adv = stepped


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
    samples still running (and frozen ones until the next check, see the module doc). ``momentum`` (MI-FGSM decay ``mu``) accumulates
    ``g <- mu * g + grad / ||grad||_1`` per sample before the steepest-ascent direction is taken.
    NaN/inf gradient entries are treated as zero. No host sync except at the checks.
    """
    best = Best.empty(x_start)
    final_only = is_stochastic(model)  # noisy verdicts: keep the final point (module docstring)
    every = check_interval(x.device)
    run = Running(None, x_start.detach().clone(), x, y,
                  torch.zeros_like(x) if momentum is not None else None)
    kw = dict(loss=loss, eot_samples=eot_samples, generator=generator, targeted=threat.targeted,
              max_rows=max_rows)
    for t in range(steps + 1):
        if t < steps:
            obj, grad, logits = input_gradient(model, run.x_adv, run.y, return_logits=True, **kw)
        else:
            obj, logits = objective(model, run.x_adv, run.y, **kw)
        success = reached_goal(logits.argmax(1), run.y, threat.targeted)
        obj = obj.to(x.dtype)
        if not final_only or t == steps:
            best.update(run.idx, run.x_adv, obj, success, logits, mask=run.alive)
        elif early_stop:  # a sample leaving now ends at this point
            leaving = success if run.alive is None else success & run.alive
            best.update(run.idx, run.x_adv, obj, success, logits, mask=leaving)
        if t == steps:
            break
        if early_stop:
            run.freeze(success)
            grad = run.compact(grad) if check_due(t, every) else grad
            if grad is None:  # every sample has finished
                break
        run.step(threat, step_size, grad, momentum)
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

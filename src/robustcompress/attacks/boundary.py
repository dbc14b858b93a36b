"""Line search to the decision boundary, the last step of the minimal-perturbation attacks.

DeepFool ends past the boundary (its overshoot, and box-respecting steps that cross it by more),
and C&W's best iterate can lie a little inside the adversarial region. Given the clean ``x`` and
a successful ``x_adv``, :func:`tighten_to_boundary` bisects the scalar ``t`` in ``[0, 1]`` on the
segment ``x + t (x_adv - x)`` for the smallest ``t`` that is still adversarial, so the reported
distance is that of a point on the boundary along the direction the attack found. Any norm
shrinks by the factor ``t``. The segment stays in the box (both ends are in it; the box is
convex); points are clipped anyway against rounding.

* Only points adversarial at ``t = 1`` move, and only to a ``t`` whose point was seen adversarial,
  so a point stays adversarial by construction. A final forward over the whole batch confirms it
  (the batch the attack is judged on, so rounding agrees with the verdict); a point that fails it
  keeps ``x_adv``.
* The model need not be monotone along the segment: bisection returns *a* crossing below 1, never
  a worse point than ``x_adv``.
* Stochastic models are not searched: their verdict is an average over fresh draws, so a point
  tightened to where the averaged prediction just flips would be judged afresh and fail about
  half the time. Their points are returned unchanged (the distance keeps the attack's excess).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from robustcompress.attacks.draws import bcast_rows
from robustcompress.errors import UserInputError
from robustcompress.nn.protocol import is_stochastic

#: ``adversarial(logits [B, C], y [B]) -> bool [B]``: the attack's success criterion.
Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def misclassified(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The untargeted criterion: the logits' argmax is not the label (what judging checks)."""
    return logits.argmax(dim=1) != y


def check_search_steps(steps) -> int:
    """``boundary_search`` as an int >= 0, or a :class:`UserInputError` naming the fix."""
    ok = isinstance(steps, int) and not isinstance(steps, bool) and steps >= 0
    if not ok:
        raise UserInputError(
            f"boundary_search must be a whole number of bisection steps >= 0 (0 disables the "
            f"search), got {steps!r}; e.g. boundary_search=20"
        )
    return steps


@torch.no_grad()
def tighten_to_boundary(
    model: nn.Module,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    bounds: tuple[float, float],
    adversarial: Criterion = misclassified,
) -> torch.Tensor:
    """The points ``x + t (x_adv - x)`` with the smallest adversarial ``t`` found in ``steps``
    bisection steps (one forward of the whole batch each, plus two checks).

    ``steps=0`` or a stochastic model returns ``x_adv`` itself (the same tensor). Points not
    adversarial at ``t = 1`` or equal to ``x`` are returned unchanged. After ``k`` steps the
    excess over the crossing is at most ``2^-k`` of ``||x_adv - x||``.
    """
    steps = check_search_steps(steps)
    if steps == 0 or x.shape[0] == 0 or is_stochastic(model):
        return x_adv
    lo, hi = bounds
    x0, xa = x.detach(), x_adv.detach()
    delta = xa - x0
    moves = adversarial(model(xa), y) & (delta.flatten(1).abs().amax(dim=1) > 0)
    if not bool(moves.any()):
        return x_adv
    t_adv = torch.ones(x0.shape[0], dtype=delta.dtype, device=delta.device)
    t_not = torch.zeros_like(t_adv)

    def points(t: torch.Tensor) -> torch.Tensor:  # x_adv itself where t = 1 (or not searching)
        inner = (moves & (t < 1)).view(-1, *([1] * (xa.dim() - 1)))
        return torch.where(inner, (x0 + bcast_rows(t, delta) * delta).clamp(lo, hi), xa)

    for _ in range(steps):
        # the whole batch every step (fixed rows, so rounding is that of the final verdict)
        mid = torch.where(moves, (t_adv + t_not) / 2, t_adv)
        adv = adversarial(model(points(mid)), y) & moves
        t_adv = torch.where(adv, mid, t_adv)
        t_not = torch.where(moves & ~adv, mid, t_not)
    out = points(t_adv)
    kept = adversarial(model(out), y)
    return torch.where(bcast_rows(kept, out), out, xa)

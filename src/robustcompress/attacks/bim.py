"""BIM / I-FGSM: iterated FGSM steps, projected onto the eps-ball and the box after every step.

Reference: Kurakin, Goodfellow & Bengio, "Adversarial examples in the physical world", ICLR 2017
workshop. Their setting, used by the defensive-tensorization paper and available with
``paper=True``: step 1 on the 0-255 scale and ``floor(min(eps + 4, 1.25 eps))`` iterations (eps on
the 0-255 scale), see :func:`bim_paper_schedule`. Without ``paper`` the defaults are 10 steps of
``2.5 eps / steps`` (Madry et al.'s rule). Starts at the clean input (no random start; that is PGD).
Deviation: the returned point is the best iterate per sample (first success / largest loss), not
necessarily the last one; this can only make the attack stronger.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import nn

from robustcompress.attacks.iterative import default_early_stop, default_step_size, finish_best, iterate
from robustcompress.attacks.losses import LossFn, loss_label
from robustcompress.attacks.registry import register_attack
from robustcompress.attacks.results import AttackResult
from robustcompress.attacks.threat import ThreatModel
from robustcompress.errors import ThreatModelError, UserInputError


def bim_paper_schedule(eps_255: float) -> tuple[float, int]:
    """Kurakin et al.'s BIM schedule: ``(step 1/255, floor(min(eps + 4, 1.25 eps)) iterations)``.

    ``eps_255`` is eps on the 0-255 scale; the step is returned as a fraction of the box width
    (multiply by the width for input units). ``bim_paper_schedule(8) == (1/255, 10)``.
    """
    if eps_255 < 0:
        raise UserInputError(f"eps must be >= 0, got {eps_255}")
    return 1.0 / 255.0, int(math.floor(min(eps_255 + 4.0, 1.25 * eps_255) + 1e-9))


@register_attack("bim", kind="white-box")
def bim(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    *,
    steps: Optional[int] = None,
    step_size: Optional[float] = None,
    paper: bool = False,
    loss: Union[str, LossFn] = "ce",
    early_stop: Optional[bool] = None,
    generator: Optional[torch.Generator] = None,
    eot_samples: Optional[int] = 1,
    mc_samples: Optional[int] = None,
) -> AttackResult:
    """Basic iterative method from the clean input.

    Parameters
    ----------
    steps, step_size : iterations and step (input units). Defaults: Kurakin's schedule when
        ``paper`` is True, else 10 steps of ``2.5 eps / steps``.
    paper : use :func:`bim_paper_schedule` (Linf only) for whichever of steps/step_size is unset.
    early_stop : stop attacking a sample at its first success (default: True for deterministic
        models, False for stochastic ones, whose success under noise is not final).
    """
    if paper:
        if threat.norm != "linf":
            raise ThreatModelError("the BIM paper schedule is defined for Linf only; set steps and step_size")
        step_frac, paper_steps = bim_paper_schedule(threat.eps_255)
        steps = paper_steps if steps is None else steps
        step_size = step_frac * threat.width if step_size is None else step_size
    steps = 10 if steps is None else int(steps)
    step_size = default_step_size(threat.eps, steps) if step_size is None else float(step_size)
    early_stop = default_early_stop(model, early_stop)
    best = iterate(model, x, y, threat, x, steps=steps, step_size=step_size, loss=loss,
                   eot_samples=eot_samples, generator=generator, early_stop=early_stop)
    params = {"steps": steps, "step_size": step_size, "paper": paper, "loss": loss_label(loss),
              "eot_samples": eot_samples}
    return finish_best("bim", params, model, x, y, best, threat, mc_samples=mc_samples,
                       generator=generator)


"""FGSM / FGM: one step of size eps along the steepest-ascent direction of the loss.

Reference: Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015
(Linf: ``x + eps * sign(grad)``); the L2 "fast gradient method" ``x + eps * grad / ||grad||_2`` is the
usual extension (Foolbox ``L2FastGradientAttack``, cleverhans ``fast_gradient_method(norm=2)``).
The step is clipped to the input box. Deviation: none (no random start; see R+FGSM for that).
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from robustcompress.attacks.draws import input_gradient
from robustcompress.attacks.losses import LossFn, loss_label
from robustcompress.attacks.registry import register_attack
from robustcompress.attacks.results import AttackResult
from robustcompress.attacks.threat import ThreatModel
from robustcompress.attacks.verdicts import finish


def fgsm_perturb(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    *,
    loss: Union[str, LossFn] = "ce",
    generator: Optional[torch.Generator] = None,
    eot_samples: Optional[int] = 1,
) -> torch.Tensor:
    """The FGSM/FGM point ``clip(x + eps * steepest(grad))`` without the verdict (one backward).

    For training loops that only need the adversarial inputs (no final forward pass).
    """
    _, grad = input_gradient(model, x, y, loss=loss, eot_samples=eot_samples, generator=generator,
                             targeted=threat.targeted)
    grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
    return threat.project(x + threat.eps * threat.steepest(grad), x).detach()


@register_attack("fgsm", kind="white-box")
def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    *,
    loss: Union[str, LossFn] = "ce",
    generator: Optional[torch.Generator] = None,
    eot_samples: Optional[int] = 1,
    mc_samples: Optional[int] = None,
) -> AttackResult:
    """Fast gradient sign method (Linf) / fast gradient method (L2), one step of size eps.

    Parameters
    ----------
    loss : attacker objective (``"ce"``, ``"dlr"``, ``"cw"`` or a callable).
    generator : randomness of a stochastic model (EOT draws and the final MC verdict).
    eot_samples : draws averaged per gradient (stochastic models only).
    mc_samples : draws averaged for the final verdict.
    """
    x_adv = fgsm_perturb(model, x, y, threat, loss=loss, generator=generator, eot_samples=eot_samples)
    params = {"loss": loss_label(loss), "eot_samples": eot_samples}
    return finish("fgsm", params, model, x, y, x_adv, threat, mc_samples=mc_samples, generator=generator)

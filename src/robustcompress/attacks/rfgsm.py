"""R+FGSM (the sparse-DNN paper's "rFGS"): a random step, then a gradient step with the rest of eps.

Reference: Tramèr, Kurakin, Papernot, Goodfellow, Boneh & McDaniel, "Ensemble Adversarial Training",
ICLR 2018: ``x' = x + alpha sign(N(0, I))``, ``x_adv = x' + (eps - alpha) sign(grad_x' L(x', y))``,
``alpha = eps / 2``, clipped to the box. The L2 variant (our extension) uses a random direction of
norm alpha and an L2 gradient step of norm ``eps - alpha``. The Gaussian is drawn per sample from
per-sample streams, so results do not depend on the batch size.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from robustcompress.attacks.draws import input_gradient
from robustcompress.attacks.losses import LossFn, loss_label
from robustcompress.attacks.registry import register_attack
from robustcompress.attacks.results import AttackResult
from robustcompress.attacks.seeds import SampleNoise
from robustcompress.attacks.threat import ThreatModel
from robustcompress.attacks.verdicts import finish
from robustcompress.errors import UserInputError


def rfgsm_alpha(threat: ThreatModel, alpha: Optional[float]) -> float:
    """The random step's size: ``alpha`` (default ``eps / 2``), checked to lie in ``[0, eps]``."""
    alpha = threat.eps / 2 if alpha is None else float(alpha)
    if not 0 <= alpha <= threat.eps:
        raise UserInputError(f"rfgsm needs 0 <= alpha <= eps ({threat.eps:g}), got {alpha:g}")
    return alpha


def rfgsm_perturb(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    *,
    alpha: Optional[float] = None,
    loss: Union[str, LossFn] = "ce",
    generator: Optional[torch.Generator] = None,
    eot_samples: Optional[int] = 1,
) -> torch.Tensor:
    """The R+FGSM point without the verdict (one backward; for training loops)."""
    alpha = rfgsm_alpha(threat, alpha)
    noise = SampleNoise(x.shape[0], generator, x.device)
    x_rand = threat.clip(x + alpha * threat.steepest(noise.randn(x)))
    _, grad = input_gradient(model, x_rand, y, loss=loss, eot_samples=eot_samples,
                             generator=generator, targeted=threat.targeted)
    grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
    return threat.project(x_rand + (threat.eps - alpha) * threat.steepest(grad), x).detach()


@register_attack("rfgsm", kind="white-box")
def rfgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    *,
    alpha: Optional[float] = None,
    loss: Union[str, LossFn] = "ce",
    generator: Optional[torch.Generator] = None,
    eot_samples: Optional[int] = 1,
    mc_samples: Optional[int] = None,
) -> AttackResult:
    """Random step of size ``alpha`` (default ``eps / 2``), then FGSM with ``eps - alpha``."""
    x_adv = rfgsm_perturb(model, x, y, threat, alpha=alpha, loss=loss, generator=generator,
                          eot_samples=eot_samples)
    params = {"alpha": rfgsm_alpha(threat, alpha), "loss": loss_label(loss), "eot_samples": eot_samples}
    return finish("rfgsm", params, model, x, y, x_adv, threat, mc_samples=mc_samples, generator=generator)

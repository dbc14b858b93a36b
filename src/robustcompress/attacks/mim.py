"""MIM / MI-FGSM: iterative steps on an accumulated, per-sample L1-normalised gradient.

Reference: Dong, Liao, Pang, Su, Zhu, Hu & Li, "Boosting Adversarial Attacks with Momentum",
CVPR 2018 (Algorithm 1): ``g <- mu g + grad / ||grad||_1``, ``x <- Proj(x + a sign(g))`` (L2:
``a g / ||g||_2``), ``mu = 1.0``, ``a = eps / steps``, 10 steps, start at the clean input.
The L1 normalisation is per sample (torchattacks once normalised per batch, which made results depend
on the batch size: issues #12/#33). Deviation: the best iterate per sample is returned.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from robustcompress.attacks.iterative import default_early_stop, finish_best, iterate
from robustcompress.attacks.losses import LossFn, loss_label
from robustcompress.attacks.registry import register_attack
from robustcompress.attacks.results import AttackResult
from robustcompress.attacks.threat import ThreatModel


@register_attack("mim", kind="white-box")
def mim(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    *,
    steps: int = 10,
    step_size: Optional[float] = None,
    decay: float = 1.0,
    loss: Union[str, LossFn] = "ce",
    early_stop: Optional[bool] = None,
    generator: Optional[torch.Generator] = None,
    eot_samples: Optional[int] = 1,
    mc_samples: Optional[int] = None,
) -> AttackResult:
    """Momentum iterative method (MI-FGSM) with decay ``mu`` (default 1.0) and step ``eps / steps``."""
    steps = int(steps)
    step_size = threat.eps / max(steps, 1) if step_size is None else float(step_size)
    best = iterate(model, x, y, threat, x, steps=steps, step_size=step_size, loss=loss,
                   eot_samples=eot_samples, generator=generator,
                   early_stop=default_early_stop(model, early_stop), momentum=float(decay))
    params = {"steps": steps, "step_size": step_size, "decay": decay, "loss": loss_label(loss),
              "eot_samples": eot_samples}
    return finish_best("mim", params, model, x, y, best, threat, mc_samples=mc_samples,
                       generator=generator)

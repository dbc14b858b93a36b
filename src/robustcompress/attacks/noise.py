"""Random-noise baselines: Gaussian and uniform perturbations inside the threat model.

Not attacks in the adversarial sense: they tell how much of a model's "robustness" is plain noise
robustness, and a defence that resists gradient attacks about as well as random noise is masking
gradients (Carlini et al. 2019). Noise is drawn per sample from per-sample streams (batch-size
invariant) and projected onto the eps-ball and the box.

* ``gaussian``: ``N(0, sigma^2 I)``, with ``sigma = eps`` (Linf) or ``sigma = eps / sqrt(d)`` (L2, so
  the expected norm is about eps), then projected onto the ball.
* ``uniform``: uniform in the ball itself (the cube ``[-eps, eps]^d`` for Linf; uniform in volume for
  L2).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from robustcompress.attacks.registry import register_attack
from robustcompress.attacks.results import AttackResult
from robustcompress.attacks.seeds import SampleNoise
from robustcompress.attacks.threat import ThreatModel
from robustcompress.attacks.verdicts import finish


@register_attack("gaussian", kind="noise")
def gaussian(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    *,
    sigma: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
    mc_samples: Optional[int] = None,
) -> AttackResult:
    """Gaussian noise (default ``sigma``: eps for Linf, ``eps / sqrt(d)`` for L2), projected to the ball."""
    d = x[0].numel() if x.shape[0] else 1
    if sigma is None:
        sigma = threat.eps if threat.norm == "linf" else threat.eps / math.sqrt(d)
    noise = SampleNoise(x.shape[0], generator, x.device)
    x_adv = x + float(sigma) * noise.randn(x)
    return finish("gaussian", {"sigma": float(sigma)}, model, x, y, x_adv, threat,
                  mc_samples=mc_samples, generator=generator)


@register_attack("uniform", kind="noise")
def uniform(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    *,
    generator: Optional[torch.Generator] = None,
    mc_samples: Optional[int] = None,
) -> AttackResult:
    """Noise uniform in the eps-ball (Linf cube or L2 ball), clipped to the box."""
    delta = threat.random_delta(x, SampleNoise(x.shape[0], generator, x.device))
    return finish("uniform", {}, model, x, y, x + delta, threat, mc_samples=mc_samples, generator=generator)

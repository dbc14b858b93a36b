"""PGD (Linf and L2) with random start and restarts.

Reference: Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning Models Resistant to
Adversarial Attacks", ICLR 2018: start uniformly in the eps-ball, take ``steps`` steps
``x <- Proj(x + a * sign(grad))`` (L2: ``a * grad / ||grad||_2``), restart from fresh random points.
Defaults: 10 steps of ``2.5 eps / steps`` (their rule), one restart.

Deviations (all can only make the attack stronger or cheaper, never weaker): per sample the best
iterate over all steps and restarts is returned (a success beats a failure, then the larger loss),
restarts run only on samples not yet fooled, and with ``early_stop`` a sample stops at its first
success (frozen on the device and dropped at the next host check, see
:mod:`~robustcompress.attacks.iterative`: no host sync per step on a GPU). (The clean input is not
evaluated separately: that would cost one more forward pass.)
The returned point is therefore, by default on a deterministic model, each sample's *first
successful iterate*, not Madry et al.'s final point; for transfer or adversarial-training data
pass ``early_stop=False``: every sample then runs all steps and restarts and gets the successful
iterate of largest loss (never a smaller loss than the first success), else its largest-loss one.
The L2 random start is uniform in the ball (Gaussian direction, radius ``eps U^(1/d)``).
Random starts come from per-sample streams (:class:`~robustcompress.attacks.seeds.SampleNoise`), so
results do not depend on the batch size.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from robustcompress.attacks.iterative import (
    Best,
    default_early_stop,
    default_step_size,
    finish_best,
    iterate,
)
from robustcompress.attacks.losses import LossFn, loss_label
from robustcompress.attacks.registry import register_attack
from robustcompress.attacks.results import AttackResult
from robustcompress.attacks.seeds import SampleNoise
from robustcompress.attacks.threat import ThreatModel
from robustcompress.errors import UserInputError


@register_attack("pgd", kind="white-box")
def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    *,
    steps: int = 10,
    step_size: Optional[float] = None,
    random_start: bool = True,
    restarts: int = 1,
    loss: Union[str, LossFn] = "ce",
    early_stop: Optional[bool] = None,
    generator: Optional[torch.Generator] = None,
    eot_samples: Optional[int] = 1,
    mc_samples: Optional[int] = None,
    max_rows: Optional[int] = None,
) -> AttackResult:
    """Projected gradient descent on the attacker objective, best of ``restarts`` runs per sample.

    Parameters
    ----------
    steps, step_size : iterations per restart and step in input units (default ``2.5 eps / steps``).
    random_start : start each restart at a uniform random point of the ball (else at ``x``).
    restarts : independent runs; each later run attacks only the samples not yet fooled.
    loss : ``"ce"``, ``"dlr"``, ``"cw"`` or ``callable(logits, y) -> [B]``.
    early_stop : stop a sample at its first success (default: True for deterministic models,
        False for stochastic ones); ``False`` gives the full-strength point (see above).
    generator : random starts and the model's randomness (EOT, MC verdict) come from it.
    eot_samples, mc_samples : draws per gradient / for the final verdict (stochastic models).
    max_rows : most rows per forward when EOT draws are stacked (memory bound).
    """
    steps, restarts = int(steps), int(restarts)
    if steps < 0 or restarts < 1:
        raise UserInputError(f"pgd needs steps >= 0 and restarts >= 1, got steps={steps}, restarts={restarts}")
    step_size = default_step_size(threat.eps, steps) if step_size is None else float(step_size)
    early_stop = default_early_stop(model, early_stop)
    kw = dict(loss=loss, eot_samples=eot_samples, generator=generator, max_rows=max_rows)
    noise = SampleNoise(x.shape[0], generator, x.device) if random_start else None
    best = Best.empty(x)
    for _ in range(restarts):
        idx, rows = best.pending(early_stop)  # None: all rows
        if rows == []:
            break
        xs, ys = (x, y) if idx is None else (x[idx], y[idx])
        if random_start:
            start = threat.random_start(xs, noise if rows is None else noise.select(rows))
        else:
            start = xs
        best.merge(idx, iterate(model, xs, ys, threat, start, steps=steps, step_size=step_size,
                                early_stop=early_stop, **kw))
    params = {"steps": steps, "step_size": step_size, "random_start": random_start,
              "restarts": restarts, "loss": loss_label(loss), "eot_samples": eot_samples}
    return finish_best("pgd", params, model, x, y, best, threat, mc_samples=mc_samples,
                       generator=generator)


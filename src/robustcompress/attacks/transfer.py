"""Transfer attack: craft adversarial inputs on a surrogate model, judge them on the target.

A black-box baseline and a gradient-masking check (Carlini et al. 2019: a transfer attack that beats
the white-box attack means the white-box gradients are masked). Any registered attack can craft
(``attack="pgd"`` by default) with its own parameters (``attack_params``). The surrogate is usually
the undefended model of the same architecture, or one trained separately (the weight-quantisation
and ANP-VS papers' black-box setting: PGD from a separately trained base model).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from robustcompress.attacks.registry import get_attack, register_attack
from robustcompress.attacks.results import AttackResult
from robustcompress.attacks.threat import ThreatModel
from robustcompress.attacks.verdicts import finish
from robustcompress.errors import UserInputError


@register_attack("transfer", kind="transfer")
def transfer(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    *,
    surrogate: Optional[nn.Module] = None,
    attack: str = "pgd",
    attack_params: Optional[dict] = None,
    generator: Optional[torch.Generator] = None,
    mc_samples: Optional[int] = None,
) -> AttackResult:
    """Run ``attack`` on ``surrogate`` and evaluate the adversarial inputs on ``model``.

    Parameters
    ----------
    surrogate : the model the attacker has gradients of (required).
    attack : the registered attack that crafts (not ``"transfer"`` itself).
    attack_params : its keyword parameters (e.g. ``{"steps": 40}``); ``generator`` is passed on.
    mc_samples : draws for the verdict on ``model`` when it is stochastic.
    """
    if surrogate is None:
        raise UserInputError("the transfer attack needs a surrogate model (surrogate=...; CLI: --surrogate CHECKPOINT)")
    spec = get_attack(attack)
    if spec.kind == "transfer":
        raise UserInputError("the transfer attack cannot craft with another transfer attack")
    params = dict(attack_params or {})
    if spec.accepts("generator"):
        params.setdefault("generator", generator)
    crafted = spec.fn(surrogate, x, y, threat, **params)
    on_surrogate = float(crafted.success.double().mean()) if len(crafted) else float("nan")
    shown = {k: v for k, v in params.items() if k != "generator"}
    return finish("transfer", {"attack": attack, "attack_params": shown}, model, x, y, crafted.x_adv,
                  threat, mc_samples=mc_samples, generator=generator, project=spec.kind != "minimal",
                  extra={"surrogate_success_rate": on_surrogate})

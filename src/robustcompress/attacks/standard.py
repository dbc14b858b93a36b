"""The ``standard`` protocol: AutoAttack's standard and randomized versions on our cascade.

Reference: Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020, and fra31/auto-attack's ``version='standard'`` / ``'rand'``:

* deterministic models: APGD-CE, APGD-T (targeted DLR over the 9 most likely other classes),
  FAB-T (9 targets) and Square (5,000 queries), each with one restart and 100 iterations;
* models that declare randomness: APGD-CE and APGD-DLR with EOT over 20 draws.

The battery runs through :func:`~robustcompress.attacks.adaptive.evaluate_robustness`, so the
cascade (each attack sees only the points still robust), the independent re-judging of every
adversarial, the MC-averaged verdicts of stochastic models and the gradient-masking flags are the
adaptive protocol's. Deviations: Square is Linf only here (L2 runs the first three attacks);
fewer than 4 classes drop APGD-T, fewer than 3 APGD-DLR; FAB-T skips its final search to the
boundary (AutoAttack has none; the verdict needs only ``norm <= eps``); stochastic models are also
judged by MC-averaged predictions (AutoAttack judges one draw). How this differs from the
``adaptive`` protocol: docs/standard-protocol.md.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from robustcompress.attacks.adaptive import evaluate_robustness
from robustcompress.attacks.draws import generator_scope
from robustcompress.attacks.probe import declare_randomness
from robustcompress.attacks.robustness_report import RobustnessReport
from robustcompress.attacks.threat import ThreatModel
from robustcompress.errors import UserInputError
from robustcompress.nn.protocol import is_stochastic

#: AutoAttack's target classes for APGD-T and FAB-T in the standard version.
N_TARGET_CLASSES = 9


def standard_battery(threat: ThreatModel, num_classes: int, stochastic: bool, *,
                     steps: int = 100, square_queries: int = 5000, n_restarts: int = 1,
                     n_target_classes: int = N_TARGET_CLASSES) -> list[tuple[str, str, dict]]:
    """``[(label, registered attack, params), ...]`` of AutoAttack's standard version
    (``stochastic=False``) or its randomized version (``stochastic=True``) for this threat."""
    if threat.targeted:
        raise UserInputError("the standard protocol is untargeted (AutoAttack's); build the threat "
                             "without targeted=True, or pass your own attacks= battery")
    ce = ("apgd-ce", "apgd", {"loss": "ce", "steps": steps, "restarts": n_restarts})
    if stochastic:
        dlr = [("apgd-dlr", "apgd", {"loss": "dlr", "steps": steps, "restarts": n_restarts})]
        return [ce] + (dlr if num_classes >= 3 else [])
    k = max(1, min(int(n_target_classes), num_classes - 1))
    battery = [ce]
    if num_classes >= 4:
        battery.append(("apgd-t", "apgd-t", {"steps": steps, "restarts": n_restarts,
                                             "n_target_classes": k}))
    battery.append(("fab-t", "fab-t", {"steps": steps, "restarts": n_restarts,
                                       "n_target_classes": k, "boundary_search": 0}))
    if threat.norm == "linf" and square_queries > 0:
        battery.append(("square", "square", {"n_queries": square_queries}))
    return battery


def evaluate_standard(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
                      apgd_steps: int = 100, square_queries: int = 5000, n_restarts: int = 1,
                      generator: Optional[torch.Generator] = None, **kw) -> RobustnessReport:
    """:func:`evaluate_robustness` with :func:`standard_battery` chosen for ``model`` (randomized
    version when it declares randomness, or when its outputs vary undeclared); ``kw`` goes to
    :func:`evaluate_robustness` (EOT default 20 and MC verdicts for stochastic models)."""
    for key in ("attacks", "surrogate_model"):
        if kw.get(key) is not None:
            raise UserInputError(f"the standard protocol fixes its battery; drop {key}= (or use the "
                                 "adaptive protocol)")
        kw.pop(key, None)
    probe_gen = torch.Generator(device=x.device).manual_seed(0)  # leaves the global RNG alone
    with generator_scope(model, probe_gen), torch.no_grad():
        num_classes = int(model(x[:1]).shape[1])
        _, undeclared = declare_randomness(model, x[:8])
    stochastic = is_stochastic(model) or undeclared
    battery = standard_battery(threat, num_classes, stochastic, steps=apgd_steps,
                               square_queries=square_queries, n_restarts=n_restarts)
    report = evaluate_robustness(model, x, y, threat, attacks=battery, generator=generator,
                                 apgd_steps=apgd_steps, square_queries=square_queries,
                                 n_restarts=n_restarts, **kw)
    report.settings["protocol"] = "standard-rand" if stochastic else "standard"
    return report


__all__ = ["N_TARGET_CLASSES", "evaluate_standard", "standard_battery"]

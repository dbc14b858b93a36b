"""Budgets that converge: grow the attacker's EOT draws (and steps) until the number stops moving.

A randomized defense's adaptive number depends on the attacker's budget: SAP on CIFAR-10 read
69.9% with EOT-5 and 55.9% with EOT-20, and on a GPU 25.0% with EOT-10/APGD-50 and 5.0% with
EOT-50/APGD-100 (Athalye et al. report 0%). A single budget can therefore overstate robustness
without any flag. :func:`evaluate_until_converged` runs :func:`evaluate_robustness` at EOT
``n, g n, g^2 n, ...`` (APGD steps grown with it when ``grow_steps``) and stops when the robust
accuracy changes by less than ``tol`` between two budgets, or at ``eot_cap``. The last report
carries the curve (``settings["convergence"]``) and, when the cap stopped it first, the flag
``budget_not_converged``. A deterministic model needs no EOT: one evaluation.

Each budget is a full, independent evaluation under the same master seed, so the curve is
reproducible; the cost is the sum of the budgets (about twice the last one with growth 2).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from robustcompress.attacks.adaptive import DEFAULT_EOT, evaluate_robustness
from robustcompress.attacks.checks import Flag, check_budget_converged
from robustcompress.attacks.robustness_report import RobustnessReport
from robustcompress.attacks.threat import ThreatModel
from robustcompress.errors import UserInputError
from robustcompress.nn.protocol import is_stochastic

#: Default tolerance in accuracy points between two budgets.
CONVERGE_TOL = 0.02


def evaluate_until_converged(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                             threat: ThreatModel, *, eot_start: int = 5,
                             eot_cap: int = 4 * DEFAULT_EOT, growth: int = 2,
                             grow_steps: bool = True, apgd_steps: int = 100,
                             tol: float = CONVERGE_TOL, generator: Optional[torch.Generator] = None,
                             progress: bool = True, **kw) -> RobustnessReport:
    """The adaptive evaluation at growing EOT budgets until two consecutive robust accuracies
    differ by less than ``tol`` (see the module docstring). ``kw`` go to
    :func:`evaluate_robustness` (``eot_samples`` is set here). Returns the last report."""
    if eot_start < 1 or eot_cap < eot_start or growth < 2:
        raise UserInputError(f"need 1 <= eot_start <= eot_cap and growth >= 2, got eot_start="
                             f"{eot_start}, eot_cap={eot_cap}, growth={growth}")
    if "eot_samples" in kw:
        raise UserInputError("evaluate_until_converged sets eot_samples itself; give eot_start "
                             "and eot_cap instead")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator)) if generator is not None else None
    curve: list[dict] = []
    eot, steps, report = eot_start, apgd_steps, None
    while True:
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        report = evaluate_robustness(model, x, y, threat, eot_samples=eot, apgd_steps=steps,
                                     generator=gen, progress=progress, **kw)
        curve.append({"eot_samples": eot, "apgd_steps": steps,
                      "robust_accuracy": report.robust_accuracy,
                      "whitebox_accuracy": _whitebox_accuracy(report),
                      "seconds": report.timings.get("total", math.nan)})
        if not is_stochastic(model) and not report.settings.get("undeclared_randomness"):
            break  # EOT does not apply
        if len(curve) > 1 and abs(curve[-2]["robust_accuracy"] - curve[-1]["robust_accuracy"]) < tol:
            break
        if eot * growth > eot_cap:
            break
        eot *= growth
        steps = steps * growth if grow_steps else steps
    flag = _convergence_flag(curve, tol, report)
    report.settings["convergence"] = {"curve": curve, "tol": tol, "eot_cap": eot_cap,
                                      "converged": not flag.raised}
    report.flags.append(flag)
    return report


def _whitebox_accuracy(report: RobustnessReport) -> float:
    """Accuracy after the cascade's gradient attacks alone (before Square and transfer): the
    part of the number EOT acts on."""
    white = [a for a in report.attacks if a.kind in ("white-box", "minimal")]
    return white[-1].robust_accuracy if white else report.clean_accuracy


def _convergence_flag(curve: list[dict], tol: float, report: RobustnessReport) -> Flag:
    if len(curve) == 1:  # deterministic model: nothing to converge
        return check_budget_converged(True, curve, tol)
    last_change = abs(curve[-2]["robust_accuracy"] - curve[-1]["robust_accuracy"])
    return check_budget_converged(last_change < tol, curve, tol)

"""Gradient-masking checks: the symptoms in Carlini et al.'s evaluation checklist, as named flags.

Carlini, Athalye, Papernot, Brendel, Rauber, Tsipras, Goodfellow, Madry & Kurakin, "On Evaluating
Adversarial Robustness" (arXiv 1902.06705, 2019), Sections 5.x, list signs that an attack failed
because the defence hides its gradient rather than because the model is robust. Each check below
turns one sign into a :class:`Flag` with a one-line explanation and the numbers behind it:

==============================  ===========================================================
``iterative_weaker``            PGD leaves a higher accuracy than one FGSM step.
``blackbox_stronger``           Square (gradient-free) or a transfer attack beats white-box.
``large_eps_not_zero``          accuracy is not ~0 at a huge budget (Linf: half the box).
``zero_gradients``              many samples have an all-zero, vanishing or NaN input gradient
                                under the cross-entropy or the margin loss.
``more_eot_helps``              4x the EOT samples lowers accuracy a lot (stochastic models).
``more_steps_help``             4x the PGD steps lowers accuracy a lot.
``not_monotone_in_eps``         robust accuracy at eps/2, eps, 2 eps does not fall with eps.
``undeclared_randomness``       two forwards on the same inputs differ but no module declares
                                randomness (then attacked with EOT and MC verdicts anyway).
``paper_adaptive_gap``          the paper protocol's number exceeds the adaptive worst case
                                by a lot (set by the experiment report, which has both).
``budget_not_converged``        growing EOT (and steps) to the cap still moved the number
                                (:mod:`robustcompress.attacks.convergence`).
==============================  ===========================================================

Accuracies are robust accuracies judged like every attack result (MC-averaged prediction for
stochastic models), so "a lot" is measured in accuracy points: ``tol`` (default 0.05). The
individual ``check_*`` functions are pure functions of numbers; :func:`masking_checks` runs the
attacks they need. AutoAttack (``checks.py``) has the zero-gradient and Square checks as
warnings; the others follow the checklist. A raised flag is a reason to distrust the white-box
number, not proof of masking; a clear flag is not proof of robustness.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
from torch import nn

from robustcompress.attacks.draws import input_gradient, resolve_draws
from robustcompress.attacks.registry import run_attack
from robustcompress.attacks.seeds import child_generator
from robustcompress.attacks.threat import ThreatModel
from robustcompress.nn.protocol import model_properties, straight_through

#: Default tolerance, in accuracy points, before a difference counts as "a lot".
DEFAULT_TOL = 0.05
#: Fraction of samples with zero/NaN input gradients above which the zero-gradient flag is raised.
ZERO_GRADIENT_FRACTION = 0.10
#: An input gradient whose largest entry is at most this is "vanishing" (inputs live in boxes of
#: width 1 or 2: a saturated softmax gives exactly 0 or denormals).
VANISHING_GRADIENT = 1e-12
#: Paper-protocol accuracy above the adaptive worst case by more than this raises the gap flag.
PAPER_GAP_TOL = 0.10

EXPLANATIONS = {
    "iterative_weaker": "PGD left a higher accuracy than one FGSM step: its gradient leads nowhere",
    "blackbox_stronger": "a gradient-free/transfer attack beat white-box: gradients are masked",
    "large_eps_not_zero": "accuracy is not ~0 at a huge eps: the attack cannot find the model's "
                          "sensitive direction",
    "zero_gradients": "many inputs have a zero/NaN input gradient: use BPDA (bpda=) or EOT",
    "more_eot_helps": "4x more EOT draws lowered accuracy a lot: the number depends on EOT budget",
    "more_steps_help": "4x more PGD steps lowered accuracy a lot: the attack had not converged",
    "not_monotone_in_eps": "robust accuracy does not fall as eps grows: the attack fails to use "
                           "the larger budget",
    "undeclared_randomness": "outputs differ between two forwards but no module declares "
                             "randomness: attacked with EOT and judged by MC draws anyway",
    "paper_adaptive_gap": "the paper protocol's number is far above the adaptive worst case: "
                          "the paper's attack is too weak for this defense",
    "budget_not_converged": "the number still fell at the largest EOT budget tried: the true "
                            "robust accuracy is likely lower",
}


@dataclass(frozen=True)
class Flag:
    """One gradient-masking check: raised or not, why it matters, and the numbers behind it."""

    name: str
    raised: bool
    explanation: str
    values: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["values"] = {k: (None if isinstance(v, float) and math.isnan(v) else v)
                       for k, v in self.values.items()}
        return d

    def line(self) -> str:
        """``[RAISED] name: explanation (numbers)``; a clear flag shows only its numbers."""
        vals = ", ".join(f"{k}={_fmt(v)}" for k, v in self.values.items())
        if self.raised:
            return f"[RAISED] {self.name}: {self.explanation} ({vals})"
        return f"[ok] {self.name} ({vals})"


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _flag(name: str, raised: bool, **values) -> Flag:
    return Flag(name, bool(raised), EXPLANATIONS[name], values)


# ---------------------------------------------------------------------------- pure checks
def check_iterative_weaker(acc_single: float, acc_iterative: float, tol: float = DEFAULT_TOL) -> Flag:
    """Raised when PGD's accuracy exceeds FGSM's by more than ``tol``."""
    return _flag("iterative_weaker", acc_iterative > acc_single + tol, fgsm_accuracy=acc_single,
                 pgd_accuracy=acc_iterative, tol=tol)


def check_blackbox_stronger(acc_whitebox: float, acc_other: float, attack: str,
                            tol: float = DEFAULT_TOL) -> Flag:
    """Raised when a black-box/transfer attack's accuracy is below the white-box one by > ``tol``.

    In a cascade (each attack only on points still robust) pass the white-box accuracy and the
    accuracy after the black-box attack: the difference is the share of points only it broke.
    """
    return _flag("blackbox_stronger", acc_other < acc_whitebox - tol, whitebox_accuracy=acc_whitebox,
                 other_accuracy=acc_other, other_attack=attack, tol=tol)


def check_large_eps(acc_large: float, eps_large: float, tol: float = DEFAULT_TOL) -> Flag:
    """Raised when accuracy at the very large budget ``eps_large`` is above ``tol``."""
    return _flag("large_eps_not_zero", acc_large > tol, accuracy=acc_large, eps=eps_large, tol=tol)


def zero_gradient_mask(grad: torch.Tensor, vanish: float = VANISHING_GRADIENT) -> torch.Tensor:
    """Per sample: the input gradient is all (nearly) zero, or contains NaN/inf."""
    flat = grad.flatten(1)
    return (flat.abs() <= vanish).all(dim=1) | ~torch.isfinite(flat).all(dim=1)


def check_zero_gradients(grad: torch.Tensor, threshold: float = ZERO_GRADIENT_FRACTION,
                         grad_ce: Optional[torch.Tensor] = None) -> Flag:
    """Raised when more than ``threshold`` of the samples have a zero, vanishing or NaN input
    gradient under the margin loss (``grad``) or the cross-entropy (``grad_ce``): a saturated
    softmax zeroes the second only."""
    fracs = {}
    for name, g in (("margin", grad), ("ce", grad_ce)):
        if g is not None:
            bad = zero_gradient_mask(g)
            fracs[name] = float(bad.double().mean()) if bad.numel() else 0.0
    nan = int((~torch.isfinite(grad.flatten(1)).all(dim=1)).sum())
    worst = max(fracs.values())
    return _flag("zero_gradients", worst > threshold, fraction=worst,
                 **{f"fraction_{k}": v for k, v in fracs.items()}, nan_samples=nan,
                 threshold=threshold)


def check_eps_monotone(acc: float, broken_at_half: float, robust_at_double: float, eps: float,
                       tol: float = DEFAULT_TOL) -> Flag:
    """Raised when more than ``tol`` of the points break at eps/2 although they survived eps, or
    survive 2 eps although they broke at eps: robust accuracy does not fall with eps. (Counting
    these points, rather than comparing three accuracies, attacks only the points that could
    violate it: the robust ones at eps/2, the broken ones at 2 eps, where early stopping makes
    the attack cheap.)"""
    raised = broken_at_half > tol or robust_at_double > tol
    return _flag("not_monotone_in_eps", raised, eps=eps, accuracy=acc,
                 broken_at_half_eps=broken_at_half, robust_at_double_eps=robust_at_double, tol=tol)


def check_undeclared_randomness(found: bool) -> Flag:
    """Raised when :func:`robustcompress.attacks.probe.declare_randomness` found noise."""
    return _flag("undeclared_randomness", found, found=bool(found))


def check_budget_converged(converged: bool, curve: list, tol: float) -> Flag:
    """Raised when the EOT-growth curve had not settled within ``tol`` at its cap."""
    return _flag("budget_not_converged", not converged, budgets=len(curve),
                 last_eot=curve[-1]["eot_samples"] if curve else 0,
                 last_accuracy=curve[-1]["robust_accuracy"] if curve else math.nan, tol=tol)


def check_paper_gap(acc_paper: float, acc_adaptive: float, attack: str,
                    tol: float = PAPER_GAP_TOL) -> Flag:
    """Raised when the paper protocol's accuracy exceeds the adaptive worst case by > ``tol``."""
    return _flag("paper_adaptive_gap", acc_paper > acc_adaptive + tol, paper_accuracy=acc_paper,
                 adaptive_accuracy=acc_adaptive, paper_attack=attack, tol=tol)


def gradient_check(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
                   eot_samples: int, generator: Optional[torch.Generator],
                   threshold: float = ZERO_GRADIENT_FRACTION) -> Flag:
    """The zero-gradient check on ``(x, y)``: input gradients of the margin and the cross-entropy
    losses (two backward passes, ``eot_samples`` draws each). Run inside the BPDA scope."""
    grads = [input_gradient(model, x, y, loss=loss, eot_samples=eot_samples,
                            generator=child_generator(generator, x.device),
                            targeted=threat.targeted)[1] for loss in ("cw", "ce")]
    return check_zero_gradients(grads[0], threshold, grad_ce=grads[1])


def check_more_eot(acc_n: float, acc_4n: float, n: int, tol: float = DEFAULT_TOL) -> Flag:
    """Raised when ``4 n`` EOT samples lower accuracy by more than ``tol`` compared with ``n``."""
    return _flag("more_eot_helps", acc_n - acc_4n > tol, eot_samples=n, accuracy=acc_n,
                 accuracy_4x=acc_4n, tol=tol)


def check_more_steps(acc_k: float, acc_4k: float, k: int, tol: float = DEFAULT_TOL) -> Flag:
    """Raised when ``4 k`` PGD steps lower accuracy by more than ``tol`` compared with ``k``."""
    return _flag("more_steps_help", acc_k - acc_4k > tol, steps=k, accuracy=acc_k,
                 accuracy_4x=acc_4k, tol=tol)


# ---------------------------------------------------------------------------- runner
def large_eps(threat: ThreatModel, shape: tuple[int, ...]) -> float:
    """The "very large" budget: half the box width for Linf, half the box diameter for L2."""
    half = threat.width / 2
    return half if threat.norm == "linf" else half * math.sqrt(math.prod(shape))


def _doubled(threat: ThreatModel, x: torch.Tensor) -> ThreatModel:
    """The threat at 2 eps, capped at the large budget (eps must stay inside the box)."""
    return threat.with_eps(min(2 * threat.eps, large_eps(threat, tuple(x.shape[1:]))))


def _monotone_flag(attack, res_k, threat: ThreatModel, x: torch.Tensor, steps: int,
                   tol: float) -> Flag:
    """eps-monotonicity from the PGD run at eps (``res_k``): attack at eps/2 only the points it
    left robust, at 2 eps only those it broke (the points that could violate monotonicity)."""
    robust = (~res_k.success).nonzero().flatten()
    broken = res_k.success.nonzero().flatten()
    m = max(x.shape[0], 1)
    half = (int(attack("pgd", threat.with_eps(threat.eps / 2), robust, steps=steps).success.sum())
            if robust.numel() else 0)
    double = (int((~attack("pgd", _doubled(threat, x), broken, steps=steps).success).sum())
              if broken.numel() else 0)
    return check_eps_monotone(res_k.robust_accuracy, half / m, double / m, threat.eps, tol)


def masking_checks(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    *,
    generator: Optional[torch.Generator] = None,
    eot_samples: Optional[int] = None,
    mc_samples: Optional[int] = None,
    bpda: Optional[str] = None,
    steps: int = 20,
    square_queries: int = 0,
    whitebox_accuracy: Optional[float] = None,
    blackbox_accuracies: Optional[dict[str, float]] = None,
    tol: float = DEFAULT_TOL,
    zero_threshold: float = ZERO_GRADIENT_FRACTION,
    batch_size: Optional[int] = None,
    gradient_flag: Optional[Flag] = None,
) -> list[Flag]:
    """Run the gradient-masking checks on ``(x, y)`` and return one :class:`Flag` per check.

    Parameters
    ----------
    generator : every random draw (random starts, the model's randomness) comes from it.
    eot_samples : gradient draws the checked attacker uses (stochastic models; ``None``: the
        library default, 20). The EOT check compares it with 4x as many.
    mc_samples : draws behind each verdict (``None``: the library default).
    bpda : for non-differentiable models, the surrogate backward the gradient attacks use
        (``"identity"``, ..., ``"exact"`` = the true zero derivative); ``None`` keeps the model's.
    steps : PGD steps ``k``; the step check compares with ``4 k``.
    square_queries : if > 0 (Linf only), also run Square with this budget and compare it with
        the white-box accuracy.
    whitebox_accuracy, blackbox_accuracies : accuracies measured elsewhere (e.g. by the adaptive
        evaluation's cascade) to compare instead of / in addition to running Square here.
    tol, zero_threshold : see :data:`DEFAULT_TOL` and :data:`ZERO_GRADIENT_FRACTION`.
    gradient_flag : the zero-gradient flag if already computed (:func:`gradient_check`).
    """
    eot = resolve_draws(model, eot_samples, 20)
    stochastic = model_properties(model).stochastic
    nondiff = model_properties(model).non_differentiable
    scope = straight_through(model, bpda) if (nondiff and bpda) else contextlib.nullcontext()
    common = dict(mc_samples=mc_samples, batch_size=batch_size)
    wb = dict(common, eot_samples=eot if stochastic else None)

    def attack(name: str, thr: ThreatModel = threat, rows=None, **kw):
        xs, ys = (x, y) if rows is None else (x[rows], y[rows])
        return run_attack(name, model, xs, ys, thr, generator=child_generator(generator, x.device),
                          **wb, **kw)

    def acc(name: str, thr: ThreatModel = threat, **kw) -> float:
        return attack(name, thr, **kw).robust_accuracy

    flags: list[Flag] = []
    with scope:
        flags.append(gradient_flag or gradient_check(model, x, y, threat, eot_samples=eot,
                                                     generator=generator, threshold=zero_threshold))
        acc_fgsm = acc("fgsm")
        res_k = attack("pgd", steps=steps)
        acc_k = res_k.robust_accuracy
        acc_4k = acc("pgd", steps=4 * steps)
        flags.append(check_iterative_weaker(acc_fgsm, acc_k, tol))
        flags.append(check_more_steps(acc_k, acc_4k, steps, tol))
        if threat.eps > 0:
            flags.append(_monotone_flag(attack, res_k, threat, x, steps, tol))
        if stochastic:
            acc_4n = run_attack("pgd", model, x, y, threat, generator=child_generator(generator, x.device),
                                steps=steps, eot_samples=4 * eot, **common).robust_accuracy
            flags.append(check_more_eot(acc_k, acc_4n, eot, tol))
        big = large_eps(threat, tuple(x.shape[1:]))
        flags.append(check_large_eps(acc("pgd", threat.with_eps(big), steps=steps), big, tol))
    white = min(acc_k, acc_4k, acc_fgsm) if whitebox_accuracy is None else whitebox_accuracy
    others = dict(blackbox_accuracies or {})
    if square_queries > 0 and threat.norm == "linf":
        others["square"] = _square_accuracy(model, x, y, threat, generator, square_queries,
                                            eot if stochastic else None, common)
    return flags + _blackbox_flags(white, others, tol)


def _square_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                     generator: Optional[torch.Generator], n_queries: int,
                     eot_samples: Optional[int], common: dict) -> float:
    """Robust accuracy left by Square (gradient-free) with ``n_queries`` queries."""
    return run_attack("square", model, x, y, threat, generator=child_generator(generator, x.device),
                      n_queries=n_queries, eot_samples=eot_samples, **common).robust_accuracy


def _blackbox_flags(white: float, others: dict[str, float], tol: float) -> list[Flag]:
    """The black-box-vs-white-box flag for the worst of ``others``; none when it is empty."""
    if not others:
        return []
    name, worst = min(others.items(), key=lambda kv: kv[1])
    return [check_blackbox_stronger(white, worst, name, tol)]

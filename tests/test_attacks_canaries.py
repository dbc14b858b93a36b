"""Canaries (issue 14, part 7): models built to fool an evaluator, and an attack that cheats.
Each must be caught, by a number near the truth or by a named flag, with and without the
gradient-free attack in the budget."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustcompress.attacks import ThreatModel, evaluate_robustness, register_attack, run_attack
from robustcompress.attacks.base import AttackResult
from robustcompress.attacks.registry import _ATTACKS
from robustcompress.errors import ThreatModelError

THREAT = ThreatModel("linf", 0.2, (0.0, 1.0))


@pytest.fixture(scope="module")
def trained(digits_mlp, digits):
    return digits_mlp, digits.test.x[:120], digits.test.y[:120]


def _evaluate(model, x, y, square: int, seed: int = 0):
    return evaluate_robustness(model, x, y, THREAT, apgd_steps=10, square_queries=square,
                               eot_samples=4, mc_samples=8, check_samples=48, check_steps=5,
                               generator=torch.Generator().manual_seed(seed), progress=False)


def _raised(rep) -> set:
    return {f.name for f in rep.flags if f.raised}


class Shattered(nn.Module):
    """Input quantisation without a declaration: zero input gradient almost everywhere."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(torch.round(x * 4) / 4)


class Saturated(nn.Module):
    """Logits times 1e4: the softmax saturates, the cross-entropy gradient vanishes."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x) * 1e4


class Noisy(nn.Module):
    """Gaussian input noise in forward, declared nowhere."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x + 0.3 * torch.randn_like(x))


@pytest.mark.parametrize("square", [200, 0])
def test_shattered_gradients_are_caught(trained, square):
    net, x, y = trained
    truth = _evaluate(net, x, y, 200).robust_accuracy  # the undefended function's number
    rep = _evaluate(Shattered(net), x, y, square)
    assert "zero_gradients" in _raised(rep)
    # Square runs even when the budget had none: gradients look masked
    assert rep.settings["gradient_free_forced"] == (square == 0)
    assert rep.robust_accuracy <= truth + 0.15


@pytest.mark.parametrize("square", [200, 0])
def test_saturated_softmax_is_caught(trained, square):
    net, x, y = trained
    truth = _evaluate(net, x, y, square).robust_accuracy
    rep = _evaluate(Saturated(net), x, y, square)
    flag = next(f for f in rep.flags if f.name == "zero_gradients")
    assert flag.raised and flag.values["fraction_ce"] > 0.5  # the CE gradient is gone ...
    assert rep.robust_accuracy <= truth + 0.05  # ... but the scale-free DLR loss breaks it anyway


def test_undeclared_noise_is_declared_and_reproducible(trained):
    net, x, y = trained
    model = Noisy(net)
    a, b = _evaluate(model, x, y, 100, seed=3), _evaluate(model, x, y, 100, seed=3)
    assert "undeclared_randomness" in _raised(a)
    assert a.settings["undeclared_randomness"] and a.settings["eot_samples"] == 4
    assert a.robust_accuracy == b.robust_accuracy and a.clean_accuracy == b.clean_accuracy
    assert torch.equal(a.per_sample["robust"], b.per_sample["robust"])
    plain = _evaluate(net, x, y, 100)
    assert not plain.settings["undeclared_randomness"] and plain.settings["eot_samples"] == 1


@pytest.fixture
def cheat():
    """An attack that steps 3 eps away and never projects."""

    @register_attack("cheat_overbudget", kind="white-box")
    def cheat_overbudget(model, x, y, threat, *, generator=None):
        x_adv = (x + 3 * threat.eps * torch.sign(torch.randn(x.shape, generator=generator))).clamp(0, 1)
        with torch.no_grad():
            pred = model(x_adv).argmax(1)
        success = pred != y
        return AttackResult(x_adv, success, success.clone(), pred, threat.norm_of(x_adv - x),
                            "cheat_overbudget", {}, {})

    yield "cheat_overbudget"
    _ATTACKS.pop("cheat_overbudget")


def test_an_attack_leaving_the_ball_is_refused_by_name(trained, cheat):
    net, x, y = trained
    with pytest.raises(ThreatModelError, match="'cheat_overbudget'.*outside the threat model"):
        run_attack(cheat, net, x, y, THREAT, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ThreatModelError, match="'cheat_overbudget'"):
        evaluate_robustness(net, x, y, THREAT, attacks=[cheat], checks=False, progress=False,
                            generator=torch.Generator().manual_seed(0))


def test_paper_protocol_far_above_the_adaptive_worst_case_is_flagged():
    """The demo's feature-squeezing case: 73% under the paper's PGD, 22% adaptive."""
    from robustcompress.experiments.report_data import ReportData

    def row(variant, attack, protocol, acc):
        return {"variant": variant, "attack": attack, "protocol": protocol, "eps_label": "0.1",
                "eps": 0.1, "robust_acc": acc, "extra": {}}

    rows = [row("squeeze", "fgsm", "paper", 0.80), row("squeeze", "pgd", "paper", 0.73),
            row("squeeze", "worst-case", "adaptive", 0.22),
            row("base", "fgsm", "paper", 0.40), row("base", "pgd", "paper", 0.32),
            row("base", "worst-case", "adaptive", 0.285)]
    data = ReportData("t", ["base", "squeeze"], rows, {})
    assert data.flags("squeeze") == ["paper_adaptive_gap"]
    gap = data.gap_flags("squeeze")[0]
    assert gap.values["paper_attack"] == "pgd at 0.1" and gap.values["paper_accuracy"] == 0.73
    assert data.flags("base") == []  # FGSM alone is weak; the strongest paper attack is close


def test_eps_monotonicity_check_counts_violating_points():
    from robustcompress.attacks.checks import check_eps_monotone

    assert not check_eps_monotone(0.4, 0.0, 0.02, 0.1).raised  # within tolerance
    assert check_eps_monotone(0.4, 0.2, 0.0, 0.1).raised  # 20% broke at eps/2 but not at eps
    assert check_eps_monotone(0.4, 0.0, 0.3, 0.1).raised  # 30% survived 2 eps, broken at eps

"""The line search to the decision boundary that ends DeepFool and C&W (issue 14).

On a linear classifier the exact minimal distance is known in closed form (the distance to the
nearest pairwise boundary ``|f_y - f_k| / ||w_y - w_k||`` in the dual norm, the box not binding:
points are drawn far from its faces), and adversariality along the segment from ``x`` is monotone
in the scale ``t``, so the bisection's result is pinned down: after ``k`` steps its excess over
the exact distance is at most ``2^-k`` of the searched segment (DeepFool's: ``1.02 * exact``).
With the default 20 steps that is ``1.02 * 2^-20 < 1e-6`` relative; the tests allow ``2e-6``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustcompress.attacks import ThreatModel, run_attack
from robustcompress.attacks.boundary import tighten_to_boundary
from robustcompress.attacks.cw import cw_l2_perturb, margin
from robustcompress.attacks.deepfool import deepfool_perturb
from robustcompress.errors import UserInputError
from robustcompress.metrics.robustness_metrics import r_2
from test_attacks_eval_minimal import linear_problem  # one definition of the linear oracle

SEARCH_TOL = 2e-6  # 1.02 * 2**-20 plus float64 rounding




def exact_distance(lin: nn.Linear, x: torch.Tensor, y: torch.Tensor, dual_p: float) -> torch.Tensor:
    f, w = lin(x), lin.weight
    rows = []
    for i in range(x.shape[0]):
        d = [(f[i, y[i]] - f[i, k]).abs() / (w[k] - w[y[i]]).norm(p=dual_p)
             for k in range(f.shape[1]) if k != y[i]]
        rows.append(torch.stack(d).min())
    return torch.stack(rows)


def size(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1)
    return flat.norm(dim=1) if norm == "l2" else flat.abs().amax(dim=1)


def small_mlp(seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Flatten(), nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 5))
    return model.requires_grad_(False)


@pytest.mark.parametrize("num_classes", [2, 6])
@pytest.mark.parametrize("norm,dual_p", [("l2", 2.0), ("linf", 1.0)])
def test_deepfool_lands_on_the_exact_boundary_of_a_linear_model(num_classes, norm, dual_p):
    lin, x, y = linear_problem(num_classes)
    exact = exact_distance(lin, x, y, dual_p)
    out = deepfool_perturb(lin, x, y, norm=norm, candidates=None)
    rel = size(out.x_adv - x, norm) / exact - 1
    assert (rel >= -1e-9).all(), "nothing beats the exact minimum"
    assert (rel <= SEARCH_TOL).all(), rel.max()
    assert (lin(out.x_adv).argmax(1) != y).all()  # still adversarial
    inside = x + (1 - 1e-5) * (out.x_adv - x)  # just before it: the boundary is crossed there
    assert (lin(inside).argmax(1) == y).all()


def test_registered_deepfool_reports_the_tight_distance_and_budget():
    lin, x, y = linear_problem(4, dtype=torch.float32)
    exact = exact_distance(lin, x, y, 2.0)
    eps = float(exact.median()) * 1.001  # the overshot point (1.02x) would miss it
    res = run_attack("deepfool", lin, x, y, ThreatModel.from_spec("l2", eps))
    assert torch.allclose(res.norm, exact, rtol=1e-4)
    assert torch.equal(res.success, exact <= eps)
    assert res.params["boundary_search"] == 20


@pytest.mark.parametrize("name,kw", [("deepfool", {}),
                                     ("cw", {"steps": 60, "binary_search_steps": 4})])
def test_search_never_increases_the_distance(name, kw):
    model = small_mlp()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(24, 1, 4, 5, generator=g)
    y = model(x).argmax(1)
    threat = ThreatModel.from_spec("l2", 0.0, bounds=(0.0, 1.0))
    loose = run_attack(name, model, x, y, threat, boundary_search=0, **kw)
    tight = run_attack(name, model, x, y, threat, **kw)
    assert torch.equal(tight.success, loose.success)
    assert (tight.norm <= loose.norm).all()
    assert tight.norm[tight.success].sum() < loose.norm[loose.success].sum()
    assert (model(tight.x_adv).argmax(1) != y)[tight.success].all()
    assert tight.x_adv.min() >= 0 and tight.x_adv.max() <= 1


def test_zero_steps_is_the_unsearched_attack_bit_for_bit():
    model = small_mlp(2)
    x = torch.rand(12, 1, 4, 5, generator=torch.Generator().manual_seed(2))
    y = model(x).argmax(1)
    for norm in ("l2", "linf"):
        plain = deepfool_perturb(model, x, y, norm=norm, boundary_search=0, rule="box")
        tight = deepfool_perturb(model, x, y, norm=norm, rule="box")
        assert torch.equal(tight.r_norm, plain.r_norm) and torch.equal(tight.iterations, plain.iterations)
        assert torch.equal(tight.x_adv, tighten_to_boundary(model, x, plain.x_adv, y, steps=20,
                                                            bounds=(0.0, 1.0)))
        assert not torch.equal(tight.x_adv, plain.x_adv)
    kw = {"steps": 40, "binary_search_steps": 3}
    plain = cw_l2_perturb(model, x, y, boundary_search=0, **kw)
    tight = cw_l2_perturb(model, x, y, **kw)
    assert torch.equal(tight.const, plain.const)
    crit = lambda logits, yy: margin(logits, yy, False) < 0  # noqa: E731
    assert torch.equal(tight.x_adv, tighten_to_boundary(model, x, plain.x_adv, y, steps=20,
                                                        bounds=(0.0, 1.0), adversarial=crit))
    assert torch.equal(tighten_to_boundary(model, x, plain.x_adv, y, steps=0, bounds=(0.0, 1.0)),
                       plain.x_adv)


def test_cw_search_on_a_linear_model_keeps_confidence_and_reaches_the_boundary():
    lin, x, y = linear_problem(3, batch=8, dtype=torch.float32, seed=1)
    exact = exact_distance(lin, x, y, 2.0)
    kw = {"steps": 200, "binary_search_steps": 5}
    plain = cw_l2_perturb(lin, x, y, boundary_search=0, **kw)
    tight = cw_l2_perturb(lin, x, y, **kw)
    assert (tight.l2 <= plain.l2).all() and (tight.l2 >= exact * (1 - 1e-5)).all()
    assert torch.allclose(tight.l2, (tight.x_adv - x).norm(dim=1))
    assert (lin(x + (1 - 1e-4) * (tight.x_adv - x)).argmax(1) == y).all()  # on the boundary
    kappa = 0.5
    conf = cw_l2_perturb(lin, x, y, confidence=kappa, **kw)
    assert (margin(lin(conf.x_adv), y, False) < -kappa).all()  # the search keeps kappa
    assert (conf.l2 > tight.l2).all()


def test_r2_uses_the_tight_distance():
    lin, x, y = linear_problem(4, batch=20, seed=5)
    exact = exact_distance(lin, x, y, 2.0)
    res = r_2(lin, x, y, attack="deepfool")
    assert res["success_rate"] == 1.0
    assert res["r2"] == pytest.approx(float(exact.mean()), rel=SEARCH_TOL)


class _Noisy(nn.Module):
    stochastic = True

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x) + 0.01 * torch.randn(x.shape[0], 1)


def test_stochastic_models_and_bad_step_counts():
    lin, x, y = linear_problem(3, dtype=torch.float32)
    x_adv = x + 0.5
    assert tighten_to_boundary(_Noisy(lin), x, x_adv, y, steps=20, bounds=(0.0, 2.0)) is x_adv
    for bad in (-1, 2.5, True, "20"):
        with pytest.raises(UserInputError, match="boundary_search"):
            deepfool_perturb(lin, x, y, boundary_search=bad)
    with pytest.raises(UserInputError, match="boundary_search"):
        run_attack("cw", lin, x, y, ThreatModel.from_spec("l2", 0.0), boundary_search=-3)


def test_best_rule_is_never_longer_than_either_rule():
    model = small_mlp(2)
    x = torch.rand(40, 1, 4, 5, generator=torch.Generator().manual_seed(3))
    y = model(x).argmax(1)
    for norm in ("l2", "linf"):
        runs = {r: deepfool_perturb(model, x, y, norm=norm, rule=r) for r in ("box", "accumulate", "best")}
        size = {}
        for r, o in runs.items():
            adv = model(o.x_adv).argmax(1) != y
            flat = (o.x_adv - x).flatten(1)
            d = flat.norm(dim=1) if norm == "l2" else flat.abs().amax(dim=1)
            size[r] = torch.where(adv, d, torch.full_like(d, float("inf")))
        assert (size["best"] <= torch.minimum(size["box"], size["accumulate"])).all()
        assert torch.isfinite(size["best"]).sum() >= torch.isfinite(size["box"]).sum()

"""Issue 14, part 4: budgets that converge. The EOT budget grows until the adaptive number
settles (or the cap says it did not), the curve is reported, and it is reproducible."""

from __future__ import annotations

import pytest
import torch

from robustcompress.attacks import ThreatModel
from robustcompress.attacks.convergence import evaluate_until_converged
from robustcompress.data import load_dataset
from robustcompress.defenses.sap import sap
from robustcompress.errors import UserInputError

THREAT = ThreatModel("linf", 0.1, (0.0, 1.0))
KW = dict(mc_samples=20, square_queries=30, checks=False, apgd_steps=5, progress=False)


@pytest.fixture(scope="module")
def nets(digits_mlp, digits):
    return digits_mlp, sap(digits_mlp, 0.5).eval(), digits.test.x[:100], digits.test.y[:100]


def _run(model, x, y, **kw):
    return evaluate_until_converged(model, x, y, THREAT, generator=torch.Generator().manual_seed(0),
                                    **{**KW, **kw})


def test_deterministic_model_is_evaluated_once(nets):
    net, _, x, y = nets
    rep = _run(net, x, y, eot_start=2, eot_cap=16)
    conv = rep.settings["convergence"]
    assert len(conv["curve"]) == 1 and conv["converged"]
    assert not any(f.raised for f in rep.flags if f.name == "budget_not_converged")


def test_sap_curve_falls_and_the_cap_is_flagged(nets):
    _, model, x, y = nets
    rep = _run(model, x, y, eot_start=2, eot_cap=16, tol=0.005)
    curve = [p["robust_accuracy"] for p in rep.settings["convergence"]["curve"]]
    assert [p["eot_samples"] for p in rep.settings["convergence"]["curve"]] == [2, 4, 8, 16]
    assert curve[-1] < curve[0]  # the number keeps falling with the attacker's budget
    assert rep.robust_accuracy == curve[-1]
    flag = next(f for f in rep.flags if f.name == "budget_not_converged")
    assert flag.raised and not rep.settings["convergence"]["converged"]
    again = _run(model, x, y, eot_start=2, eot_cap=16, tol=0.005)
    assert [p["robust_accuracy"] for p in again.settings["convergence"]["curve"]] == curve


def test_a_loose_tolerance_stops_early(nets):
    _, model, x, y = nets
    rep = _run(model, x, y, eot_start=2, eot_cap=64, tol=0.5)
    assert len(rep.settings["convergence"]["curve"]) == 2 and rep.settings["convergence"]["converged"]


def test_bad_budgets_are_refused(nets):
    _, model, x, y = nets
    with pytest.raises(UserInputError, match="eot_start"):
        _run(model, x, y, eot_start=8, eot_cap=4)
    with pytest.raises(UserInputError, match="sets eot_samples itself"):
        _run(model, x, y, eot_samples=4)


def test_cli_converge_prints_the_curve(nets, tmp_path, capsys):
    from robustcompress.cli import main
    from robustcompress.models import build_model
    from robustcompress.training import save_checkpoint

    ds = load_dataset("digits")
    torch.manual_seed(0)
    model = sap(build_model("lenet300", ds.info), 0.5, method="bernoulli")
    save_checkpoint(model, tmp_path / "m")
    assert main(["evaluate-adaptive", "--checkpoint", str(tmp_path / "m"), "--eps", "0.1",
                 "--limit", "30", "--converge", "--eot", "2", "--eot-cap", "4", "--apgd-steps", "2",
                 "--square-queries", "0", "--no-checks", "--mc", "4"]) == 0
    out = capsys.readouterr().out
    assert "EOT    2, APGD    2 steps" in out and "EOT    4, APGD    4 steps" in out

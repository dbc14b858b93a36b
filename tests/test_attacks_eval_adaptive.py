"""Acceptance tests of the adaptive evaluation and the gradient-masking checks on toy defences.

* A heavy test-time-dropout MLP (``stochastic=True``, per-sample draws) looks robust to plain PGD
  with one noisy gradient per step (judged by the MC-averaged prediction) and loses that under
  EOT-PGD; the masking checks flag the first situation and not the second.
* A rounding MLP (``non_differentiable=True``) has zero input gradients under the exact
  derivative (flagged, and gradient attacks fail) and is broken under BPDA with the identity.
"""

from __future__ import annotations

import json

import pytest
import torch

from robustcompress.attacks import ThreatModel, run_attack
from robustcompress.attacks.adaptive import RobustnessReport, evaluate_robustness
from robustcompress.attacks.checks import masking_checks
from test_attacks_eval_toys import digits_data, make_mlp, train_mlp

N = 200


@pytest.fixture(scope="session")
def digits_eval():
    xtr, ytr, xte, yte = digits_data()
    return xtr, ytr, xte[:N], yte[:N]


@pytest.fixture(scope="session")
def dropout_model(digits_eval):
    xtr, ytr, _, _ = digits_eval
    return train_mlp(make_mlp(p_in=0.5, p_hidden=0.5, width=128), xtr, ytr, steps=150)


@pytest.fixture(scope="session")
def round_model(digits_eval):
    xtr, ytr, _, _ = digits_eval
    return train_mlp(make_mlp(round_scale=2.0), xtr, ytr, steps=200)


def _flags(flags):
    return {f.name: f for f in flags}


def test_stochastic_toy_fools_plain_pgd_but_not_eot_pgd(dropout_model, digits_eval):
    _, _, x, y = digits_eval
    threat = ThreatModel.from_spec("linf", 0.1)
    clean = run_attack("pgd", dropout_model, x, y, threat.with_eps(0.0), steps=0, mc_samples=100,
                       generator=torch.Generator().manual_seed(0))
    assert clean.robust_accuracy > 0.9
    plain = run_attack("pgd", dropout_model, x, y, threat, steps=20, eot_samples=1, mc_samples=100,
                       generator=torch.Generator().manual_seed(1))
    eot = run_attack("pgd", dropout_model, x, y, threat, steps=20, eot_samples=20, mc_samples=100,
                     generator=torch.Generator().manual_seed(1))
    # plain PGD with a single noisy gradient sample leaves the model looking far more robust
    assert plain.robust_accuracy - eot.robust_accuracy > 0.15, (plain.robust_accuracy,
                                                                 eot.robust_accuracy)
    # "fooled in at least one of n draws" is never below the MC-averaged success
    assert (eot.fooled_any | ~eot.success).all()
    assert eot.fooled_any.float().mean() >= eot.success.float().mean()


def test_masking_checks_flag_single_sample_attacker_not_eot_attacker(dropout_model, digits_eval):
    _, _, x, y = digits_eval
    threat = ThreatModel.from_spec("linf", 0.1)
    weak = _flags(masking_checks(dropout_model, x, y, threat, eot_samples=1, mc_samples=100,
                                 steps=10, generator=torch.Generator().manual_seed(2)))
    assert weak["more_eot_helps"].raised, weak["more_eot_helps"].values
    strong = _flags(masking_checks(dropout_model, x, y, threat, eot_samples=20, mc_samples=100,
                                   steps=10, generator=torch.Generator().manual_seed(2)))
    assert not any(f.raised for f in strong.values()), [f.line() for f in strong.values()]


def test_round_toy_zero_gradient_flagged_and_broken_by_bpda(round_model, digits_eval):
    _, _, x, y = digits_eval
    threat = ThreatModel.from_spec("linf", 0.2)
    kw = dict(apgd_steps=20, square_queries=0, check_steps=10, progress=False)
    naive = evaluate_robustness(round_model, x, y, threat, bpda="exact",
                                generator=torch.Generator().manual_seed(0), **kw)
    flags = _flags(naive.flags)
    assert flags["zero_gradients"].raised and flags["zero_gradients"].values["fraction"] == 1.0
    assert flags["large_eps_not_zero"].raised
    white = [a for a in naive.attacks if a.kind == "white-box"]
    assert white[-1].robust_accuracy > 0.7  # the naive gradient attacker sees nothing ...
    # ... so, although square_queries=0, Square joins the cascade and finds the truth
    assert naive.settings["gradient_free_forced"] and naive.attacks[-1].label == "square"
    assert naive.robust_accuracy < 0.05
    bpda = evaluate_robustness(round_model, x, y, threat, bpda="identity",
                               generator=torch.Generator().manual_seed(0), **kw)
    assert bpda.robust_accuracy < 0.05
    assert not any(f.raised for f in bpda.flags), [f.line() for f in bpda.flags]
    assert bpda.settings["bpda"] == "identity" and naive.settings["bpda"] == "exact"
    # the model's own surrogate is restored after the evaluation
    assert [m.surrogate for m in round_model.modules() if hasattr(m, "surrogate")] == ["exact"]


def test_square_in_the_cascade_catches_masked_gradients(round_model, digits_eval):
    _, _, x, y = digits_eval
    threat = ThreatModel.from_spec("linf", 0.2)
    rep = evaluate_robustness(round_model, x[:64], y[:64], threat, bpda="exact", apgd_steps=10,
                              square_queries=300, check_steps=5,
                              generator=torch.Generator().manual_seed(0), progress=False)
    labels = [a.label for a in rep.attacks]
    assert labels == ["apgd-ce", "apgd-dlr", "square"]
    sq = rep.attacks[2]
    assert sq.broken > 0.5 * sq.attempted
    assert _flags(rep.flags)["blackbox_stronger"].raised


def test_report_cascade_bookkeeping_and_json(dropout_model, digits_eval):
    _, _, x, y = digits_eval
    x, y = x[:48], y[:48]
    surrogate = train_mlp(make_mlp(seed=1), *digits_data()[:2], steps=100)
    rep = evaluate_robustness(dropout_model, x, y, ThreatModel.from_spec("linf", 0.1),
                              surrogate_model=surrogate, eot_samples=4, mc_samples=16,
                              apgd_steps=5, square_queries=50, checks=False,
                              generator=torch.Generator().manual_seed(5), progress=False)
    assert isinstance(rep, RobustnessReport)
    assert [a.label for a in rep.attacks] == ["apgd-ce", "apgd-dlr", "square", "transfer"]
    ps = rep.per_sample
    # each attack only sees the points still robust before it; counts add up
    remaining = int(ps["clean_correct"].sum())
    for a in rep.attacks:
        assert a.attempted == remaining
        remaining -= a.broken
    assert remaining == int(ps["robust"].sum())
    assert rep.robust_accuracy == pytest.approx(ps["robust"].float().mean().item())
    assert rep.robust_accuracy <= rep.clean_accuracy
    assert torch.equal(ps["robust"], ps["broken_by"] == -1)
    assert (ps["fooled_any"] | ps["robust"]).all()
    assert ((ps["true_prob"] >= 0) & (ps["true_prob"] <= 1)).all()
    # broken points sit at a low probability of their label, robust ones at a high one
    assert ps["true_prob"][ps["robust"]].mean() > 0.5 > ps["true_prob"][ps["broken_by"] >= 0].mean()
    assert rep.settings["eot_samples"] == 4 and rep.settings["mc_samples"] == 16
    assert len({a.seed for a in rep.attacks}) == 4
    assert (rep.x_adv - x).abs().max() <= 0.1 + 1e-6
    doc = json.loads(json.dumps(rep.to_dict()))
    assert doc["per_sample"]["robust"] == ps["robust"].tolist()
    again = evaluate_robustness(dropout_model, x, y, ThreatModel.from_spec("linf", 0.1),
                                surrogate_model=surrogate, eot_samples=4, mc_samples=16,
                                apgd_steps=5, square_queries=50, checks=False,
                                generator=torch.Generator().manual_seed(5), progress=False)
    assert torch.equal(again.per_sample["robust"], ps["robust"])  # same seed, same verdicts


def test_report_renders(round_model, digits_eval):
    from rich.console import Console

    _, _, x, y = digits_eval
    rep = evaluate_robustness(round_model, x[:16], y[:16], ThreatModel.from_spec("linf", 0.2),
                              apgd_steps=3, square_queries=20, check_steps=2,
                              generator=torch.Generator().manual_seed(0), progress=False)
    console = Console(record=True, width=140)
    rep.render(console)
    text = console.export_text()
    assert "apgd-ce" in text and "worst" in text and "BPDA identity" in text


def test_report_does_not_depend_on_batch_size(digits_eval):
    xtr, ytr, x, y = digits_eval
    model = train_mlp(make_mlp(seed=2), xtr, ytr, steps=60)
    threat = ThreatModel.from_spec("linf", 0.05)
    kw = dict(apgd_steps=5, square_queries=30, checks=False, progress=False)
    whole = evaluate_robustness(model, x[:40], y[:40], threat,
                                generator=torch.Generator().manual_seed(3), **kw)
    split = evaluate_robustness(model, x[:40], y[:40], threat, batch_size=7,
                                generator=torch.Generator().manual_seed(3), **kw)
    assert 0 < whole.robust_accuracy < whole.clean_accuracy  # a non-trivial cascade
    assert torch.equal(whole.per_sample["broken_by"], split.per_sample["broken_by"])
    assert torch.allclose(whole.x_adv, split.x_adv, atol=1e-6)

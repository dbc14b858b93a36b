"""Adversarial-training objectives: they use the library's attacks, restore modes, and work."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustcompress.attacks import ThreatModel, run_attack
from robustcompress.data import load_dataset
from robustcompress.errors import UserInputError
from robustcompress.models import build_model
from robustcompress.training import TrainConfig, fit
from robustcompress.training.objectives import (
    AdversarialTraining,
    craft_adversarial,
    fgsm_training,
    module_mode,
    pgd_training,
)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _robust_acc(model, ds, threat, n=200):
    model.eval()
    x, y = ds.test.x[:n], ds.test.y[:n]
    res = run_attack("pgd", model, x, y, threat, steps=20, generator=torch.Generator().manual_seed(5))
    clean = float((model(x).argmax(1) == y).float().mean())
    return clean, res.robust_accuracy


def test_pgd_training_increases_robust_accuracy_on_digits(digits):
    threat = ThreatModel.from_spec("linf", 0.2, digits.info)
    cfg = TrainConfig(epochs=6, batch_size=64, lr=3e-3, seed=0)
    torch.manual_seed(0)
    std = build_model("lenet300", digits.info, hidden=(64,))
    fit(std, digits, cfg, progress=False)
    torch.manual_seed(0)
    adv = build_model("lenet300", digits.info, hidden=(64,))
    obj = pgd_training(threat, steps=5, step_size=0.08, generator=torch.Generator().manual_seed(1))
    fit(adv, digits, cfg, objective=obj, progress=False)
    c0, r0 = _robust_acc(std, digits, threat)
    c1, r1 = _robust_acc(adv, digits, threat)
    assert c0 > 0.85 and c1 > 0.7
    assert r1 > r0 + 0.25, (r0, r1)


def test_craft_restores_modes_and_uses_eval_mode():
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(self.training)
            return x

    model = nn.Sequential(nn.Flatten(), Probe(), nn.Linear(4, 3))
    model.train()
    model[2].eval()  # a sub-module in its own mode must keep it
    threat = ThreatModel(eps=0.1)
    x, y = torch.rand(5, 4), torch.randint(0, 3, (5,))
    xa = craft_adversarial(model, x, y, threat, "pgd", steps=3, generator=torch.Generator().manual_seed(0))
    assert set(seen) == {False}
    assert model.training and model[1].training and not model[2].training
    assert (xa - x).abs().max() <= 0.1 + 1e-6 and xa.min() >= 0 and xa.max() <= 1
    with module_mode(model, "train"):
        assert model[2].training
    assert not model[2].training


def test_mix_and_attack_choice():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.rand(8, 4), torch.randint(0, 3, (8,))
    threat = ThreatModel(eps=0.2)
    obj = fgsm_training(threat)
    assert obj.mix == 0.5 and obj.attack == "fgsm"
    loss = obj(model, x, y)
    xa = run_attack("fgsm", model, x, y, threat).x_adv
    expected = 0.5 * F.cross_entropy(model(x), y) + 0.5 * F.cross_entropy(model(xa), y)
    torch.testing.assert_close(loss, expected)
    with pytest.raises(UserInputError):
        AdversarialTraining(threat, mix=1.5)
    with pytest.raises(UserInputError):
        craft_adversarial(model, x, y, threat, "fgsm", steps=3)


def test_random_steps_and_eps_are_sampled_from_generator():
    threat = ThreatModel(eps=0.3)
    obj = AdversarialTraining(threat, steps=7, step_size=0.03, random_steps=True, random_eps=True,
                              min_eps_fraction=0.5, generator=torch.Generator().manual_seed(0))
    draws = [obj.sample_budget() for _ in range(300)]
    steps = {s for _, s, _ in draws}
    eps = torch.tensor([t.eps for t, _, _ in draws])
    assert steps == set(range(1, 8))
    assert eps.min() >= 0.15 - 1e-9 and eps.max() <= 0.3 + 1e-9
    assert abs(float(eps.mean()) - 0.225) < 0.01  # uniform on [0.15, 0.3]
    t, _, step = draws[0]
    assert step == pytest.approx(0.03 * t.eps / 0.3)
    obj2 = AdversarialTraining(threat, steps=7, step_size=0.03, random_steps=True, random_eps=True,
                               min_eps_fraction=0.5, generator=torch.Generator().manual_seed(0))
    assert [obj2.sample_budget()[1] for _ in range(20)] == [s for _, s, _ in draws[:20]]


def test_defense_spec_fine_tunes_a_copy_and_records_recipe(digits):
    from robustcompress.defenses import DefenseContext, get_defense

    torch.manual_seed(0)
    model = build_model("lenet300", digits.info, hidden=(32,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    spec = get_defense("adversarial_training")
    ctx = DefenseContext(dataset=digits, device=torch.device("cpu"), progress=False)
    out = spec.apply(model, spec.Params(attack="rfgsm", eps=0.1, epochs=1), ctx)[""]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not all(torch.equal(before[k], v) for k, v in out.state_dict().items())
    rec = out.robustcompress_defenses[-1]
    assert rec["name"] == "adversarial_training" and rec["params"]["attack"] == "rfgsm"
    assert spec.structure(model, spec.Params()) is model


def test_fraction_milestones_and_the_anp_vs_code_recipe():
    from robustcompress.training import fraction_milestones, lr_factor, recipe_overrides

    assert fraction_milestones(200, (0.5, 0.7)) == [100, 140]
    assert fraction_milestones(4, (0.5, 0.7)) == [2]  # int(2.8) = 2: one step, not two at epoch 2
    assert fraction_milestones(1, (0.5, 0.7)) == []   # no epoch strictly inside a 1-epoch run
    assert recipe_overrides(10) == {}
    rec = recipe_overrides(10, (0.5, 0.7), 1e-4)
    assert rec == {"weight_decay": 1e-4, "schedule": "multistep", "milestones": [5, 7], "gamma": 0.1}
    cfg = TrainConfig(epochs=10, **rec)
    assert [lr_factor(cfg, e) for e in (0, 4, 5, 6, 7, 9)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_defense_passes_lr_steps_and_weight_decay_to_the_run_and_rejects_bad_fractions(digits):
    from pydantic import ValidationError

    from robustcompress.defenses import DefenseContext, get_defense

    spec = get_defense("adversarial_training")
    with pytest.raises(ValidationError, match="fractions of training"):
        spec.Params(lr_steps=[0.5, 1.5])
    seen = {}

    def fake_fit(net, objective=None, **overrides):
        seen.update(overrides, mix=objective.mix)
        return net

    ctx = DefenseContext(dataset=digits, device=torch.device("cpu"), progress=False, fit=fake_fit)
    model = build_model("lenet300", digits.info, hidden=(16,))
    spec.apply(model, spec.Params(epochs=10, mix=1 / 3, lr_steps=[0.5, 0.7], weight_decay=1e-4), ctx)
    assert seen == {"epochs": 10, "weight_decay": 1e-4, "schedule": "multistep", "milestones": [5, 7],
                    "gamma": 0.1, "mix": pytest.approx(1 / 3)}


def test_anp_vs_defense_lr_steps_reach_the_run_and_default_to_the_original(digits):
    from robustcompress.defenses import DefenseContext, get_defense

    spec = get_defense("anp_vs")
    assert spec.Params().lr_steps == [0.5, 0.7]
    seen = []

    def fake_fit(net, objective=None, **overrides):
        seen.append(overrides)
        return net

    ctx = DefenseContext(dataset=digits, device=torch.device("cpu"), progress=False, fit=fake_fit)
    model = build_model("lenet300", digits.info, hidden=(16,))
    for lr_steps in ([0.5, 0.7], []):
        spec.apply(model, spec.Params(epochs=10, lr_steps=lr_steps, export=False), ctx)
    assert seen[0]["schedule"] == "multistep" and seen[0]["milestones"] == [5, 7]
    assert seen[1]["schedule"] == "none" and seen[1]["milestones"] == []

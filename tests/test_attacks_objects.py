"""torchattacks/Foolbox-style attack objects: same results as run_attack, sweeps, targets, refusals."""

import json

import pytest
import torch
from torch import nn

from robustcompress.attacks import (
    APGD, CW, FGSM, MIM, PGD, PGDL2, Attack, DeepFool, Square, ThreatModel, least_likely_targets,
    random_targets, run_attack, run_attack_sweep,
)
from robustcompress.errors import UserInputError

CLASSES, DIM = 4, 10


@pytest.fixture(scope="module")
def toy():
    """A linear classifier trained to ~100% on four separated clusters in [0, 1]^10."""
    g = torch.Generator().manual_seed(0)
    centers = torch.rand(CLASSES, DIM, generator=g)
    y = torch.arange(CLASSES).repeat(60)
    x = (centers[y] + 0.05 * torch.randn(len(y), DIM, generator=g)).clamp(0, 1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(DIM, 32), nn.ReLU(), nn.Linear(32, CLASSES))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    assert (model(x).argmax(1) == y).float().mean() > 0.95
    return model, x[:80], y[:80]


def _same(a, b):
    for k in ("x_adv", "success", "fooled_any", "pred", "norm"):
        assert torch.equal(getattr(a, k), getattr(b, k)), k
    assert a.params == b.params


@pytest.mark.parametrize("obj, name, norm, eps, params", [
    (PGD, "pgd", "linf", 0.1, {"steps": 5, "restarts": 2}),
    (PGDL2, "pgd", "l2", 0.5, {"steps": 5}),
    (FGSM, "fgsm", "linf", 0.1, {}),
    (MIM, "mim", "linf", 0.1, {"steps": 4}),
    (APGD, "apgd", "linf", 0.1, {"steps": 6}),
    (Square, "square", "linf", 0.1, {"n_queries": 20}),
    (DeepFool, "deepfool", "l2", 0.0, {"max_iter": 5}),
])
def test_object_equals_run_attack_bit_for_bit(toy, obj, name, norm, eps, params):
    model, x, y = toy
    threat = ThreatModel.from_spec(norm, eps)
    ref = run_attack(name, model, x, y, threat, generator=torch.Generator().manual_seed(3), **params)
    _same(obj(model, eps=eps, seed=3, **params).run(x, y), ref)
    _same(Attack(name, model, eps=eps, norm=norm, seed=3, **params).run(x, y), ref)
    assert torch.equal(obj(model, eps=eps, seed=3, **params)(x, y), ref.x_adv)


def test_torchattacks_names_and_a_seeded_stream(toy):
    model, x, y = toy
    a = PGD(model, eps=0.1, alpha=0.01, steps=3, seed=0)
    assert a.params["step_size"] == 0.01 and a.threat.eps == 0.1
    first, second = a(x, y), a(x, y)
    assert not torch.equal(first, second)          # the object's stream moves on between calls
    assert torch.equal(first, PGD(model, eps=0.1, alpha=0.01, steps=3, seed=0)(x, y))
    assert PGD(model, eps=8, eps_scale=255).threat.eps == pytest.approx(8 / 255)


def test_sweep_equals_separate_calls(toy):
    model, x, y = toy
    budgets = [0.02, "8/255", 0.15]
    sweep = PGD(model, eps=0.1, steps=5, seed=1).sweep(x, y, eps=budgets)
    fn = run_attack_sweep("pgd", model, x, y, ThreatModel(eps=0.1), budgets, steps=5,
                          generator=torch.Generator().manual_seed(1))
    assert list(sweep) == [0.02, 8 / 255, 0.15] and list(fn) == list(sweep)
    for eps in sweep:
        alone = PGD(model, eps=eps, steps=5, seed=1).run(x, y)
        _same(sweep[eps], alone)
        _same(fn[eps], alone)
        assert sweep.robust_accuracy[eps] == alone.robust_accuracy
    assert sweep.robust_accuracy[0.15] < sweep.robust_accuracy[0.02]
    assert [r["eps"] for r in sweep.summary()] == list(sweep)


@pytest.mark.parametrize("obj, norm, eps, bounds", [
    (PGD, "linf", 0.2, (0.0, 1.0)), (PGDL2, "l2", 0.8, (0.0, 1.0)), (MIM, "linf", 0.2, (0.0, 1.0)),
    (PGD, "linf", 0.3, (-1.0, 1.0)), (APGD, "l2", 0.8, (0.0, 1.0)),
])
def test_returned_points_lie_in_ball_and_box(toy, obj, norm, eps, bounds):
    model, x, y = toy
    x = x * (bounds[1] - bounds[0]) + bounds[0]
    res = obj(model, eps=eps, norm=norm, bounds=bounds, steps=8, seed=0, early_stop=False).run(x, y)
    assert bool((res.x_adv >= bounds[0]).all() and (res.x_adv <= bounds[1]).all())
    assert float(ThreatModel(norm=norm, eps=eps, bounds=bounds).norm_of(res.x_adv - x).max()) <= eps * (1 + 1e-6)


def test_random_targets_avoid_label_and_cover_the_others():
    y = torch.arange(5).repeat(2000)
    t = random_targets(y, 5, torch.Generator().manual_seed(0))
    assert not bool((t == y).any()) and t.dtype == torch.int64
    for c in range(5):
        counts = torch.bincount(t[y == c], minlength=5)
        others = counts[torch.arange(5) != c]
        assert counts[c] == 0 and bool((others > 400).all())   # ~500 each if uniform
    assert torch.equal(t, random_targets(y, 5, torch.Generator().manual_seed(0)))
    with pytest.raises(UserInputError, match="0..2"):
        random_targets(torch.tensor([3]), 3)


def test_least_likely_is_argmin_of_logits(toy):
    model, x, _ = toy
    with torch.no_grad():
        expected = model(x).argmin(1)
    assert torch.equal(least_likely_targets(model, x), expected)


@pytest.mark.parametrize("mode", ["random", "least_likely"])
def test_targeted_pgd_reaches_the_target(toy, mode):
    model, x, y = toy
    res = PGD(model, eps=0.5, steps=40, seed=0, target=mode).run(x, y)
    target = res.extra["target"]
    assert torch.equal(res.success, res.pred == target)
    assert res.success.float().mean() >= 0.95
    if mode == "random":
        assert not bool((target == y).any())


def test_targeted_with_a_tensor_and_a_callable(toy):
    model, x, y = toy
    fixed = (y + 1) % CLASSES
    a = PGD(model, eps=0.5, steps=40, seed=0).set_target(fixed)
    b = PGD(model, eps=0.5, steps=40, seed=0).set_target(lambda x_, y_: (y_ + 1) % CLASSES)
    ra, rb = a.run(x, y), b.run(x, y)
    _same(ra, rb)
    assert torch.equal(ra.extra["target"], fixed) and ra.success.float().mean() >= 0.95
    assert "target" not in a.set_target(None).run(x, y).extra


def test_full_strength_flag_never_returns_a_smaller_loss(toy):
    model, x, y = toy
    first = PGD(model, eps=0.15, steps=20, seed=0).run(x, y)
    full = PGD(model, eps=0.15, steps=20, seed=0, early_stop=False).run(x, y)
    ok = first.success
    assert ok.sum() >= 10 and torch.equal(full.success[ok], ok[ok])
    gap = full.extra["objective"][ok] - first.extra["objective"][ok]
    assert float(gap.min()) >= -1e-5
    assert float(gap.max()) > 0.1                  # the flag really changes the returned points


def test_bad_input_is_one_clear_error(toy):
    model, x, y = toy
    with pytest.raises(UserInputError, match="eps-scale 255"):
        PGD(model, eps=8)
    with pytest.raises(UserInputError, match="unknown attack 'pgdd'"):
        Attack("pgdd", model)
    with pytest.raises(UserInputError, match="unknown norm 'l1'"):
        PGD(model, norm="l1")
    with pytest.raises(UserInputError, match="linf"):
        Square(model, norm="l2", eps=0.5).run(x, y)
    with pytest.raises(UserInputError, match="L2"):
        CW(model, norm="linf", eps=0.1, steps=2).run(x, y)
    with pytest.raises(UserInputError, match="no parameter"):
        FGSM(model, steps=3).run(x, y)
    with pytest.raises(UserInputError, match="once"):
        PGD(model, alpha=0.1, step_size=0.1)
    with pytest.raises(UserInputError, match="target mode"):
        PGD(model).set_target("most_likely")
    with pytest.raises(UserInputError, match="not both"):
        PGD(model, seed=0, generator=torch.Generator())
    with pytest.raises(UserInputError, match="at least one budget"):
        PGD(model).sweep(x, y, eps=[])


def test_model_mode_is_left_alone_and_batchnorm_training_warns():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).train()
    with pytest.warns(UserWarning, match="BatchNorm"):
        FGSM(model, eps=0.1)(torch.rand(6, 3), torch.zeros(6, dtype=torch.long))
    assert model.training


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from robustcompress.data import load_dataset
    from robustcompress.models import build_model
    from robustcompress.training import save_checkpoint

    info = load_dataset("digits", test_limit=60).info
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "model"
    save_checkpoint(build_model("lenet300", info), path)
    return path


def test_cli_several_eps_print_one_row_each(checkpoint, tmp_path, capsys):
    from robustcompress.cli import main

    common = ["attack", "--checkpoint", str(checkpoint), "--attack", "pgd", "--steps", "3", "--n", "20",
              "--device", "cpu"]
    out, one = tmp_path / "sweep.json", tmp_path / "one.json"
    assert main(common + ["--eps", "0.05,8/255", "--eps", "0.3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "robust acc" in printed and all(f" {e} " in printed for e in ("0.05", "0.031373", "0.3"))
    rows = json.loads(out.read_text())
    assert [r["threat"]["spec"] for r in rows] == ["0.05", "8/255", "0.3"]
    assert main(common + ["--eps", "0.3", "--out", str(one)]) == 0
    single = json.loads(one.read_text())
    assert single["robust_accuracy"] == rows[2]["robust_accuracy"]
    assert single["norm_mean"] == rows[2]["norm_mean"]

"""Invariants of every core attack: eps-ball and box, no side effects, determinism, batch size;
and the linear-model oracle of FGSM."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from robustcompress.attacks import AttackResult, ThreatModel, input_gradient, run_attack
from robustcompress.errors import UserInputError

CORE = ["fgsm", "bim", "pgd", "mim", "rfgsm", "apgd", "apgd-t", "gaussian", "uniform"]
FAST = {"bim": dict(steps=5), "pgd": dict(steps=5, restarts=2), "mim": dict(steps=5),
        "apgd": dict(steps=10), "apgd-t": dict(steps=5, n_target_classes=2)}


def tiny_mlp(seed: int, d: int = 12, classes: int = 4, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(seed)  # model construction only; attacks below never touch the global RNG
    m = nn.Sequential(nn.Flatten(), nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, classes))
    return m.to(dtype)


def data(seed: int, n: int = 10, d: int = 12, classes: int = 4, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, d, generator=g, dtype=dtype), torch.randint(0, classes, (n,), generator=g)


@settings(max_examples=12, deadline=None)
@given(
    name=st.sampled_from(CORE),
    norm=st.sampled_from(["linf", "l2"]),
    eps=st.floats(0.0, 0.6),
    seed=st.integers(0, 10_000),
)
def test_every_attack_stays_in_ball_and_box(name, norm, eps, seed):
    model = tiny_mlp(seed)
    x, y = data(seed)
    threat = ThreatModel(norm, eps, (0.0, 1.0))
    res = run_attack(name, model, x, y, threat, generator=torch.Generator().manual_seed(seed),
                     **FAST.get(name, {}))
    assert isinstance(res, AttackResult) and res.x_adv.shape == x.shape
    assert bool((threat.norm_of(res.x_adv - x) <= eps + 1e-7).all())
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    assert torch.allclose(res.norm, threat.norm_of(res.x_adv - x))
    with torch.no_grad():
        pred = model(res.x_adv).argmax(1)
    assert torch.equal(res.pred, pred) and torch.equal(res.success, pred != y)
    assert torch.equal(res.fooled_any, res.success)  # deterministic model


@pytest.mark.parametrize("name", CORE)
def test_no_side_effects_on_grad_mode_and_global_rng(name):
    model = tiny_mlp(0)
    model.train()  # whatever mode the user left it in stays
    model[1].eval()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    x, y = data(1)
    threat = ThreatModel("linf", 0.1, (0.0, 1.0))
    modes = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    run_attack(name, model, x, y, threat, generator=torch.Generator().manual_seed(3), **FAST.get(name, {}))
    assert torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())


def test_input_gradient_leaves_grad_none_and_matches_autograd():
    model = tiny_mlp(2)
    x, y = data(2)
    loss, grad = input_gradient(model, x, y)
    assert all(p.grad is None for p in model.parameters())
    xr = x.clone().requires_grad_(True)
    ref = nn.functional.cross_entropy(model(xr), y, reduction="none")
    (ref_grad,) = torch.autograd.grad(ref.sum(), xr)
    assert torch.allclose(loss, ref.detach()) and torch.allclose(grad, ref_grad)
    # targeted flips the sign; per-sample gradients do not depend on the rest of the batch
    tl, tg = input_gradient(model, x, y, targeted=True)
    assert torch.allclose(tl, -loss) and torch.allclose(tg, -grad)
    _, g3 = input_gradient(model, x[:3], y[:3])
    assert torch.allclose(g3, grad[:3])


class PerSample(nn.Module):
    """Runs ``net`` on one row at a time, so each row's output is bitwise batch-independent.

    Batched BLAS kernels round differently for different batch shapes (about 1e-17 in float64),
    and APGD's step-size comparisons can amplify that; this wrapper isolates the attack logic.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return torch.cat([self.net(x[i:i + 1]) for i in range(x.shape[0])]) if len(x) else self.net(x)


@pytest.mark.parametrize("name", CORE)
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_same_seed_same_output_and_batch_size_invariance(name, norm):
    model = PerSample(tiny_mlp(4))
    x, y = data(4, n=12)
    threat = ThreatModel(norm, 0.3 if norm == "linf" else 0.8, (0.0, 1.0))
    kw = FAST.get(name, {})

    def run(batch_size=None, seed=9):
        return run_attack(name, model, x, y, threat, generator=torch.Generator().manual_seed(seed),
                          batch_size=batch_size, **kw)

    a, b, c = run(), run(), run(batch_size=5)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.success, b.success)
    assert torch.equal(a.x_adv, c.x_adv) and torch.equal(a.success, c.success)
    if name in ("rfgsm", "gaussian", "uniform", "pgd", "apgd"):
        assert not torch.equal(a.x_adv, run(seed=10).x_adv)  # the seed matters where there is randomness


@pytest.mark.parametrize("name", ["fgsm", "bim", "pgd", "mim", "rfgsm"])
def test_batch_size_invariance_of_a_plain_batched_model(name):
    """Without the per-row wrapper the same holds up to kernel round-off (sign() absorbs it here)."""
    model = tiny_mlp(5)
    x, y = data(5, n=12)
    threat = ThreatModel("linf", 0.2, (0.0, 1.0))
    a, c = (run_attack(name, model, x, y, threat, generator=torch.Generator().manual_seed(1),
                       batch_size=bs, **FAST.get(name, {})) for bs in (None, 5))
    assert torch.allclose(a.x_adv, c.x_adv, atol=1e-12) and torch.equal(a.success, c.success)


def binary_linear(w: torch.Tensor, b: float) -> nn.Module:
    """Logits ``[0, w.x + b]``: class 1 iff ``f(x) = w.x + b > 0``."""
    lin = nn.Linear(w.numel(), 2).double()
    with torch.no_grad():
        lin.weight.copy_(torch.stack([torch.zeros_like(w), w]))
        lin.bias.copy_(torch.tensor([0.0, b], dtype=torch.float64))
    return nn.Sequential(nn.Flatten(), lin)


def test_fgsm_reaches_the_exact_linf_optimum_of_a_linear_classifier():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(20, generator=g, dtype=torch.float64)
    model = binary_linear(w, 0.3)
    x = torch.rand(200, 1, 20, generator=g, dtype=torch.float64) * 2 - 1
    f = x.flatten(1) @ w + 0.3
    y = (f > 0).long()
    # the minimal Linf perturbation that flips a binary linear model is |f(x)| / ||w||_1
    d_min = f.abs() / w.abs().sum()
    s = d_min.sort().values
    eps = float(s[99] + s[100]) / 2  # between two points' distances: no point lies on the boundary
    threat = ThreatModel("linf", eps, (-10.0, 10.0))  # a box that never clips
    res = run_attack("fgsm", model, x, y, threat)
    assert torch.equal(res.success, d_min < eps)  # flips exactly the points with margin < eps ||w||_1
    assert torch.allclose(res.norm, torch.full_like(res.norm, eps))
    # at eps = d_min (1 + 1e-7) every point flips, at d_min (1 - 1e-7) none does: the optimum
    for i in range(0, 200, 25):
        t_over = ThreatModel("linf", float(d_min[i]) * (1 + 1e-7), (-10.0, 10.0))
        t_under = ThreatModel("linf", float(d_min[i]) * (1 - 1e-7), (-10.0, 10.0))
        assert bool(run_attack("fgsm", model, x[i:i + 1], y[i:i + 1], t_over).success)
        assert not bool(run_attack("fgsm", model, x[i:i + 1], y[i:i + 1], t_under).success)


def test_fgm_l2_reaches_the_exact_l2_optimum_of_a_linear_classifier():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(15, generator=g, dtype=torch.float64)
    model = binary_linear(w, -0.2)
    x = torch.rand(100, 1, 15, generator=g, dtype=torch.float64) * 2 - 1
    f = x.flatten(1) @ w - 0.2
    d_min = f.abs() / w.norm()  # distance to the hyperplane
    s = d_min.sort().values
    eps = float(s[49] + s[50]) / 2
    res = run_attack("fgsm", model, x, (f > 0).long(), ThreatModel("l2", eps, (-10.0, 10.0)))
    assert torch.equal(res.success, d_min < eps)


def test_iterative_attacks_cannot_beat_fgsm_on_a_linear_model_but_match_it():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(10, generator=g, dtype=torch.float64)
    model = binary_linear(w, 0.0)
    x = torch.rand(100, 1, 10, generator=g, dtype=torch.float64) * 2 - 1
    y = (x.flatten(1) @ w > 0).long()
    threat = ThreatModel("linf", 0.2, (-10.0, 10.0))
    ref = run_attack("fgsm", model, x, y, threat).success
    for name in ("bim", "pgd", "mim", "apgd"):
        assert torch.equal(run_attack(name, model, x, y, threat, generator=torch.Generator().manual_seed(0),
                                      **FAST.get(name, {})).success, ref), name


def test_run_attack_refuses_unknown_parameters_and_bad_labels():
    model = tiny_mlp(0)
    x, y = data(0)
    threat = ThreatModel("linf", 0.1, (0.0, 1.0))
    with pytest.raises(UserInputError, match="accepts"):
        run_attack("pgd", model, x, y, threat, stepz=3)
    with pytest.raises(UserInputError, match="unknown attack"):
        run_attack("pgd2", model, x, y, threat)
    with pytest.raises(UserInputError, match="labels"):
        run_attack("pgd", model, x, y[:3], threat)
    with pytest.raises(UserInputError, match="normalis"):
        run_attack("pgd", model, x * 4 - 2, y, threat)
    with pytest.raises(UserInputError, match="eot_samples"):
        run_attack("uniform", model, x, y, threat, eot_samples=5)


def test_batchnorm_in_training_mode_is_warned_about_and_left_in_that_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4)).double()
    x, y = data(0)
    threat = ThreatModel("linf", 0.1, (0.0, 1.0))
    with pytest.warns(UserWarning, match="model.eval"):
        run_attack("fgsm", model, x, y, threat)
    assert model.training and model[2].training
    model.eval()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_attack("fgsm", model, x, y, threat)


@pytest.mark.parametrize("norm, eps", [("linf", 0.15), ("l2", 0.6)])
def test_pgd_is_never_weaker_than_madrys_loop_from_the_same_start(norm, eps):
    from robustcompress.attacks.base import SampleNoise

    model = tiny_mlp(7)
    x, y = data(7, n=40)
    threat = ThreatModel(norm, eps, (0.0, 1.0))
    steps, a = 10, 2.5 * eps / 10
    res = run_attack("pgd", model, x, y, threat, steps=steps, early_stop=False,
                     generator=torch.Generator().manual_seed(5))
    # the same start, then the textbook loop returning its last iterate
    xa = threat.random_start(x, SampleNoise(len(x), torch.Generator().manual_seed(5), x.device))
    for _ in range(steps):
        xa = xa.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(nn.functional.cross_entropy(model(xa), y, reduction="sum"), xa)
        xa = threat.project(xa.detach() + a * threat.steepest(g), x)
    with torch.no_grad():
        madry_fooled = model(xa).argmax(1) != y
        madry_loss = nn.functional.cross_entropy(model(xa), y, reduction="none")
    assert bool((res.success | ~madry_fooled).all())  # fooled by the loop => fooled by ours
    robust = ~res.success
    assert bool((res.extra["objective"][robust] >= madry_loss[robust] - 1e-12).all())
    assert 0 < int(madry_fooled.sum()) < len(x)


def test_a_model_without_input_gradient_gets_zero_gradients_not_a_crash():
    class Detached(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = tiny_mlp(0)

        def forward(self, x):
            return self.net(x.detach())

    x, y = data(0)
    loss, grad = input_gradient(Detached(), x, y)
    assert torch.equal(grad, torch.zeros_like(x)) and torch.isfinite(loss).all()
    res = run_attack("pgd", Detached(), x, y, ThreatModel("linf", 0.1, (0.0, 1.0)), random_start=False)
    assert torch.equal(res.x_adv, x)  # no gradient, no move: the masking checks flag this case

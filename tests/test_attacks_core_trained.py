"""Paper trends on really trained models: iterative beats single-step, APGD >= PGD, large eps
breaks everything, EOT beats plain PGD on a stochastic model, transfer sits between noise and
white-box; and the MNIST LeNet-5 acceptance (PGD-40 at eps 0.3 drives accuracy to ~0)."""

import pytest
import torch
from torch import nn

from robustcompress.attacks import ThreatModel, mc_predict, run_attack

from test_attacks_core_eot import AlwaysDropout


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return x[perm[:1400]], y[perm[:1400]], x[perm[1400:]], y[perm[1400:]]


def _train_mlp(xtr, ytr, hidden: int, epochs: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    for _ in range(epochs):  # full batch: the digits are tiny
        opt.zero_grad()
        nn.functional.cross_entropy(m(xtr), ytr).backward()
        opt.step()
    for p in m.parameters():
        p.grad = None
    return m.eval()


@pytest.fixture(scope="session")
def digits_models():
    """An MLP trained on sklearn's 8x8 digits (a few seconds), a weaker surrogate, test data."""
    xtr, ytr, xte, yte = _digits()
    model = _train_mlp(xtr, ytr, 64, 150, seed=0)
    surrogate = _train_mlp(xtr, ytr, 32, 40, seed=1)
    keep = model(xte).argmax(1) == yte  # attack correctly classified points only
    return model, surrogate, xte[keep][:200], yte[keep][:200]


def _robust(name, model, x, y, threat, **kw):
    return run_attack(name, model, x, y, threat, generator=torch.Generator().manual_seed(0), **kw).robust_accuracy


def test_large_eps_drives_accuracy_to_zero(digits_models):
    model, _, x, y = digits_models
    assert _robust("pgd", model, x, y, ThreatModel("linf", 0.5, (0.0, 1.0))) == 0.0
    assert _robust("pgd", model, x, y, ThreatModel("l2", 4.0, (0.0, 1.0)), steps=20) == 0.0
    assert _robust("apgd", model, x, y, ThreatModel("linf", 0.5, (0.0, 1.0)), steps=10) == 0.0


def test_iterative_attacks_beat_fgsm_and_noise(digits_models):
    model, _, x, y = digits_models
    threat = ThreatModel("linf", 0.1, (0.0, 1.0))
    fgsm = _robust("fgsm", model, x, y, threat)
    bim = _robust("bim", model, x, y, threat)
    pgd = _robust("pgd", model, x, y, threat, steps=20)
    mim = _robust("mim", model, x, y, threat)
    noise = _robust("uniform", model, x, y, threat)
    assert noise > 0.9  # random noise of the same size barely matters
    assert fgsm < 0.6
    assert bim <= fgsm - 0.03 and pgd <= fgsm - 0.03, (fgsm, bim, pgd)
    assert mim <= fgsm
    # R+FGSM spends half of eps on a random step, so it is weaker than FGSM (Tramer et al.)
    assert _robust("rfgsm", model, x, y, threat) > fgsm


def test_apgd_is_at_least_as_strong_as_pgd_on_the_same_budget(digits_models):
    model, _, x, y = digits_models
    for eps in (0.06, 0.1):
        threat = ThreatModel("linf", eps, (0.0, 1.0))
        pgd = _robust("pgd", model, x, y, threat, steps=20)
        apgd = _robust("apgd", model, x, y, threat, steps=20)
        assert apgd <= pgd + 0.01, (eps, pgd, apgd)  # one sample of slack in 200
    threat = ThreatModel("linf", 0.1, (0.0, 1.0))
    assert _robust("apgd-t", model, x, y, threat, steps=20, n_target_classes=3) <= _robust("fgsm", model, x, y, threat)


def test_bim_paper_schedule_runs_kurakins_iterations(digits_models):
    model, _, x, y = digits_models
    res = run_attack("bim", model, x, y, ThreatModel.from_spec("linf", 16, eps_scale=255), paper=True)
    assert res.params["steps"] == 20 and res.params["step_size"] == pytest.approx(1 / 255)
    assert res.robust_accuracy < _robust("fgsm", model, x, y, ThreatModel.from_spec("linf", "16/255"))


def test_transfer_lies_between_noise_and_white_box(digits_models):
    model, surrogate, x, y = digits_models
    threat = ThreatModel("linf", 0.15, (0.0, 1.0))
    white = _robust("pgd", model, x, y, threat, steps=20)
    trans = _robust("transfer", model, x, y, threat, surrogate=surrogate, attack="pgd",
                    attack_params={"steps": 20})
    noise = _robust("gaussian", model, x, y, threat)
    assert white < trans < noise, (white, trans, noise)


def test_eot_breaks_what_plain_pgd_leaves_standing(digits_models):
    """Heavy test-time dropout looks robust to single-draw PGD; EOT-PGD removes most of that."""
    model, _, x, y = digits_models
    drop = AlwaysDropout(0.7)
    stochastic = nn.Sequential(model[0], model[1], model[2], drop, model[3])
    mc_acc = float((mc_predict(stochastic, x, mc_samples=20, generator=torch.Generator().manual_seed(1))
                    .argmax(1) == y).double().mean())
    assert mc_acc > 0.8, mc_acc
    threat = ThreatModel("linf", 0.15, (0.0, 1.0))
    plain = _robust("pgd", stochastic, x, y, threat, eot_samples=1, mc_samples=20)
    eot = _robust("pgd", stochastic, x, y, threat, eot_samples=20, mc_samples=20)
    assert eot < plain - 0.1, (plain, eot)


@pytest.mark.slow
def test_pgd40_at_eps_03_breaks_a_trained_mnist_lenet5(data_root):
    """Acceptance: PGD-40 (step 0.01, Madry et al.'s MNIST setting) at eps 0.3 -> accuracy ~0."""
    data = pytest.importorskip("robustcompress.data", reason="needs robustcompress.data")
    models = pytest.importorskip("robustcompress.models", reason="needs robustcompress.models")
    training = pytest.importorskip("robustcompress.training", reason="needs robustcompress.training")
    try:
        ds = data.load_dataset("mnist", root=data_root, train_limit=3000, test_limit=200)
    except Exception as e:  # missing files are an environment problem, not a failure here
        pytest.skip(f"MNIST not available: {e}")
    torch.manual_seed(0)
    model = models.build_model("lenet5", ds.info)
    training.fit(model, ds, training.TrainConfig(epochs=2, batch_size=64, lr=1e-3), progress=False)
    model.eval()
    x, y = ds.test.x[:200], ds.test.y[:200]
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).double().mean())
    assert clean > 0.85, clean
    threat = ThreatModel.from_spec("linf", 0.3, ds.info)
    res = run_attack("pgd", model, x, y, threat, steps=40, step_size=0.01,
                     generator=torch.Generator().manual_seed(0))
    assert res.robust_accuracy <= 0.02, res.robust_accuracy

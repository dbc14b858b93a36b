"""r_2, CLEVER and over-pruning detection against exact answers on linear models."""

import numpy as np
import pytest
import torch
from torch import nn

from robustcompress.metrics.robustness_metrics import (clever_score, detect_over_pruning,
                                                       fit_reverse_weibull,
                                                       plot_robustness_vs_sparsity, r_2,
                                                       sample_ball)


def _linear(gen, d=12, c=4, scale=3.0):
    torch.manual_seed(0)
    lin = nn.Linear(d, c)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(c, d, generator=gen) * scale)
        lin.bias.copy_(torch.randn(c, generator=gen))
    return nn.Sequential(nn.Flatten(), lin), lin


def _exact_distance(lin, x, p):
    logits = lin(x.flatten(1))
    c = logits.argmax(1)
    w, out = lin.weight, []
    for i in range(x.shape[0]):
        dists = [(logits[i, c[i]] - logits[i, j]) / (w[c[i]] - w[j]).norm(p=p)
                 for j in range(w.shape[0]) if j != c[i]]
        out.append(min(dists))
    return torch.stack(out).detach()


@pytest.mark.parametrize("norm,p", [("l2", 2), ("linf", 1)])
def test_clever_on_linear_model_is_the_exact_distance(norm, p, gen):
    model, lin = _linear(gen)
    x = torch.rand(5, 1, 3, 4, generator=gen)
    exact = _exact_distance(lin, x, p)
    for i in range(5):
        res = clever_score(model, x[i], norm=norm, radius=100.0, n_batches=10, batch_size=8,
                           bounds=None, generator=gen)
        assert res["score"] == pytest.approx(float(exact[i]), rel=1e-4)


def test_reverse_weibull_fit_recovers_location():
    from scipy import stats

    rng = np.random.default_rng(0)
    sample = stats.weibull_max.rvs(3.0, loc=5.0, scale=2.0, size=400, random_state=rng)
    loc, p = fit_reverse_weibull(sample)
    assert loc == pytest.approx(5.0, rel=0.03) and loc >= sample.max()
    assert p > 0.01
    assert fit_reverse_weibull(np.full(10, 2.5))[0] == 2.5
    # a sample whose MLE runs away never yields a location far above the observed maximum
    rng = np.random.default_rng(3)
    for _ in range(20):
        s = rng.uniform(3.0, 6.0, size=50)
        assert s.max() <= fit_reverse_weibull(s)[0] <= 2 * s.max()


@pytest.mark.parametrize("d", [2, 3])
def test_l2_ball_sampling_is_uniform_in_volume(d, gen):
    pts = sample_ball(torch.zeros(d), 20000, 2.0, "l2", gen)
    r = pts.norm(dim=1)
    assert r.max() <= 2.0 + 1e-6
    # P(||delta|| <= R/2) = (1/2)^d for the uniform distribution on the ball
    assert float((r <= 1.0).float().mean()) == pytest.approx(0.5 ** d, abs=0.015)
    # direction is isotropic: mean ~ 0
    assert pts.mean(0).abs().max() < 0.05


def test_r2_on_linear_model_equals_exact_distance(gen):
    model, lin = _linear(gen, scale=20.0)
    x = 0.4 + 0.2 * torch.rand(40, 1, 3, 4, generator=gen)
    y = model(x).argmax(1)
    y[:5] = (y[:5] + 1) % 4  # misclassified points are left out
    exact = _exact_distance(lin, x[5:], 2)
    res = r_2(model, x, y, attack="deepfool", overshoot=0.02, boundary_search=0)
    assert res["n_correct"] == 35 and res["success_rate"] == 1.0
    assert res["r2"] == pytest.approx(1.02 * float(exact.mean()), rel=1e-3)
    rel = (1.02 * exact / x[5:].flatten(1).norm(dim=1)).mean()
    assert res["r2_rel"] == pytest.approx(float(rel), rel=1e-3)


def test_over_pruning_detection_and_plot(tmp_path):
    s = [1 - (2 / 3) ** k for k in range(8)]
    r2 = [1.0, 1.1, 1.2, 1.3, 1.25, 1.0, 0.6, 0.3]
    acc = [0.98, 0.98, 0.981, 0.979, 0.978, 0.975, 0.95, 0.80]
    curve = [{"sparsity": a, "r2_deepfool": b, "clean_acc": c, "r_inf_fgsm": b / 2}
             for a, b, c in zip(s, r2, acc)]
    det = detect_over_pruning(curve, rob_tol=0.1, acc_tol=0.01)
    assert det == {"peak": 3, "over_pruned": 5, "acc_drop": 6}
    assert detect_over_pruning(curve, rob_tol=0.5)["over_pruned"] is None
    # a collapsed model's inflated r_2 (few correct points left) is not the peak
    curve.append({"sparsity": 0.99, "r2_deepfool": 5.0, "clean_acc": 0.2, "r_inf_fgsm": 0.1})
    assert detect_over_pruning(curve)["peak"] == 3
    out = plot_robustness_vs_sparsity(curve, tmp_path / "c.png")
    assert out["over_pruned"] == 5 and (tmp_path / "c.png").stat().st_size > 1000

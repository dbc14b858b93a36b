"""Beta-Bernoulli masks of ANP-VS: closed forms vs numerical estimates, eval determinism."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special
from torch import nn

from robustcompress.errors import UserInputError

from robustcompress.nn import freeze_noise, model_properties, use_generator
from robustcompress.nn.beta_bernoulli import (
    BetaBernoulliMask,
    add_bb_masks,
    bb_kl,
    bb_masks,
    bb_params,
    kumaraswamy_mean,
    kumaraswamy_sample,
)


def _kl_numeric(a: float, b: float, alpha: float) -> float:
    """KL(Kumaraswamy(a,b) || Beta(alpha,1)) by quadrature, substituting pi = t^(1/a) so the
    integrand is smooth (q(pi) dpi = b (1-t)^(b-1) dt)."""

    def integrand(t):
        pi = t ** (1.0 / a)
        log_q = math.log(a * b) + (a - 1) * math.log(pi) + (b - 1) * math.log1p(-t)
        log_p = math.log(alpha) + (alpha - 1) * math.log(pi)
        return b * (1 - t) ** (b - 1) * (log_q - log_p)

    val, _ = integrate.quad(integrand, 0, 1, limit=200)
    return val


@pytest.mark.parametrize("a,b,alpha", [(2.13, 1.0, 1e-4), (0.313, 1.0, 1e-4), (3.0, 0.5, 1e-4),
                                       (0.7, 4.0, 0.5), (1.5, 2.5, 2.0)])
def test_kl_closed_form_matches_quadrature(a, b, alpha):
    closed = float(bb_kl(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64),
                         alpha))
    assert closed == pytest.approx(_kl_numeric(a, b, alpha), rel=1e-5, abs=1e-6)


def test_kl_closed_form_matches_monte_carlo_of_sampler():
    # Independent check that uses our own Kumaraswamy sampler and the two log densities.
    a, b, alpha = torch.tensor(1.3, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64), 0.3
    g = torch.Generator().manual_seed(1)
    pi = kumaraswamy_sample(a.expand(400_000), b.expand(400_000), g)
    log_q = torch.log(a * b) + (a - 1) * pi.log() + (b - 1) * torch.log1p(-pi.pow(a))
    log_p = math.log(alpha) + (alpha - 1) * pi.log()
    mc = (log_q - log_p)
    se = float(mc.std() / math.sqrt(mc.numel()))
    assert float(mc.mean()) == pytest.approx(float(bb_kl(a, b, alpha)), abs=5 * se)


def test_expected_pi_formula_vs_sample_mean_and_scipy():
    a = torch.tensor([2.1269, 0.3133, 5.0, 0.9], dtype=torch.float64)
    b = torch.tensor([1.0, 1.0, 0.3, 3.0], dtype=torch.float64)
    closed = kumaraswamy_mean(a, b)
    ref = b.numpy() * special.beta(1 + 1 / a.numpy(), b.numpy())
    np.testing.assert_allclose(closed.numpy(), ref, rtol=1e-10)
    g = torch.Generator().manual_seed(0)
    n = 200_000
    s = kumaraswamy_sample(a.repeat(n, 1), b.repeat(n, 1), g)
    se = s.std(0) / math.sqrt(n)
    assert torch.all((s.mean(0) - closed).abs() < 5 * se)


def test_reference_initial_values():
    a, b = bb_params(torch.tensor([2.0, -1.0]), torch.tensor([0.5413, 0.5413]))
    assert float(b[0]) == pytest.approx(1.0, abs=1e-4)
    assert float(a[0]) == pytest.approx(2.127, abs=1e-3) and float(a[1]) == pytest.approx(0.313, abs=1e-3)
    m = kumaraswamy_mean(a, b)
    assert float(m[0]) == pytest.approx(0.68, abs=0.005) and float(m[1]) == pytest.approx(0.24, abs=0.005)


def test_training_draw_shares_pi_across_batch_but_z_per_example():
    m = BetaBernoulliMask(6)
    m.train()
    assert m.stochastic and m.granularity == "batch"
    x = torch.ones(5, 6, 3, 3)
    with use_generator(m, torch.Generator().manual_seed(0)):
        y1 = m(x)
    with use_generator(m, torch.Generator().manual_seed(0)):
        y2 = m(x)
    assert torch.equal(y1, y2)  # generator controls the draw
    # broadcast over space, different across examples
    assert torch.equal(y1, y1[:, :, :1, :1].expand_as(y1))
    assert not torch.allclose(y1[0], y1[1])
    # temperature 0.1: samples are nearly binary
    z = y1[:, :, 0, 0]
    assert ((z < 0.05) | (z > 0.95)).float().mean() > 0.7


def test_eval_mask_is_deterministic_and_thresholded():
    m = BetaBernoulliMask(4)
    with torch.no_grad():
        m.a_uc.copy_(torch.tensor([2.0, 2.0, -9.0, 2.0]))
        m.b_uc.copy_(torch.tensor([0.5413, 0.5413, 40.0, 0.5413]))
    m.eval()
    assert not m.stochastic
    x = torch.randn(3, 4, 2, 2)
    y = m(x)
    assert torch.equal(y, m(x))
    em = m.expected_mask().detach()
    assert float(em[2]) == 0.0 and m.n_active() == 3
    torch.testing.assert_close(y, x * em.view(1, 4, 1, 1))
    m.train()
    with freeze_noise(m):
        assert not m.stochastic
        torch.testing.assert_close(m(x), y)
    assert m.stochastic


def test_add_bb_masks_places_masks_after_every_conv_and_hidden_linear():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 8),
                          nn.ReLU(), nn.Linear(8, 3))
    add_bb_masks(model)
    names = [n for n, _ in bb_masks(model)]
    assert names == ["0.1", "3.1"]
    assert isinstance(model[5], nn.Linear)
    model.train()
    assert model_properties(model).stochastic
    model.eval()
    assert not model_properties(model).stochastic
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 3)
    only_conv = add_bb_masks(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(),
                                           nn.Linear(4 * 6 * 6, 8), nn.ReLU(), nn.Linear(8, 3)),
                             where="conv_out")
    assert [n for n, _ in bb_masks(only_conv)] == ["0.1"]
    with pytest.raises(UserInputError):
        add_bb_masks(nn.Sequential(nn.Linear(3, 3)), where="everywhere")

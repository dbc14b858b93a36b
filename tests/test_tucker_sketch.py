"""Rank sketch (Defensive Tensorization eq. 3-4): exact slice selection, unbiasedness of the
rescale, the all-dropped guard, granularities, determinism at theta=1, protocol attributes."""

import pytest
import torch
from torch import nn

from robustcompress.errors import UserInputError
from robustcompress.nn.protocol import freeze_noise, model_properties, use_generator
from robustcompress.nn.sketch import (
    draw_keep_mask,
    keep_probability,
    sketch_scale,
    sketch_tucker,
)
from robustcompress.nn.tucker import TuckerConv2d, TuckerLinear, tucker_to_tensor


def _tucker(gen, shape=(6, 5, 3, 3), ranks=(4, 3, 3, 3)):
    core = torch.randn(ranks, generator=gen)
    factors = [torch.randn(d, r, generator=gen) for d, r in zip(shape, ranks)]
    return core, factors


def test_sketch_selects_exactly_the_drawn_slices(gen):
    core, factors = _tucker(gen)
    theta = 0.6
    g1 = torch.Generator().manual_seed(7)
    sc, sf = sketch_tucker(core, factors, theta, (0, 1), rescale="none", generator=g1)
    # replay the same draws
    g2 = torch.Generator().manual_seed(7)
    k0 = draw_keep_mask((4,), theta, generator=g2).nonzero().squeeze(1)
    k1 = draw_keep_mask((3,), theta, generator=g2).nonzero().squeeze(1)
    assert torch.equal(sc, core[k0][:, k1])
    assert torch.equal(sf[0], factors[0][:, k0]) and torch.equal(sf[1], factors[1][:, k1])
    assert sf[2] is factors[2] and sf[3] is factors[3]
    # equals the paper's diagonal-matrix form (eq. 3): G x_n diag(lambda_n)
    lam0 = torch.zeros(4).index_fill(0, k0, 1.0)
    lam1 = torch.zeros(3).index_fill(0, k1, 1.0)
    masked = core * lam0.view(-1, 1, 1, 1) * lam1.view(1, -1, 1, 1)
    assert torch.allclose(tucker_to_tensor(sc, sf), tucker_to_tensor(masked, factors), atol=1e-5)


def test_keep_mask_never_empty_and_guard_probability():
    g = torch.Generator().manual_seed(0)
    m = draw_keep_mask((20000, 3), 0.2, generator=g)
    assert bool(m.any(-1).all())
    # marginal keep probability = theta + (1-theta)^R / R
    assert abs(float(m.float().mean()) - keep_probability(0.2, 3)) < 0.01


@pytest.mark.parametrize("modes", [(0, 1), (0, 1, 2, 3)])
def test_unbiased_rescale_mc(modes):
    """E[W~] = W over many draws (MC), the sketch's stated guarantee with rescale='unbiased'."""
    g = torch.Generator().manual_seed(1)
    core, factors = _tucker(g, ranks=(3, 3, 2, 2))
    w = tucker_to_tensor(core, factors)
    n = 6000
    acc = torch.zeros_like(w)
    acc2 = torch.zeros_like(w)
    for _ in range(n):
        sc, sf = sketch_tucker(core, factors, 0.7, modes, generator=g)
        wt = tucker_to_tensor(sc, sf)
        acc += wt
        acc2 += wt ** 2
    mean = acc / n
    se = ((acc2 / n - mean ** 2).clamp_min(0) / n).sqrt()
    z = ((mean - w) / (se + 1e-12)).abs()
    assert float(z.max()) < 5.0
    assert float((mean - w).norm() / w.norm()) < 0.05


def test_no_rescale_is_biased_by_theta_power():
    g = torch.Generator().manual_seed(2)
    core, factors = _tucker(g, ranks=(40, 40, 3, 3), shape=(40, 40, 3, 3))
    w = tucker_to_tensor(core, factors)
    acc = sum(tucker_to_tensor(*sketch_tucker(core, factors, 0.5, (0, 1), rescale="none",
                                              generator=g)) for _ in range(600)) / 600
    ratio = float((acc * w).sum() / (w * w).sum())
    assert abs(ratio - 0.25) < 0.03


def test_sketch_scale_values():
    assert sketch_scale(0.5, (100, 100), "unbiased") == pytest.approx(4.0)
    assert sketch_scale(0.5, (100, 100), "none") == 1.0


def _layer(**kw):
    torch.manual_seed(0)
    return TuckerConv2d.from_conv(nn.Conv2d(8, 12, 3, padding=1), **kw)


def test_theta_one_is_deterministic_and_not_stochastic():
    layer = _layer(theta=1.0)
    x = torch.randn(2, 8, 5, 5)
    assert not layer.stochastic
    assert torch.equal(layer(x), layer(x))


def test_stochastic_flag_generator_reproducibility_and_freeze():
    layer = _layer(theta=0.5)
    x = torch.randn(2, 8, 5, 5)
    assert layer.stochastic
    assert model_properties(layer).stochastic
    layer.generator = torch.Generator().manual_seed(3)
    a = layer(x)
    layer.generator = torch.Generator().manual_seed(3)
    assert torch.equal(a, layer(x))
    assert not torch.equal(layer(x), layer(x))
    with freeze_noise(layer):
        assert not layer.stochastic
        y = layer(x)
    assert layer.stochastic
    layer.theta = 1.0
    assert torch.allclose(y, layer(x))


def test_generator_does_not_touch_global_rng():
    layer = _layer(theta=0.5)
    x = torch.randn(2, 8, 5, 5)
    state = torch.get_rng_state()
    with use_generator(layer, torch.Generator().manual_seed(0)):
        layer(x)
    assert torch.equal(state, torch.get_rng_state())


def test_batch_granularity_shares_one_draw():
    layer = _layer(theta=0.5, generator=torch.Generator().manual_seed(0))
    x = torch.randn(1, 8, 5, 5).expand(6, -1, -1, -1)
    y = layer(x)
    assert torch.allclose(y, y[:1].expand_as(y))


def test_sample_granularity_draws_independently_and_matches_reference():
    layer = _layer(theta=0.5, granularity="sample", generator=torch.Generator().manual_seed(0))
    x = torch.randn(1, 8, 5, 5).expand(6, -1, -1, -1)
    y = layer(x)
    assert not torch.allclose(y[0], y[1])
    # reference: replay the per-sample masks and run dense convs sample by sample
    from robustcompress.nn.sketch import sample_core_masks

    layer.generator = torch.Generator().manual_seed(0)
    y = layer(x)
    mult = sample_core_masks(layer.core, 0.5, (0, 1), 6,
                             generator=torch.Generator().manual_seed(0))
    for b in range(6):
        w = tucker_to_tensor(layer.core * mult[b], list(layer.factors))
        ref = nn.functional.conv2d(x[b:b + 1], w, layer.bias, padding=1)
        assert torch.allclose(y[b:b + 1], ref, atol=1e-5)


def test_sample_granularity_linear_mean_matches_dense():
    torch.manual_seed(0)
    lin = nn.Linear(10, 4)
    layer = TuckerLinear.from_linear(lin, theta=0.8, granularity="sample",
                                     generator=torch.Generator().manual_seed(0))
    x = torch.randn(1, 10).expand(4000, -1)
    assert torch.allclose(layer(x).mean(0), lin(x[:1])[0], atol=0.1)


def test_bad_sketch_args():
    with pytest.raises(UserInputError, match="theta"):
        _layer(theta=0.0)
    with pytest.raises(UserInputError, match="granularity"):
        _layer(granularity="pixel")
    with pytest.raises(UserInputError, match="modes"):
        _layer(sketch_modes=(4,))


def test_vmap_randomness_modes():
    layer = _layer(theta=0.5, generator=torch.Generator().manual_seed(0))
    x = torch.randn(3, 8, 5, 5)

    def f(xi):
        return layer(xi.unsqueeze(0)).squeeze(0)

    with pytest.raises(RuntimeError):
        torch.func.vmap(f)(x)  # randomness="error": torch refuses random ops
    y = torch.func.vmap(f, randomness="same")(x)
    assert y.shape == (3, 12, 5, 5)
    with pytest.raises(UserInputError, match="randomness='same'"):
        torch.func.vmap(f, randomness="different")(x)
    layer.granularity = "sample"
    assert torch.func.vmap(f, randomness="different")(x).shape == (3, 12, 5, 5)


def test_grad_flows_through_sketch():
    layer = _layer(theta=0.5)
    x = torch.randn(2, 8, 5, 5, requires_grad=True)
    g = torch.func.grad(lambda xx: layer(xx).square().sum())(x)
    assert g.shape == x.shape and float(g.detach().abs().sum()) > 0

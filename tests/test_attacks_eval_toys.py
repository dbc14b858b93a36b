"""Toy models for the attack-evaluation tests (imported by the other test_attacks_eval_* files).

* ``NoisyDropout``: heavy test-time dropout declaring ``stochastic=True`` with a generator and
  ``granularity="sample"``: the textbook randomised defence that fools plain PGD.
* ``RoundActivations``: ``round(scale * h) / scale`` declaring ``non_differentiable=True`` and a
  ``surrogate``: its true gradient is zero, so a naive attacker sees nothing.
* ``digits_data`` / ``train_mlp``: a small MLP on scikit-learn's 8x8 digits, trained in seconds.

The tests in this file check the toys themselves, so the acceptance tests stand on tested ground.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustcompress.nn.ste import surrogate_gradient


class NoisyDropout(nn.Module):
    """Inverted dropout that stays on at test time (a randomised defence)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.stochastic = True
        self.generator: torch.Generator | None = None
        self.granularity = "sample"

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not self.stochastic:
            return h
        gen_dev = self.generator.device if self.generator is not None else h.device
        u = torch.rand(h.shape, generator=self.generator, device=gen_dev).to(h.device)
        return h * (u >= self.p).to(h.dtype) / (1.0 - self.p)


class RoundActivations(nn.Module):
    """``round(scale * h) / scale``: a quantiser with zero true gradient."""

    def __init__(self, scale: float = 2.0):
        super().__init__()
        self.scale = scale
        self.non_differentiable = True
        self.surrogate = "exact"

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = h * self.scale
        return surrogate_gradient(torch.round(z), z, self.surrogate) / self.scale


def digits_data():
    """Digits as (1, 8, 8) images in [0, 1]; a fixed 1400/397 split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32)[:, None]
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1400], perm[1400:]
    return x[tr], y[tr], x[te], y[te]


def make_mlp(p_in: float = 0.0, p_hidden: float = 0.0, round_scale: float | None = None,
             width: int = 256, seed: int = 0) -> nn.Sequential:
    # module init draws from the global RNG: fork it so the test session's RNG is untouched
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers: list[nn.Module] = [nn.Flatten()]
        if p_in:
            layers.append(NoisyDropout(p_in))
        layers += [nn.Linear(64, width), nn.ReLU()]
        if p_hidden:
            layers.append(NoisyDropout(p_hidden))
        if round_scale is not None:
            layers.append(RoundActivations(round_scale))
        layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


def train_mlp(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 400) -> nn.Module:
    """Full-batch Adam; the trained parameters are frozen (requires_grad False) afterwards."""
    rounders = [m for m in model.modules() if isinstance(m, RoundActivations)]
    for m in rounders:
        m.surrogate = "identity"  # straight-through training
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for m in model.modules():
        if isinstance(m, NoisyDropout):
            m.generator = torch.Generator().manual_seed(123)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for m in rounders:
        m.surrogate = "exact"
    for m in model.modules():
        if isinstance(m, NoisyDropout):
            m.generator = None
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    return model


@pytest.fixture(scope="session")
def digits():
    return digits_data()


def test_noisy_dropout_is_unbiased_and_follows_generator():
    layer = NoisyDropout(0.5)
    h = torch.ones(4000, 8)
    layer.generator = torch.Generator().manual_seed(3)
    a = layer(h)
    layer.generator = torch.Generator().manual_seed(3)
    b = layer(h)
    assert torch.equal(a, b)
    assert abs(a.mean().item() - 1.0) < 0.03
    assert 0.45 < (a == 0).float().mean().item() < 0.55


def test_round_activations_exact_forward_zero_true_gradient():
    layer = RoundActivations(2.0)
    h = torch.linspace(-1, 1, 41, requires_grad=True)
    out = layer(h)
    assert torch.equal(out.detach(), torch.round(2.0 * h.detach()) / 2.0)
    (g,) = torch.autograd.grad(out.sum(), h)
    assert torch.count_nonzero(g) == 0
    layer.surrogate = "identity"
    (g,) = torch.autograd.grad(layer(h).sum(), h)
    assert torch.allclose(g, torch.ones_like(g))

"""Defensive Quantization pieces: activation quantiser levels/STE and the Lipschitz regulariser."""

import pytest
import torch
from torch import nn

from robustcompress.nn import model_properties, straight_through
from robustcompress.nn.act_quant import (
    ActQuant,
    orthogonality_penalty,
    quantize_activation,
    replace_relus,
)


def _pen(*args, **kw) -> float:
    return float(orthogonality_penalty(*args, **kw).detach())


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_exactly_2k_levels_in_range(bits):
    x = torch.linspace(-1, 2, 10001)
    q = quantize_activation(x, bits)
    levels = torch.arange(2 ** bits) / (2 ** bits - 1)
    assert torch.equal(q.unique(), levels)


def test_ste_gradients():
    x = torch.tensor([-0.5, 0.2, 0.7, 1.5], requires_grad=True)
    (g,) = torch.autograd.grad(quantize_activation(x, 2).sum(), x)
    assert g.tolist() == [0.0, 1.0, 1.0, 0.0]  # clipped STE
    m = ActQuant(2)
    assert model_properties(nn.Sequential(m)).non_differentiable
    with straight_through(m):
        (g2,) = torch.autograd.grad(m(x).sum(), x)
    assert g2.tolist() == [1.0, 1.0, 1.0, 1.0]  # BPDA identity
    m.surrogate = "exact"
    (g3,) = torch.autograd.grad(m(x).sum(), x)
    assert torch.count_nonzero(g3) == 0


def test_learned_range_gets_gradient():
    m = ActQuant(3, hi=0.5, learn_range=True)
    x = torch.tensor([0.1, 0.9, 2.0])
    m(x).sum().backward()
    assert m.hi.grad is not None and float(m.hi.grad) == pytest.approx(2.0)  # two clipped inputs


def test_replace_relus_gives_separate_quantisers():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    replace_relus(model, 2)
    qs = [m for m in model.modules() if isinstance(m, ActQuant)]
    assert len(qs) == 2 and qs[0] is not qs[1]
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())


def test_penalty_zero_for_orthogonal_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g))
    lin = nn.Linear(12, 12)
    conv = nn.Conv2d(3, 12, 2)  # 12 x (3*2*2) = 12 x 12: square after reshape
    wide = nn.Conv2d(2, 3, 3)  # 3 x 18: orthonormal rows
    with torch.no_grad():
        lin.weight.copy_(q)
        conv.weight.copy_(q.t().reshape(12, 3, 2, 2))
        wide.weight.copy_(torch.linalg.qr(torch.randn(18, 3, generator=g))[0].t().reshape(3, 2, 3, 3))
    model = nn.Sequential(conv, nn.Flatten(), lin)
    assert _pen(model, 1.0) == pytest.approx(0.0, abs=1e-9)
    assert _pen(nn.Sequential(wide), 1.0) == pytest.approx(0.0, abs=1e-9)
    # the literal W^T W - I cannot vanish for a wide matrix: rank 3 of 18 -> ||.||^2 = 15
    assert _pen(nn.Sequential(wide), 2.0, gram="wtw") == pytest.approx(15.0, rel=1e-5)
    with torch.no_grad():
        lin.weight.mul_(2.0)  # W^T W = 4 I -> ||3 I||^2 = 9 * 12
    assert _pen(model, 0.5) == pytest.approx(0.25 * 9 * 12, rel=1e-5)

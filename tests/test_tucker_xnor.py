"""XNOR-Net binary layers: forward equals an explicit sign-based reference; surrogate gradients."""

import pytest
import torch
from torch import nn

from robustcompress.nn.protocol import model_properties, straight_through
from robustcompress.nn.tucker import TuckerConv2d
from robustcompress.nn.xnor import XNORConv1d, XNORConv2d, XNORLinear, xnor_conv, xnor_linear


def _sgn(t):
    return torch.where(t >= 0, 1.0, -1.0)


def _reference_conv2d(x, w, b, stride, padding):
    """Loop over output positions: sum(sign(x_patch) * sign(w)) * alpha * mean|x_patch| + b."""
    bsz, c, h, wd = x.shape
    o, _, k, _ = w.shape
    xp = nn.functional.pad(x, (padding,) * 4)
    sp = nn.functional.pad(_sgn(x), (padding,) * 4)  # pad after sign: zeros
    alpha = w.abs().mean(dim=(1, 2, 3))
    ho = (h + 2 * padding - k) // stride + 1
    wo = (wd + 2 * padding - k) // stride + 1
    out = torch.zeros(bsz, o, ho, wo)
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, :, i * stride:i * stride + k, j * stride:j * stride + k]
            spatch = sp[:, :, i * stride:i * stride + k, j * stride:j * stride + k]
            kscale = patch.abs().mean(dim=1).mean(dim=(1, 2))  # channel mean, box k x k
            bin_dot = torch.einsum("bchw,ochw->bo", spatch, _sgn(w))
            out[:, :, i, j] = bin_dot * alpha * kscale[:, None] + b
    return out


@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1)])
def test_xnor_conv2d_equals_reference(gen, stride, padding):
    x = torch.randn(2, 3, 7, 7, generator=gen)
    w = torch.randn(4, 3, 3, 3, generator=gen)
    b = torch.randn(4, generator=gen)
    out = xnor_conv(x, w, b, stride=stride, padding=padding)
    assert torch.allclose(out, _reference_conv2d(x, w, b, stride, padding), atol=1e-5)


def test_xnor_linear_equals_reference(gen):
    x = torch.randn(5, 9, generator=gen)
    w = torch.randn(3, 9, generator=gen)
    ref = (_sgn(x) @ _sgn(w).T) * w.abs().mean(1) * x.abs().mean(1, keepdim=True)
    assert torch.allclose(xnor_linear(x, w), ref, atol=1e-5)


def test_xnor_conv1d_matches_2d_with_unit_height(gen):
    x = torch.randn(2, 3, 20, generator=gen)
    w = torch.randn(4, 3, 5, generator=gen)
    a = xnor_conv(x, w, stride=2, padding=2, ndim=1)
    b = xnor_conv(x.unsqueeze(2), w.unsqueeze(2), stride=(1, 2), padding=(0, 2)).squeeze(2)
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("surrogate,deriv", [
    ("identity", lambda x: torch.ones_like(x)),
    ("clipped", lambda x: (x.abs() <= 1).float()),
    ("tanh", lambda x: 1 - torch.tanh(x) ** 2),
    ("tanh0.75", lambda x: 0.75 * (1 - torch.tanh(0.75 * x) ** 2)),
])
def test_surrogate_input_gradient(gen, surrogate, deriv):
    """d out / d x through the sign equals the surrogate derivative (K's own path excluded by
    comparing against a detached-K computation)."""
    x = (2 * torch.randn(1, 6, generator=gen)).requires_grad_()
    w = torch.randn(1, 6, generator=gen)
    out = xnor_linear(x, w, surrogate=surrogate)
    g = torch.autograd.grad(out.sum(), x)[0]
    alpha = w.abs().mean()
    k = x.detach().abs().mean()
    sign_part = alpha * _sgn(w) * k * deriv(x.detach())
    k_part = (_sgn(x.detach()) @ _sgn(w).T).item() * alpha * _sgn(x.detach()) / 6
    assert torch.allclose(g, sign_part + k_part, atol=1e-5)


def test_modules_declare_non_differentiable_and_switch_surrogate(gen):
    torch.manual_seed(0)
    net = nn.Sequential(XNORConv2d.from_conv(nn.Conv2d(2, 3, 3)), nn.Flatten(),
                        XNORLinear.from_linear(nn.Linear(3 * 4 * 4, 2)),
                        XNORConv1d.from_conv(nn.Conv1d(1, 1, 1)))
    props = model_properties(net)
    assert props.non_differentiable and not props.stochastic
    with straight_through(net, "tanh"):
        assert all(m.surrogate == "tanh" for m in net if hasattr(m, "surrogate"))
    assert net[0].surrogate == "clipped"


def test_binary_tucker_applies_sketch_before_sign(gen):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    layer = TuckerConv2d.from_conv(conv, theta=0.6, binary=True,
                                   generator=torch.Generator().manual_seed(1)).eval()
    x = torch.randn(2, 4, 5, 5, generator=gen)
    y = layer(x)
    w_t = TuckerConv2d.sketched_weight(
        type("S", (), {"core": layer.core, "factors": layer.factors, "theta": 0.6,
                       "sketch_modes": (0, 1), "rescale": "unbiased",
                       "generator": torch.Generator().manual_seed(1)})())
    ref = xnor_conv(layer.input_norm(x), w_t, layer.bias, padding=1)
    assert torch.allclose(y, ref, atol=1e-5)
    assert layer.non_differentiable and layer.stochastic


def test_xnor_layers_under_torch_func(gen):
    torch.manual_seed(0)
    layer = XNORConv2d.from_conv(nn.Conv2d(3, 4, 3, padding=1)).eval()
    x = torch.randn(5, 3, 6, 6, generator=gen)

    def f(xi):
        return layer(xi.unsqueeze(0)).sum()

    with straight_through(layer, "tanh"):
        g = torch.func.vmap(torch.func.grad(f))(x)
        xr = x.clone().requires_grad_(True)
        (ref,) = torch.autograd.grad(layer(xr).sum(), xr)
    assert torch.allclose(g, ref, atol=1e-5) and float(g.detach().abs().sum()) > 0

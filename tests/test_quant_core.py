"""Weight quantiser, mu-law, bit packing, packed export and ||dW||_2 (Song et al.)."""

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from robustcompress.errors import UserInputError
from robustcompress.metrics.spectral import (conv_operator_norm, quantization_error_norms,
                                             reshaped_spectral_norm)
from robustcompress.nn.masks import attach_export, exported_bytes, import_layer
from robustcompress.nn.quant import (FakeQuantize, fake_quant, mu_law_compress, mu_law_expand,
                                     mu_law_quant, pack_bits, quant_scale, unpack_bits)
from robustcompress.nn.ste import round_


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_uniform_quantizer_has_exactly_2k_minus_1_levels(bits, gen):
    w = torch.rand(64, 200, generator=gen) * 2 - 1
    codes = (fake_quant(w, bits) / quant_scale(w, bits)).round()
    assert codes.unique().numel() == 2 ** bits - 1
    assert codes.abs().max() == 2 ** (bits - 1) - 1
    # max|W| is a level (no clipping of the extreme weight), error at most half a step
    err = (fake_quant(w, bits) - w).abs().max()
    assert err <= quant_scale(w, bits) / 2 + 1e-6


def test_per_channel_uses_one_scale_per_output_channel(gen):
    w = torch.randn(6, 3, 3, 3, generator=gen) * torch.arange(1, 7).view(-1, 1, 1, 1)
    wq = fake_quant(w, 3, per_channel=True)
    for o in range(6):
        levels = (wq[o] / (w[o].abs().max() / 3)).round().unique()
        assert levels.numel() <= 7 and wq[o].abs().max() == pytest.approx(float(w[o].abs().max()))
    # per-layer error is larger for the small-magnitude channels than per-channel error
    assert (fake_quant(w, 3) - w)[0].abs().mean() > (wq - w)[0].abs().mean()


def test_mu_law_compand_roundtrip_and_levels(gen):
    x = torch.rand(1000, generator=gen) * 2 - 1
    assert torch.allclose(mu_law_expand(mu_law_compress(x, 255.0), 255.0), x, atol=1e-5)
    w = torch.randn(50, 50, generator=gen)
    assert torch.allclose(mu_law_quant(w, None, 255.0), w, atol=1e-5)  # grid without bits = id
    wq = mu_law_quant(w, 3, 255.0)
    m = w.abs().max()
    levels = wq.unique()
    expected = torch.sort(m * mu_law_expand(torch.arange(-3, 4) / 3.0, 255.0)).values
    assert levels.numel() == 7 and torch.allclose(levels, expected, atol=1e-5)
    # finer near zero: the smallest non-zero level is far below the uniform step m/3
    assert levels[levels > 0].min() < m / 3 / 10


def test_mu_law_map_mode_changes_float_weights(gen):
    w = torch.randn(20, 20, generator=gen)
    mapped = mu_law_quant(w, None, 255.0, mode="map")
    m = w.abs().max()
    assert torch.allclose(mapped, m * mu_law_compress(w / m, 255.0))
    assert mapped.abs().max() == pytest.approx(float(m))


def test_ste_gives_identity_weight_gradient_and_exact_input_gradient(gen):
    w = torch.randn(5, 4, generator=gen, requires_grad=True)
    fake_quant(w, 3).sum().backward()
    assert torch.allclose(w.grad, torch.ones_like(w))  # clamp never active: max|W| is a level
    lin = nn.Linear(4, 5)
    parametrize.register_parametrization(lin, "weight", FakeQuantize(3))
    x = torch.randn(2, 4, generator=gen, requires_grad=True)
    lin(x)[:, 1].sum().backward()
    assert torch.allclose(x.grad, lin.weight[1].detach().expand(2, 4))
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_unpack_roundtrip(bits, gen):
    n = 1001
    codes = torch.randint(0, 2 ** bits, (n,), generator=gen)
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(n * bits / 8)
    assert torch.equal(unpack_bits(packed, bits, n), codes)


def test_pack_rejects_out_of_range_codes():
    with pytest.raises(UserInputError):
        pack_bits(torch.tensor([0, 8]), 3)
    with pytest.raises(UserInputError):
        fake_quant(torch.ones(3), 1)


@pytest.mark.parametrize("per_channel,mu", [(False, None), (True, None), (False, 255.0)])
def test_packed_export_is_lossless_and_about_3_over_32(per_channel, mu, gen):
    lin = nn.Linear(256, 128)
    parametrize.register_parametrization(lin, "weight", FakeQuantize(3, per_channel, mu=mu))
    attach_export(lin)
    t = copy.deepcopy(lin).export_tensors()
    assert torch.allclose(import_layer(t, bits=3, mu=mu), lin.weight.detach(), atol=1e-6)
    weight_bytes = sum(v.numel() * v.element_size() for k, v in t.items() if k.startswith("weight"))
    float_bytes = lin.weight.numel() * 4
    assert weight_bytes / float_bytes == pytest.approx(3 / 32, abs=0.01 if per_channel else 0.001)
    assert exported_bytes(t) < 0.11 * (float_bytes + 128 * 4) + 128 * 4


def test_reshaped_norm_matches_dense_svd(gen):
    w = torch.randn(7, 3, 3, 3, generator=gen)
    svd = torch.linalg.svdvals(w.reshape(7, -1).double())[0]
    assert reshaped_spectral_norm(w) == pytest.approx(float(svd), rel=1e-10)


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), (1, 0)])
def test_conv_operator_norm_matches_explicit_operator_matrix(stride, padding, gen):
    w = torch.randn(3, 2, 3, 3, generator=gen, dtype=torch.float64)
    shape = (2, 6, 6)
    n = math.prod(shape)
    basis = torch.eye(n, dtype=torch.float64).view(n, *shape)
    cols = torch.nn.functional.conv2d(basis, w, stride=stride, padding=padding).reshape(n, -1)
    exact = torch.linalg.svdvals(cols.T)[0]
    est = conv_operator_norm(w, shape, stride=stride, padding=padding, iters=500, tol=1e-12,
                             generator=torch.Generator().manual_seed(1))
    assert est == pytest.approx(float(exact), rel=1e-6)
    # and the reshaped-matrix norm is a different quantity in general
    assert reshaped_spectral_norm(w) != pytest.approx(float(exact), rel=1e-3)


def test_quantization_error_norms_per_layer(gen):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 10))
    q = copy.deepcopy(net)
    for m in (q[0], q[3]):
        parametrize.register_parametrization(m, "weight", FakeQuantize(3))
    rows = quantization_error_norms(q, net, (1, 6, 6), generator=gen)
    assert [r["layer"] for r in rows] == ["0", "3"]
    dw = (q[3].weight - net[3].weight).detach()
    assert rows[1]["reshaped"] == pytest.approx(float(torch.linalg.svdvals(dw.double())[0]))
    assert rows[1]["operator"] == rows[1]["reshaped"]
    assert rows[0]["operator"] > 0 and rows[0]["reshaped"] > 0
    rows8 = quantization_error_norms(
        _quantized(net, 8), net, (1, 6, 6), generator=gen)
    assert all(a["reshaped"] < b["reshaped"] / 10 for a, b in zip(rows8, rows))


def _quantized(net, bits):
    q = copy.deepcopy(net)
    for m in q.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            parametrize.register_parametrization(m, "weight", FakeQuantize(bits))
    return q


def test_round_surrogate_switch_exact_gives_zero_weight_grad(gen):
    w = torch.randn(4, generator=gen, requires_grad=True)
    (round_(w * 3, "exact")).sum().backward()
    assert torch.all(w.grad == 0)


def test_conv_operator_norm_of_a_zero_error_is_zero_not_nan():
    # a layer the quantiser leaves unchanged has dW = 0; its norm is 0 (was 0/0 = nan)
    assert conv_operator_norm(torch.zeros(4, 3, 3, 3), (3, 8, 8), padding=1) == 0.0

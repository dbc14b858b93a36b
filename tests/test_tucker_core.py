"""Tucker layers: full-rank equals dense, rank resolution and clamping, HOSVD/HOOI init quality,
factorized == reconstructed execution, torch.func compatibility."""

import pytest
import torch
from torch import nn

from robustcompress.errors import UserInputError
from robustcompress.nn.tucker import (
    TuckerConv1d,
    TuckerConv2d,
    TuckerLinear,
    clamp_ranks,
    hooi,
    hosvd,
    resolve_ranks,
    tucker_conv,
    tucker_to_tensor,
)


def _rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("kw", [dict(), dict(stride=2, padding=1), dict(padding=2, dilation=2),
                                dict(stride=(1, 2), padding=(0, 1), bias=False)])
@pytest.mark.parametrize("execution", ["factorized", "reconstructed"])
def test_full_rank_conv2d_equals_dense(kw, execution):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, 3, **kw)
    layer = TuckerConv2d.from_conv(conv, rank=1.0, execution=execution)
    x = torch.randn(3, 6, 11, 9)
    assert layer.ranks == (10, 6, 3, 3)
    assert _rel(layer(x), conv(x)) < 1e-5


@pytest.mark.parametrize("kw", [dict(), dict(stride=2, padding=32), dict(padding=3, dilation=2)])
def test_full_rank_conv1d_equals_dense(kw):
    torch.manual_seed(1)
    conv = nn.Conv1d(4, 12, 7, **kw)
    layer = TuckerConv1d.from_conv(conv)
    x = torch.randn(2, 4, 80)
    assert _rel(layer(x), conv(x)) < 1e-5


@pytest.mark.parametrize("shape", [(5, 20), (2, 3, 20)])
def test_full_rank_linear_equals_dense(shape):
    torch.manual_seed(2)
    lin = nn.Linear(20, 7)
    layer = TuckerLinear.from_linear(lin)
    x = torch.randn(*shape)
    assert _rel(layer(x), lin(x)) < 1e-5


def test_low_rank_factorized_equals_reconstructed():
    torch.manual_seed(3)
    conv = nn.Conv2d(16, 24, 3, padding=1, stride=2)
    a = TuckerConv2d.from_conv(conv, rank=0.5)
    b = TuckerConv2d.from_conv(conv, rank=0.5, execution="reconstructed")
    x = torch.randn(2, 16, 9, 9)
    assert a.ranks == (12, 8, 3, 3)
    assert _rel(a(x), b(x)) < 1e-5
    dense = nn.functional.conv2d(x, a.dense_weight(), a.bias, 2, 1)
    assert _rel(a(x), dense) < 1e-5


def test_factorized_runs_smaller_convs():
    """The middle conv of the factorized execution has the core's channel counts."""
    core = torch.randn(3, 2, 3, 3)
    factors = [torch.randn(8, 3), torch.randn(5, 2), torch.eye(3), torch.eye(3)]
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 5, 6, 6)
    with FlopCounterMode(display=False) as fc:
        tucker_conv(x, core, factors, padding=1)
    with FlopCounterMode(display=False) as fd:
        nn.functional.conv2d(x, tucker_to_tensor(core, factors), padding=1)
    conv_op = torch.ops.aten.convolution
    # conv MACs: 36*(5*2 + 3*2*9 + 8*3) = 3168 vs dense 36*8*5*9 = 12960
    assert fc.get_flop_counts()["Global"][conv_op] == 2 * 3168
    assert fd.get_flop_counts()["Global"][conv_op] == 2 * 12960


def test_resolve_ranks_fractions_per_dimension_and_spatial_full():
    assert resolve_ranks(0.5, (256, 256, 3, 3), fixed_modes=(2, 3)) == (128, 128, 3, 3)
    assert resolve_ranks((0.25, None, 2, 1), (64, 32, 3, 3)) == (16, 32, 2, 1)
    assert resolve_ranks(0.01, (64, 32)) == (1, 1)


def test_rank_clamping_tltorch_bug():
    # int rank above the dimensions (tensorly-torch 0.5 builds a wrong core for this)
    assert resolve_ranks(30, (5, 4, 3, 3), fixed_modes=(2, 3)) == (5, 4, 3, 3)
    # R_n <= product of the other ranks
    assert clamp_ranks((10, 1, 1), (10, 10, 10)) == (1, 1, 1)
    assert clamp_ranks((50, 2, 3, 3), (64, 64, 3, 3)) == (18, 2, 3, 3)
    conv = nn.Conv2d(4, 5, 3)
    layer = TuckerConv2d.from_conv(conv, rank=30)
    x = torch.randn(2, 4, 7, 7)
    assert _rel(layer(x), conv(x)) < 1e-5


def test_bad_ranks_raise():
    with pytest.raises(UserInputError, match="fractional rank"):
        resolve_ranks(1.5, (4, 4))
    with pytest.raises(UserInputError, match="one rank per mode"):
        resolve_ranks((2, 2), (4, 4, 3, 3))
    with pytest.raises(UserInputError, match=">= 1"):
        resolve_ranks(0, (4, 4))


def _low_rank_kernel(gen, shape=(32, 24, 3, 3), rank=(8, 6, 3, 3), noise=1e-3):
    core = torch.randn(rank, generator=gen)
    factors = [torch.linalg.qr(torch.randn(d, r, generator=gen))[0] for d, r in zip(shape, rank)]
    w = tucker_to_tensor(core, factors)
    return w + noise * w.std() * torch.randn(shape, generator=gen)


def test_init_error_decreases_with_rank(gen):
    w = _low_rank_kernel(gen)
    errs = []
    for r in (2, 4, 8, 16):
        core, factors = hosvd(w, resolve_ranks(r, w.shape, fixed_modes=(2, 3)))
        errs.append(_rel(tucker_to_tensor(core, factors), w))
    assert errs == sorted(errs, reverse=True)
    assert errs[2] < 5e-3  # at the true rank only the noise remains
    assert errs[0] > 0.3


def test_hooi_not_worse_than_hosvd(gen):
    w = torch.randn(16, 12, 3, 3, generator=gen)
    ranks = (6, 5, 2, 2)
    e_hosvd = _rel(tucker_to_tensor(*hosvd(w, ranks)), w)
    e_hooi = _rel(tucker_to_tensor(*hooi(w, ranks, n_iter=10)), w)
    assert e_hooi <= e_hosvd + 1e-6


def test_random_init_shapes_and_scale(gen):
    layer = TuckerConv2d(16, 32, 3, rank=0.5, init_generator=gen)
    w = layer.dense_weight()
    assert w.shape == (32, 16, 3, 3)
    target = 1.0 / (3 * 16 * 9) ** 0.5
    assert 0.5 * target < float(w.detach().std()) < 2 * target


def test_torch_func_grad_and_vmap_deterministic():
    torch.manual_seed(4)
    layer = TuckerConv2d.from_conv(nn.Conv2d(3, 4, 3, padding=1), rank=0.5)
    x = torch.randn(5, 3, 6, 6)

    def f(xi):
        return layer(xi.unsqueeze(0)).sum()

    g = torch.func.vmap(torch.func.grad(f))(x)
    x.requires_grad_(True)
    ref = torch.autograd.grad(layer(x).sum(), x)[0]
    assert torch.allclose(g, ref, atol=1e-5)


def test_export_tensors_are_compact():
    layer = TuckerConv2d(64, 64, 3, rank=0.25)
    n = sum(t.numel() for t in layer.export_tensors().values())
    assert n == 16 * 16 * 9 + 64 * 16 * 2 + 9 * 2 + 64
    assert n < 64 * 64 * 9 / 5


def test_hook_based_mac_counter_sees_executed_convs():
    """metrics.compression counts MACs with forward hooks on conv/linear modules: the Tucker
    layer's op modules must report the factorized (and sketched) sizes."""
    compression = pytest.importorskip("robustcompress.metrics.compression")
    torch.manual_seed(0)
    layer = TuckerConv2d.from_conv(nn.Conv2d(64, 64, 3, padding=1), rank=0.25)
    macs = compression.count_macs(nn.Sequential(layer), (64, 4, 4))
    assert macs == 16 * (64 * 16 + 16 * 16 * 9 + 16 * 64)
    layer.theta = 0.5
    layer.generator = torch.Generator().manual_seed(0)
    assert compression.count_macs(nn.Sequential(layer), (64, 4, 4)) < macs
    lin = TuckerLinear.from_linear(nn.Linear(100, 10), rank=(5, 4))
    assert lin.ranks == (4, 4)  # a matrix has one rank: clamped to the smaller
    assert compression.count_macs(nn.Sequential(lin), (100,)) == 100 * 4 + 4 * 4 + 4 * 10

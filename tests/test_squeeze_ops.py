"""Feature squeezers: exact values on hand examples, scipy agreement, BPDA gradients."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from robustcompress.nn import straight_through
from robustcompress.nn.squeeze import BitDepth, MedianFilter, bit_depth, median_filter


def test_bit_depth_hand_examples():
    x = torch.tensor([0.0, 0.2, 0.49, 0.51, 0.8, 1.0, 1.3, -0.1])
    assert bit_depth(x, 1).tolist() == [0, 0, 0, 1, 1, 1, 1, 0]
    # 2 bits: levels 0, 1/3, 2/3, 1
    torch.testing.assert_close(bit_depth(torch.tensor([0.1, 0.2, 0.5, 0.9]), 2),
                               torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]))
    assert bit_depth(torch.rand(1000), 5).unique().numel() <= 32
    # audio box [-1, 1]
    torch.testing.assert_close(bit_depth(torch.tensor([-0.9, 0.1]), 1, -1.0, 1.0),
                               torch.tensor([-1.0, 1.0]))


def test_median_2x2_hand_example():
    x = torch.tensor([[1.0, 2.0, 3.0],
                      [4.0, 5.0, 6.0],
                      [7.0, 8.0, 9.0]]).view(1, 1, 3, 3)
    # window of (i, j) = rows i-1..i x cols j-1..j, edge repeated, upper median of 4 values:
    # (0,0) {1,1,1,1} -> 1; (0,1) {1,2,1,2} -> 2; (1,1) {1,2,4,5} -> 4; (2,1) {4,5,7,8} -> 7
    expected = torch.tensor([[1.0, 2.0, 3.0],
                             [4.0, 4.0, 5.0],
                             [7.0, 7.0, 8.0]])
    torch.testing.assert_close(median_filter(x, 2)[0, 0], expected)


@pytest.mark.parametrize("size", [2, 3, 4])
def test_median_matches_scipy(size):
    g = torch.Generator().manual_seed(size)
    x = torch.rand(2, 3, 7, 6, generator=g)
    ref = ndimage.median_filter(x.numpy(), size=(1, 1, size, size), mode="reflect")
    np.testing.assert_allclose(median_filter(x, size).numpy(), ref)
    a = torch.rand(2, 1, 20, generator=g)
    ref1 = ndimage.median_filter(a.numpy(), size=(1, 1, size), mode="reflect")
    np.testing.assert_allclose(median_filter(a, size).numpy(), ref1)


def test_exact_gradients_vs_bpda():
    x = torch.rand(2, 1, 6, 6, requires_grad=True)
    bd, med = BitDepth(1), MedianFilter(2)
    (g_exact,) = torch.autograd.grad(bd(x).sum(), x)
    assert torch.count_nonzero(g_exact) == 0
    with straight_through(bd):
        (g_bpda,) = torch.autograd.grad(bd(x).sum(), x)
    assert torch.all(g_bpda == 1.0)
    assert bd.surrogate == "exact"  # restored
    (g_med,) = torch.autograd.grad(med(x).sum(), x)
    assert g_med.sum() == pytest.approx(x[0].numel() * 2)  # each output picks one input
    with straight_through(med):
        y = med(x)
        (g_med_bpda,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(y, median_filter(x, 2))
    assert torch.all(g_med_bpda == 1.0)

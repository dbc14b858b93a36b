"""Compression metrics: exact MAC counts, non-zeros, exported bytes, bits, latency."""

import pytest
import torch
from torch import nn

from robustcompress.data.info import DatasetInfo
from robustcompress.metrics.compression import (
    compression_report,
    count_macs,
    count_nonzeros,
    count_parameters,
    effective_bits,
    export_state,
    exported_bytes,
    macs_per_layer,
    measure_latency,
)
from robustcompress.models import build_model

MNIST = DatasetInfo("mnist", (1, 28, 28), 10, tuple("0123456789"))


def tiny():
    # conv 1->4, 3x3, padding 1 on 6x6: 4*6*6 outputs x 9 MACs = 1296
    # conv1d-free; grouped conv 4->4, groups 2, 3x3 stride 2, no padding on 6x6: 4*2*2 x (2*9) = 288
    # linear 16 -> 5: 80
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, stride=2, groups=2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16, 5))


def test_macs_hand_computed():
    m = tiny()
    assert macs_per_layer(m, (1, 6, 6)) == {"0": 1296, "2": 288, "5": 80}
    assert count_macs(m, (1, 6, 6)) == 1296 + 288 + 80
    # conv1d: 3 out channels x 10 outputs x (2 in x 5 taps) = 300
    assert count_macs(nn.Conv1d(2, 3, 5), (2, 14)) == 300
    # a module run twice counts twice
    lin = nn.Linear(4, 4)
    assert count_macs(nn.Sequential(lin, nn.ReLU(), lin), (4,)) == 32


def test_lenet5_macs_match_the_architecture():
    # conv1 20x24x24x25 + conv2 50x8x8x(20x25) + fc 800x500 + 500x10
    assert count_macs(build_model("lenet5", MNIST), MNIST.shape) == (
        20 * 24 * 24 * 25 + 50 * 8 * 8 * 500 + 800 * 500 + 500 * 10)


def test_nonzeros_after_zeroing_weights():
    m = tiny()
    total = count_parameters(m)
    assert count_nonzeros(m)["nonzero"] == total
    with torch.no_grad():
        m[0].weight[:2].zero_()  # 2 filters x 9
        m[5].bias.zero_()  # 5
    nz = count_nonzeros(m)
    assert nz["total"] == total and nz["nonzero"] == total - 18 - 5
    assert nz["layers"]["0"] == {"nonzero": 4 * 9 + 4 - 18, "total": 40}
    assert nz["density"] == pytest.approx((total - 23) / total)


def test_masks_via_parametrize_count_the_effective_weight():
    import torch.nn.utils.parametrize as P

    class Mask(nn.Module):
        def forward(self, w):
            return w * (torch.arange(w.numel()).view_as(w) % 2 == 0)

    lin = nn.Linear(4, 4, bias=False)
    P.register_parametrization(lin, "weight", Mask())
    nz = count_nonzeros(nn.Sequential(lin))
    assert nz["nonzero"] == 8 and nz["total"] == 16


def test_exported_bytes_dense_is_four_bytes_per_parameter():
    m = build_model("lenet5", MNIST)
    n = count_parameters(m)
    b = exported_bytes(m)
    assert 4 * n <= b <= 4 * n + 2048  # header only
    # BatchNorm running statistics are stored too (floating buffers), counters are not
    r = build_model("resnet20", MNIST)
    keys = export_state(r)
    assert "bn1.running_mean" in keys and "bn1.num_batches_tracked" not in keys


def test_export_tensors_replace_the_dense_weights():
    class Packed(nn.Linear):
        weight_bits = 1

        def export_tensors(self):
            return {"bits": torch.zeros(self.weight.numel() // 8, dtype=torch.uint8),
                    "bias": self.bias.detach()}

    dense = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    packed = nn.Sequential(Packed(64, 64), nn.ReLU(), nn.Linear(64, 10))
    keys = set(export_state(packed))
    assert keys == {"0.bits", "0.bias", "2.weight", "2.bias"}
    saved = exported_bytes(dense) - exported_bytes(packed)
    assert saved == pytest.approx(64 * 64 * 4 - 64 * 64 / 8, abs=200)
    bits = effective_bits(packed)
    assert bits["layers"] == {"0": 1.0, "2": 32.0}
    assert bits["mean_bits"] == pytest.approx((4096 * 1 + 640 * 32) / 4736)


def test_latency_and_report():
    m = build_model("lenet5", MNIST)
    assert measure_latency(m, MNIST.shape, batch_size=2, repeats=3) > 0
    r = compression_report(m, MNIST, repeats=2, reference=m)
    assert r["params"] == count_parameters(m) and r["macs"] == count_macs(m, MNIST.shape)
    assert r["size_ratio"] == pytest.approx(1.0, abs=0.01)
    assert r["macs_ratio"] == 1.0 and r["bytes_ratio"] == 1.0
    assert m.training  # mode restored


def test_pruned_model_is_only_smaller_once_exported_sparse():
    from robustcompress.nn.masks import magnitude_prune, remove_masks

    m = build_model("lenet5", MNIST)
    dense = exported_bytes(m)
    magnitude_prune(m, 0.9)
    nz = count_nonzeros(m)
    assert nz["density"] == pytest.approx(0.1, abs=0.01) and count_parameters(m) == nz["total"]
    sparse = exported_bytes(m)
    assert sparse < dense / 5  # bitmap + 10% float32 values
    # the same zeros without the masks' sparse export: no saving is claimed
    remove_masks(m)
    assert count_nonzeros(m)["density"] == pytest.approx(0.1, abs=0.01)
    assert exported_bytes(m) >= dense
    assert count_macs(m, MNIST.shape) == 2_293_000  # dense kernels still execute

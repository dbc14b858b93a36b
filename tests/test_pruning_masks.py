"""Parametrize-based magnitude masks: exact kept fractions, fixed masks, deepcopy, sparse export."""

import copy

import pytest
import torch
from safetensors.torch import save as st_save
from torch import nn

from robustcompress.errors import UserInputError
from robustcompress.metrics.sparsity import activation_sparsity, weight_sparsity
from robustcompress.nn.masks import (exported_bytes, get_masks, import_layer,
                                     magnitude_masks, magnitude_prune, mask_structure,
                                     prunable_layers, remove_masks)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 30), nn.ReLU(), nn.Linear(30, 10))


def test_uniform_pruning_keeps_exact_fraction_per_layer_over_rounds():
    net = _net()
    sizes = {n: m.weight.numel() for n, m in prunable_layers(net)}
    kept = dict(sizes)
    for _ in range(5):
        magnitude_prune(net, 1 / 3)
        for n, k in kept.items():
            kept[n] = k - int(k / 3 + 0.5)
        assert {n: int(m.sum()) for n, m in get_masks(net).items()} == kept
    sp = weight_sparsity(net)
    for n in sizes:
        assert sp[n] == pytest.approx(1 - kept[n] / sizes[n])


def test_pruned_weights_are_the_smallest_magnitudes():
    net = _net()
    w = net[3].weight.detach().clone()
    magnitude_prune(net, 0.5)
    keep = get_masks(net)["3"]
    assert w[~keep].abs().max() <= w[keep].abs().min()
    assert torch.all(net[3].weight[~keep] == 0)


def test_global_scope_exact_total_and_uneven_layers():
    weights = {"a": torch.randn(100) * 10, "b": torch.randn(100)}
    masks = magnitude_masks(weights, 0.5, "global")
    assert int(masks["a"].sum() + masks["b"].sum()) == 100
    assert masks["a"].sum() > masks["b"].sum()  # the small-magnitude layer loses more


def test_keep_first_last_leaves_them_dense():
    net = _net()
    magnitude_prune(net, 0.9, keep_first_last=True)
    assert set(get_masks(net)) == {"3"}
    sp = weight_sparsity(net)
    assert sp["0"] == 0 and sp["5"] == 0 and sp["3"] > 0.89


def test_invalid_amount_and_scope():
    with pytest.raises(UserInputError):
        magnitude_prune(_net(), 1.0)
    with pytest.raises(UserInputError):
        magnitude_prune(_net(), 0.5, scope="layerwise")


def test_masked_weights_stay_zero_through_training_with_weight_decay(gen):
    net = _net()
    magnitude_prune(net, 0.7)
    keep = {n: m.clone() for n, m in get_masks(net).items()}
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    x, y = torch.rand(32, 1, 8, 8, generator=gen), torch.randint(0, 10, (32,), generator=gen)
    before = net[3].weight.detach().clone()
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    for n, k in keep.items():
        w = net.get_submodule(n).weight
        assert torch.all(w[~k] == 0)
        assert torch.equal(get_masks(net)[n], k)
    assert not torch.equal(net[3].weight.detach()[keep["3"]], before[keep["3"]])  # it did train


def test_deepcopy_and_state_dict_rebuild():
    net = _net()
    magnitude_prune(net, 0.5)
    clone = copy.deepcopy(net)
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(clone(x), net(x))
    magnitude_prune(clone, 0.5)  # independent masks
    assert int(get_masks(clone)["3"].sum()) < int(get_masks(net)["3"].sum())
    assert clone[3].export_tensors.__self__ is clone[3]
    fresh = mask_structure(_net())
    fresh.load_state_dict(net.state_dict())
    assert torch.equal(fresh(x), net(x))


def test_sparse_export_shrinks_bytes_on_disk_and_is_lossless():
    net = _net()
    dense_bytes = len(st_save({k: v.contiguous() for k, v in net.state_dict().items()}))
    prev = None
    for _ in range(6):
        magnitude_prune(net, 1 / 3)
        t = {f"{n}.{k}": v for n, m in prunable_layers(net) for k, v in m.export_tensors().items()}
        size = len(st_save(t))
        assert prev is None or size < prev
        prev = size
        for n, m in prunable_layers(net):
            assert torch.equal(import_layer(m.export_tensors()), m.weight.detach())
    # 1 - (2/3)^6 = 91% zeros: the exported payload is far below dense
    assert exported_bytes(t) < 0.3 * dense_bytes and prev < 0.35 * dense_bytes


def test_remove_masks_keeps_function_and_leaves_copies_intact():
    net = _net()
    magnitude_prune(net, 0.5)
    x = torch.rand(2, 1, 8, 8)
    out = net(x)
    other = copy.deepcopy(net)
    remove_masks(other)  # torch shares the parametrised class between copies
    assert torch.equal(net(x), out) and torch.equal(other(x), out)
    remove_masks(net)
    assert get_masks(net) == {} and torch.equal(net(x), out)
    assert weight_sparsity(net)["3"] == pytest.approx(0.5, abs=0.01)


def test_activation_sparsity_counts_zero_relu_outputs():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(4))
        net[0].bias.zero_()
    x = torch.tensor([[1.0, -1.0, 2.0, -3.0], [-1.0, -1.0, -1.0, 4.0]])
    s = activation_sparsity(net, x)["1"]
    assert s["zero_frac"] == pytest.approx((2 / 4 + 3 / 4) / 2)
    assert s["l1_per_dim"] == pytest.approx((3 / 4 + 4 / 4) / 2)

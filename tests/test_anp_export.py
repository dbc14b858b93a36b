"""ANP-VS: structural export is exact, the objective's groups and eval-mode attack, end to end."""

import pytest
import torch
from torch import nn

from robustcompress.data import load_dataset
from robustcompress.data.info import DatasetInfo
from robustcompress.defenses import get_defense
from robustcompress.defenses.anp_vs import anp_vs, export_pruned, find_chains, fold_masks, probe_inputs
from robustcompress.metrics.compression import count_parameters
from robustcompress.models import build_model
from robustcompress.nn.beta_bernoulli import add_bb_masks, bb_masks, mask_parameters
from robustcompress.training import TrainConfig, fit, load_checkpoint, save_checkpoint
from robustcompress.training.objectives import ANPVS

MNIST_INFO = DatasetInfo(name="mnist", shape=(1, 28, 28), num_classes=10,
                         class_names=tuple("0123456789"), mean=(0.13,), std=(0.31,))
CIFAR_INFO = DatasetInfo(name="cifar10", shape=(3, 32, 32), num_classes=10,
                         class_names=tuple("0123456789"))


def _random_masks(model, frac=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in bb_masks(model):
            off = torch.rand(m.a_uc.shape, generator=g) < frac
            m.a_uc.copy_(torch.where(off, torch.tensor(-9.0), torch.rand(m.a_uc.shape, generator=g) * 3))
            m.b_uc.copy_(torch.where(off, torch.tensor(40.0), torch.tensor(0.5413)))
    return model.eval()


def _randomize_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 2 - 1)


def test_export_lenet5_removes_channels_and_matches_masked_model():
    torch.manual_seed(0)
    model = _random_masks(add_bb_masks(build_model("lenet5", MNIST_INFO)))
    res = export_pruned(model, probe_inputs(MNIST_INFO))
    assert not res.zeroed
    x = torch.rand(16, 1, 28, 28)
    torch.testing.assert_close(res.model(x), model(x), atol=1e-5, rtol=1e-5)
    conv1 = res.model.conv1
    assert isinstance(conv1, nn.Conv2d) and conv1.out_channels == res.channels["conv1"][0] < 20
    assert res.model.fc1.out_features == res.channels["fc1"][0]
    assert res.after["params"] < 0.6 * res.before["params"]
    assert res.after["macs"] < res.before["macs"]
    assert res.after["params"] == count_parameters(res.model)
    assert not any(True for _ in bb_masks(res.model))


def test_export_folds_constant_bn_channels_into_the_next_bias():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(8, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(),
                        nn.Linear(6 * 4 * 4, 5), nn.ReLU(), nn.Linear(5, 3))
    _randomize_bn(net)
    add_bb_masks(net)
    _random_masks(net, seed=3)
    folded, masks = fold_masks(net)
    # ReLU(BN(0)) of some pruned channel is a non-zero constant: removal must fold it
    k = torch.relu(net[1].bias - net[1].running_mean * net[1].weight / torch.sqrt(net[1].running_var + 1e-5))
    assert bool(((masks["0"] == 0) & (k > 0)).any())
    x = torch.rand(10, 3, 14, 14)
    res = export_pruned(net, x[:4])
    assert not res.zeroed
    assert res.model[0].out_channels == int((masks["0"] > 0).sum())
    assert res.model[1].num_features == res.model[0].out_channels == res.model[4].in_channels
    torch.testing.assert_close(res.model(x), net(x), atol=1e-5, rtol=1e-5)


def test_export_resnet_keeps_coupled_channels_zeroed_and_stays_exact():
    torch.manual_seed(0)
    model = build_model("resnet20", CIFAR_INFO)
    _randomize_bn(model)
    _random_masks(add_bb_masks(model), seed=2)
    folded, masks = fold_masks(model)
    chains = find_chains(folded, list(masks), probe_inputs(CIFAR_INFO, 2))
    assert "residual" in chains["layer1.0.conv2"].reason
    res = export_pruned(model, probe_inputs(CIFAR_INFO, 4))
    assert "layer1.0.conv2" in res.zeroed
    x = torch.rand(4, 3, 32, 32)
    torch.testing.assert_close(res.model(x), model(x), atol=1e-4, rtol=1e-4)


def test_exported_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    base = build_model("lenet5", MNIST_INFO)
    model = _random_masks(add_bb_masks(build_model("lenet5", MNIST_INFO)), seed=5)
    res = export_pruned(model, probe_inputs(MNIST_INFO))
    out = res.model
    out.robustcompress_spec = base.robustcompress_spec
    params = get_defense("anp_vs").Params(kept_channels={n: len(k) for n, k in res.kept.items()})
    out.robustcompress_defenses = [{"name": "anp_vs", "params": params.model_dump(mode="json")}]
    save_checkpoint(out, tmp_path / "anp", {})
    loaded = load_checkpoint(tmp_path / "anp")
    x = torch.rand(5, 1, 28, 28)
    torch.testing.assert_close(loaded.eval()(x), out(x))


def test_anpvs_groups_and_eval_mode_attack():
    model = add_bb_masks(nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3)))
    from robustcompress.attacks import ThreatModel

    obj = ANPVS(ThreatModel(eps=0.1), n_train=100, steps=2, generator=torch.Generator().manual_seed(0))
    groups = obj.param_groups(model)
    assert {id(p) for p in groups["masks"]["params"]} == {id(p) for p in mask_parameters(model)}
    assert groups["masks"]["lr"] == 1e-2 and groups["weights"]["lr"] == 1e-3
    assert not ({id(p) for p in groups["masks"]["params"]} & {id(p) for p in groups["weights"]["params"]})
    seen = []
    mask = next(m for _, m in bb_masks(model))
    h = mask.register_forward_pre_hook(lambda m, i: seen.append(m.stochastic))
    model.train()
    x, y = torch.rand(6, 1, 4, 4), torch.randint(0, 3, (6,))
    losses = obj(model, x, y)
    h.remove()
    # attack forwards are deterministic (eval), the two loss forwards are stochastic (train)
    assert seen[-2:] == [True, True] and not any(seen[:-2]) and len(seen) > 2
    assert model.training and mask.stochastic
    assert set(losses) >= {"masks", "weights"} and float(losses["vulnerability"]) > 0
    # the VS term reaches the weights but not the masks' loss
    g_mask = torch.autograd.grad(losses["masks"], list(model[1][0].parameters()), allow_unused=True,
                                 retain_graph=True)
    g_w = torch.autograd.grad(losses["weights"], list(model[1][0].parameters()), retain_graph=True)
    assert all(g is not None for g in g_w)
    assert g_mask[0] is not None  # CE(x_adv) depends on the weights too; only the group steps


def test_anp_vs_end_to_end_on_digits_prunes_and_exports():
    ds = load_dataset("digits")
    torch.manual_seed(0)
    model = build_model("lenet300", ds.info, hidden=(64,))
    fit(model, ds, TrainConfig(epochs=3, lr=3e-3), progress=False)
    net = anp_vs(model, ds, eps=0.1, steps=3, step_size=0.05, mask_lr=0.1,
                 config=TrainConfig(epochs=3, batch_size=64), generator=torch.Generator().manual_seed(0))
    assert not net.training and not any(m.stochastic for _, m in bb_masks(net))
    res = export_pruned(net, probe_inputs(ds.info))
    kept, total = res.channels["fc1"]
    assert kept < total and res.model.fc1.out_features == kept
    x = ds.test.x[:64]
    torch.testing.assert_close(res.model(x), net(x), atol=1e-5, rtol=1e-5)
    acc = float((res.model(ds.test.x).argmax(1) == ds.test.y).float().mean())
    assert acc > 0.7

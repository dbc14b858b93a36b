"""The SAP paper's stochastic baselines: statistics of each layer and the defense specs."""

import pytest
import torch
from torch import nn

from robustcompress.data.info import DatasetInfo
from robustcompress.defenses import get_defense
from robustcompress.defenses.stochastic_baselines import deterministic_weight_pruning, weight_noise
from robustcompress.errors import UserInputError
from robustcompress.models import build_model
from robustcompress.nn import freeze_noise, model_properties, use_generator
from robustcompress.nn.noise import ActivationNoise, TestTimeDropout, WeightNoise, topk_keep_mask

MNIST = DatasetInfo("mnist", (1, 28, 28), 10, tuple("0123456789"), mean=(0.13,), std=(0.31,))


def _weight_draws(layer: nn.Module, n: int) -> torch.Tensor:
    return torch.stack([layer.weight.detach().clone() for _ in range(n)])


@pytest.mark.parametrize("kind,value", [("additive", 0.05), ("multiplicative", 0.2), ("sap", 1.0)])
def test_weight_noise_mean_is_the_weight_and_spread_is_as_specified(kind, value, gen):
    model = build_model("lenet300", MNIST)
    defended = weight_noise(model, kind, value)
    layer, w = defended.fc2, model.fc2.weight.detach()
    n = 3000
    with use_generator(defended, gen):
        draws = _weight_draws(layer, n)
    assert not torch.equal(draws[0], draws[1])
    sd = draws.std(0)
    if kind == "sap":  # theoretical spread of the inverse-propensity estimator
        pr = w.abs() / w.abs().sum()
        keep = -torch.expm1(w.numel() * torch.log1p(-pr))
        theory = w.abs() * (1 / keep - 1).clamp_min(0).sqrt()
    else:
        theory = sd
    z = (draws.mean(0) - w).abs() / (theory / n ** 0.5).clamp_min(1e-6)
    assert z.max() < 5.5  # E[M(W)] = W (RNW, RSW: by construction; SWP: inverse propensity)
    if kind == "additive":
        assert abs(sd.mean().item() - value) < 0.01 * value + 3 * value / n ** 0.5
    elif kind == "multiplicative":
        assert torch.allclose(sd, value * w.abs(), rtol=0.1, atol=1e-5)
    with freeze_noise(defended):
        assert torch.equal(layer.weight, w)


def test_dwp_keeps_exactly_the_top_k_by_magnitude():
    w = torch.randn(30, 17)
    for keep in (0.1, 0.5, 0.93, 1.0):
        mask = topk_keep_mask(w, keep)
        k = round(keep * w.numel())
        assert int(mask.sum()) == k
        assert w.abs()[mask].min() >= w.abs()[~mask].max() if k < w.numel() else mask.all()
    model = build_model("lenet5", MNIST)
    pruned = deterministic_weight_pruning(model, 0.25)
    assert not model_properties(pruned).stochastic
    for name in ("conv1", "conv2", "fc1", "fc2"):
        eff = pruned.get_submodule(name).weight
        orig = model.get_submodule(name).weight
        assert int((eff != 0).sum()) == round(0.25 * orig.numel())
        assert torch.equal(eff[eff != 0], orig[eff != 0])
    with pytest.raises(UserInputError):
        topk_keep_mask(w, 0.0)


def test_dropout_and_activation_noise_statistics(gen):
    h = torch.rand(1, 50).expand(20000, 50)
    drop = TestTimeDropout(0.3, generator=gen).eval()
    out = drop(h)
    assert abs((out == 0).float().mean().item() - 0.3) < 0.01
    assert torch.allclose(out.mean(0), h[0], atol=0.03)
    rna = ActivationNoise(0.2, "additive", generator=gen)
    rsa = ActivationNoise(0.2, "multiplicative", generator=gen)
    a, m = rna(h), rsa(h)
    assert torch.allclose(a.mean(0), h[0], atol=0.015) and abs(a.std(0).mean().item() - 0.2) < 0.01
    assert torch.allclose(m.mean(0), h[0], atol=0.015)
    assert torch.allclose(m.std(0), 0.2 * h[0], rtol=0.08, atol=2e-3)
    for layer in (drop, rna, rsa):
        assert layer.stochastic and layer.granularity == "sample"
    assert WeightNoise("additive", 0.1).granularity == "batch"


@pytest.mark.parametrize("name,params", [
    ("dropout", {"rate": 0.2}), ("rna", {"s": 0.1}), ("rsa", {"s": 0.1}), ("rnw", {"s": 0.01}),
    ("rsw", {"s": 0.1}), ("swp", {"frac": 2.0}), ("dwp", {"keep": 0.5}),
])
def test_specs_apply_record_and_rebuild_from_checkpoint(name, params, tmp_path):
    from robustcompress.training import load_checkpoint, save_checkpoint

    spec = get_defense(name)
    model = build_model("lenet5", MNIST).eval()
    defended = spec.apply(model, spec.Params(**params), None)[""]
    assert defended.robustcompress_defenses[-1]["name"] == name
    assert model_properties(defended).stochastic == (name != "dwp")
    assert not hasattr(model, "robustcompress_defenses")
    save_checkpoint(defended, tmp_path / "m")
    loaded = load_checkpoint(tmp_path / "m")
    x = torch.rand(2, 1, 28, 28)
    with freeze_noise(defended), freeze_noise(loaded):
        assert torch.allclose(defended(x), loaded(x), atol=1e-5)
    with pytest.raises(Exception):
        spec.Params(**{**params, "unknown": 1})

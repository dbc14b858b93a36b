"""sap(model): placement after every ReLU, no mutation, recipe, checkpoint rebuild, evaluator use."""

import pytest
import torch
from torch import nn

from robustcompress.data.info import DatasetInfo
from robustcompress.defenses import get_defense
from robustcompress.defenses.sap import predict, sap
from robustcompress.errors import UserInputError
from robustcompress.models import build_model
from robustcompress.nn import freeze_noise, model_properties
from robustcompress.nn.sap import SAP

MNIST = DatasetInfo("mnist", (1, 28, 28), 10, tuple("0123456789"), mean=(0.13,), std=(0.31,))
CIFAR = DatasetInfo("cifar10", (3, 32, 32), 10, tuple("abcdefghij"), mean=(0.5,) * 3, std=(0.25,) * 3)


@pytest.mark.parametrize("name,info", [("lenet5", MNIST), ("resnet20", CIFAR), ("lenet300", MNIST)])
def test_every_relu_gets_sap_and_the_input_model_is_untouched(name, info):
    model = build_model(name, info).eval()
    relus = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    before = repr(model)
    defended = sap(model, frac=0.5)
    assert repr(model) == before and not hasattr(model, "robustcompress_defenses")
    saps = [n for n, m in defended.named_modules() if isinstance(m, SAP)]
    assert saps == [f"{r}.1" for r in relus]  # directly after each ReLU, in order
    assert all(defended.get_submodule(r + ".0").__class__ is nn.ReLU for r in relus)
    assert defended.robustcompress_defenses == [
        {"name": "sap", "params": {"frac": 0.5, "layers": "relu", "method": "exact"}}]
    assert model_properties(defended).stochastic
    assert defended.state_dict().keys() == model.state_dict().keys()
    x = torch.rand(4, *info.shape)
    with freeze_noise(defended):  # the mean model is the original
        assert torch.allclose(defended(x), model(x), atol=1e-6)


def test_sap_after_named_layers_and_bad_names():
    model = build_model("lenet5", MNIST)
    defended = sap(model, layers=["conv1", "fc1"], method="bernoulli")
    assert isinstance(defended.conv1[1], SAP) and defended.conv1[1].method == "bernoulli"
    assert sum(isinstance(m, SAP) for m in defended.modules()) == 2
    with pytest.raises(UserInputError, match="no (module|activation site or module) named"):
        sap(model, layers=["nope"])
    with pytest.raises(UserInputError):
        sap(model, layers="conv")


def test_spec_apply_structure_and_checkpoint_round_trip(tmp_path):
    from robustcompress.training import load_checkpoint, save_checkpoint

    spec = get_defense("sap")
    with pytest.raises(Exception):
        spec.Params(frac=0)
    model = build_model("lenet5", MNIST)
    out = spec.apply(model, spec.Params(frac=1.0), None)
    defended = out[""]
    save_checkpoint(defended, tmp_path / "m")
    loaded = load_checkpoint(tmp_path / "m")
    assert [type(m) for m in loaded.modules()] == [type(m) for m in defended.modules()]
    x = torch.rand(3, 1, 28, 28)
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    from robustcompress.nn import use_generator

    with use_generator(defended, g()):
        a = defended(x)
    with use_generator(loaded, g()):
        b = loaded(x)
    assert torch.allclose(a, b, atol=1e-6)


def test_evaluator_sees_sap_as_per_sample_random_and_averages():
    from robustcompress.attacks import input_gradient, mc_predict

    torch.manual_seed(0)
    model = build_model("lenet5", MNIST).eval()
    defended = sap(model)
    x, y = torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,))
    g1 = torch.Generator().manual_seed(1)
    p1 = mc_predict(defended, x, mc_samples=20, generator=g1)
    p2 = predict(defended, x, 20, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(p1, p2) and torch.allclose(p1.sum(1), torch.ones(6))
    _, g_eot = input_gradient(defended, x, y, eot_samples=32, generator=torch.Generator().manual_seed(2))
    _, g_one = input_gradient(defended, x, y, eot_samples=1, generator=torch.Generator().manual_seed(3))
    _, g_dense = input_gradient(model, x, y)
    cos = lambda a, b: torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1)).mean()  # noqa: E731
    # averaging draws estimates the mean gradient better than a single draw
    assert cos(g_eot, g_dense) > cos(g_one, g_dense)

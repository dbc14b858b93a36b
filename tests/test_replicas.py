"""Self-check of tests/replicas.py: shapes, module counts against COUNTS, fx traceability."""

import pytest
import torch
import torch.fx
from torch import nn

from replicas import BUILDERS, COUNTS, resnet18


def _module_counts(model: nn.Module) -> dict[str, int]:
    mods = [m for _, m in model.named_modules()]
    convs = [m for m in mods if isinstance(m, nn.modules.conv._ConvNd)]
    return {
        "convs": len(convs),
        "grouped_convs": sum(m.groups > 1 for m in convs),
        "linears": sum(isinstance(m, nn.Linear) for m in mods),
        "batchnorms": sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in mods),
        "layernorms": sum(isinstance(m, nn.LayerNorm) for m in mods),
    }


def test_counts_cover_every_builder():
    assert set(COUNTS) == set(BUILDERS)
    for counts in COUNTS.values():
        assert sum(counts["activation_by_kind"].values()) == counts["activation_calls"]
        assert counts["functional_activations"] <= counts["activation_calls"]


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_output_shape(name):
    torch.manual_seed(0)
    model = BUILDERS[name]().eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_module_counts_match_oracle(name):
    expected = {k: COUNTS[name][k] for k in ("convs", "grouped_convs", "linears", "batchnorms", "layernorms")}
    assert _module_counts(BUILDERS[name]()) == expected


@pytest.mark.parametrize("name", sorted(set(BUILDERS) - {"untraceable_net"}))
def test_traceable(name):
    torch.fx.symbolic_trace(BUILDERS[name]())


def test_untraceable_net_fails_fx():
    with pytest.raises(torch.fx.proxy.TraceError):
        torch.fx.symbolic_trace(BUILDERS["untraceable_net"]())


def test_resnet18_options():
    model = resnet18(num_classes=7, width=8, functional_stem=True, in_channels=1).eval()
    assert isinstance(model.relu, nn.ReLU)  # the half-migrated stem keeps its module
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    assert _module_counts(model)["convs"] == COUNTS["resnet18"]["convs"]

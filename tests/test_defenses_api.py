"""The package exports each method's plain Python function, and every registered defense works
on a zoo model through its spec (structure rebuild keeps the parameter names)."""

import inspect

import torch

import robustcompress.defenses as D
from robustcompress.data.info import DatasetInfo
from robustcompress.models import build_model


def test_package_exports_the_functions():
    for name in ("tensorize", "binarize", "sap", "prune", "progressive_prune", "quantize", "feedback_learning",
                 "anp_vs", "export_pruned", "adversarial_training", "feature_squeezing",
                 "defensive_quantization", "dropout_after_relu", "weight_noise"):
        assert inspect.isfunction(getattr(D, name)), name


def test_post_hoc_defenses_keep_the_input_model_untouched():
    info = DatasetInfo("toy", (1, 8, 8), 10, tuple(map(str, range(10))))
    torch.manual_seed(0)
    model = build_model("lenet5", info).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(4, 1, 8, 8)
    for defended in (D.sap(model), D.tensorize(model, rank=1.0, theta=1.0), D.quantize(model, bits=3)):
        assert defended is not model
        assert defended(x).shape == (4, 10)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k

"""Quantize defense: PTQ accuracy, packed size, checkpoint rebuild, STE/QAT, attack gradients."""

import copy

import pytest
import torch
import torch.nn.functional as F

from robustcompress.defenses import get_defense
from robustcompress.defenses.base import DefenseContext
from robustcompress.defenses.quantization import float_reference, quantize
from robustcompress.metrics.spectral import quantization_error_norms
from robustcompress.nn.masks import exported_bytes, magnitude_prune, prunable_layers
from robustcompress.nn.protocol import model_properties, straight_through
from robustcompress.training import (TrainConfig, evaluate_accuracy, fit, load_checkpoint,
                                     save_checkpoint)


# `digits` and `trained` (LeNet-300-100, 3 epochs on digits) come from tests/conftest.py


def test_ptq_levels_accuracy_and_declared_non_differentiable(digits, trained):
    q = quantize(trained, 3, mu_law_layers=1)
    assert torch.equal(trained.fc1.weight, trained.fc1.weight)  # original untouched
    assert q.fc1.weight.unique().numel() <= 7 and q.fc3.weight.unique().numel() <= 7
    props = model_properties(q)
    assert props.non_differentiable and len(props.non_differentiable_modules) == 3
    acc_f, acc_q = (evaluate_accuracy(m, digits.test) for m in (trained, q))
    assert acc_q > acc_f - 0.1
    q8 = quantize(trained, 8)
    assert evaluate_accuracy(q8, digits.test) == pytest.approx(acc_f, abs=0.01)


def test_packed_export_is_3_over_32_of_float(trained):
    q = quantize(trained, 3)
    dense = sum(p.numel() * 4 for p in trained.parameters())
    packed = sum(exported_bytes(m.export_tensors()) for _, m in prunable_layers(q))
    weights = sum(m.weight.numel() for _, m in prunable_layers(q))
    biases = dense - 4 * weights
    # 3 bits per weight + biases in float + a few bytes of scale/shape
    assert packed == pytest.approx(3 * weights / 8 + biases, rel=0.01)
    assert packed / dense < 0.11


def test_prune_then_quantize_exports_codes_of_nonzeros_only(trained):
    pq = quantize(magnitude_prune(copy.deepcopy(trained), 0.9), 3)
    t = pq.fc1.export_tensors()
    assert "weight.codes" in t and ("weight.bitmap" in t or "weight.indices" in t)
    assert torch.all(pq.fc1.weight[pq.fc1.parametrizations.weight[0].mask == 0] == 0)


def test_quantize_defense_checkpoint_rebuild(digits, trained, tmp_path):
    spec = get_defense("quantize")
    p = spec.Params(bits=3, mu_law_layers=1, per_channel=True)
    q = spec.apply(trained, p, DefenseContext(dataset=digits, device=torch.device("cpu")))[""]
    save_checkpoint(q, tmp_path / "q")
    back = load_checkpoint(tmp_path / "q")
    x = digits.test.x[:50]
    assert torch.equal(back(x), q.eval()(x))


def test_attack_gradient_through_quantized_model_is_nonzero_and_exact(trained, digits):
    q = quantize(trained, 3, mu_law_layers=1)
    x = digits.test.x[:8].clone().requires_grad_(True)
    y = digits.test.y[:8]
    with straight_through(q, "exact"):  # even the naive backward: input grads are exact
        g_exact = torch.autograd.grad(F.cross_entropy(q(x), y), x)[0]
    with straight_through(q, "identity"):
        g_ste = torch.autograd.grad(F.cross_entropy(q(x), y), x)[0]
    assert g_ste.abs().sum() > 0 and torch.allclose(g_exact, g_ste)
    assert all(getattr(m, "surrogate", "identity") == "identity" for m in q.modules())


def test_qat_trains_float_weights_through_ste(digits, trained):
    q = quantize(trained, 2)
    before = q.fc2.parametrizations.weight.original.detach().clone()
    acc0 = evaluate_accuracy(q, digits.test)
    fit(q, digits, TrainConfig(epochs=2, lr=5e-4), progress=False)
    assert not torch.equal(before, q.fc2.parametrizations.weight.original.detach())
    assert q.fc2.weight.unique().numel() <= 3
    assert evaluate_accuracy(q, digits.test) >= acc0 - 0.02


def test_error_norms_on_quantized_model_and_reference(trained):
    q = quantize(trained, 3)
    rows = quantization_error_norms(q, float_reference(q), (1, 8, 8))
    rows2 = quantization_error_norms(q, trained, (1, 8, 8))
    assert [r["reshaped"] for r in rows] == pytest.approx([r["reshaped"] for r in rows2])
    assert all(r["reshaped"] > 0 for r in rows)

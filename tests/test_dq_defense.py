"""Defensive Quantization defense: conversion, Lipschitz objective, fine-tuning, checkpoint rebuild."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustcompress.data import load_dataset
from robustcompress.defenses import DefenseContext, get_defense
from robustcompress.models import build_model
from robustcompress.nn.act_quant import ActQuant, orthogonality_penalty
from robustcompress.training import TrainConfig, fit, load_checkpoint, save_checkpoint
from robustcompress.training.objectives import LipschitzRegularized


def test_lipschitz_objective_is_ce_plus_penalty():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    x, y = torch.rand(4, 6), torch.randint(0, 3, (4,))
    obj = LipschitzRegularized(beta=0.1)
    expected = F.cross_entropy(model(x), y) + orthogonality_penalty(model, 0.1)
    torch.testing.assert_close(obj(model, x, y), expected)


def test_dq_defense_trains_quantised_model_and_rebuilds(tmp_path):
    ds = load_dataset("digits")
    torch.manual_seed(0)
    model = build_model("lenet300", ds.info, hidden=(64,))
    fit(model, ds, TrainConfig(epochs=3, lr=3e-3), progress=False)
    spec = get_defense("defensive_quantization")
    ctx = DefenseContext(dataset=ds, device=torch.device("cpu"), progress=False)
    params = spec.Params(bits=2, beta=1e-2, epochs=3)
    out = spec.apply(model, params, ctx)[""]
    quants = [m for m in out.modules() if isinstance(m, ActQuant)]
    assert quants and not any(isinstance(m, nn.ReLU) for m in out.modules())
    assert not any(isinstance(m, ActQuant) for m in model.modules())  # input untouched
    with torch.no_grad():
        acc = float((out(ds.test.x).argmax(1) == ds.test.y).float().mean())
        # the regulariser pulled the weights towards orthogonality
        assert float(orthogonality_penalty(out, 1.0)) < float(orthogonality_penalty(model, 1.0))
    assert acc > 0.75
    save_checkpoint(out, tmp_path / "dq", {})
    loaded = load_checkpoint(tmp_path / "dq").eval()
    torch.testing.assert_close(loaded(ds.test.x[:20]), out(ds.test.x[:20]))

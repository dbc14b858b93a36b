"""Gradient-masking checks as pure functions, and the evaluate-adaptive CLI end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from robustcompress.attacks import ThreatModel
from robustcompress.attacks.checks import (
    check_blackbox_stronger,
    check_iterative_weaker,
    check_large_eps,
    check_more_eot,
    check_more_steps,
    check_zero_gradients,
    large_eps,
    masking_checks,
    zero_gradient_mask,
)


def test_pure_checks_raise_exactly_beyond_tolerance():
    assert check_iterative_weaker(0.30, 0.36, tol=0.05).raised
    assert not check_iterative_weaker(0.30, 0.34, tol=0.05).raised
    assert check_blackbox_stronger(0.40, 0.30, "square", tol=0.05).raised
    assert not check_blackbox_stronger(0.40, 0.37, "square", tol=0.05).raised
    assert check_large_eps(0.06, 0.5, tol=0.05).raised and not check_large_eps(0.0, 0.5).raised
    assert check_more_eot(0.50, 0.40, 1, tol=0.05).raised
    assert not check_more_eot(0.20, 0.18, 20, tol=0.05).raised
    assert check_more_steps(0.50, 0.40, 10).raised and not check_more_steps(0.5, 0.5, 10).raised
    f = check_more_eot(0.5, 0.4, 1)
    assert f.name == "more_eot_helps" and f.values["accuracy_4x"] == 0.4 and "EOT" in f.explanation
    assert json.loads(json.dumps(f.to_dict()))["raised"] is True


def test_zero_gradient_check_counts_zero_and_nan_samples():
    g = torch.randn(20, 3, 4)
    g[:2] = 0.0
    g[2, 0, 0] = float("nan")
    assert zero_gradient_mask(g).tolist() == [True, True, True] + [False] * 17
    flag = check_zero_gradients(g, threshold=0.1)
    assert flag.raised and flag.values["fraction"] == pytest.approx(0.15)
    assert flag.values["nan_samples"] == 1
    assert not check_zero_gradients(g[1:], threshold=0.2).raised


def test_large_eps_is_half_the_box():
    t = ThreatModel.from_spec("linf", 0.1, bounds=(-1.0, 1.0))
    assert large_eps(t, (1, 100)) == 1.0
    t2 = ThreatModel.from_spec("l2", 0.5)
    assert large_eps(t2, (1, 4, 4)) == pytest.approx(0.5 * math.sqrt(16))


def test_masking_checks_clear_on_plain_linear_model():
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    model.requires_grad_(False)
    x = torch.rand(64, 1, 4, 4, generator=g)
    y = model(x).argmax(1)
    flags = masking_checks(model, x, y, ThreatModel.from_spec("linf", 0.05), steps=5,
                           square_queries=50, generator=g)
    names = [f.name for f in flags]
    assert names == ["zero_gradients", "iterative_weaker", "more_steps_help",
                     "not_monotone_in_eps", "large_eps_not_zero", "blackbox_stronger"]
    assert not any(f.raised for f in flags), [f.line() for f in flags]


def test_evaluate_adaptive_cli_writes_json(tmp_path, data_root):
    from robustcompress.cli import main
    from robustcompress.data import load_dataset
    from robustcompress.models import build_model
    from robustcompress.training import save_checkpoint

    info = load_dataset("digits").info
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model("lenet300", info)
    stem = save_checkpoint(model, tmp_path / "m", {})
    out = tmp_path / "report.json"
    rc = main(["evaluate-adaptive", "--checkpoint", str(stem), "--eps", "0.1", "--limit", "24",
               "--apgd-steps", "2", "--square-queries", "5", "--no-checks", "--json", str(out),
               "--device", "cpu"])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["n"] == 24 and [a["label"] for a in doc["attacks"]] == ["apgd-ce", "apgd-dlr", "square"]
    assert doc["settings"]["eps"] == pytest.approx(0.1)
    assert main(["evaluate-adaptive", "--checkpoint", str(stem), "--eps", "8", "--limit", "4"]) == 2

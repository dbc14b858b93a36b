"""`robustcompress anp` / `advtrain` end to end on the digits (seconds)."""

import json

import pytest
import torch

from robustcompress.cli import main
from robustcompress.data import load_dataset
from robustcompress.models import build_model
from robustcompress.training import TrainConfig, fit, load_checkpoint, save_checkpoint


@pytest.mark.slow
def test_anp_and_advtrain_commands(tmp_path, capsys):
    ds = load_dataset("digits")
    torch.manual_seed(0)
    model = build_model("lenet300", ds.info, hidden=(48,))
    fit(model, ds, TrainConfig(epochs=2, lr=3e-3), progress=False)
    save_checkpoint(model, tmp_path / "base", {})
    rc = main(["anp", "--checkpoint", str(tmp_path / "base"), "--epochs", "2", "--eps", "0.1",
               "--steps", "2", "--step-size", "0.05", "--mask-lr", "0.1", "--eval-steps", "5",
               "--eval-limit", "60", "--device", "cpu", "--plot", str(tmp_path / "v.png"),
               "--constant-lr", "--out", str(tmp_path / "anp")])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "fc1:" in text and "channels kept" in text and "params:" in text and "V " in text
    summary = json.loads((tmp_path / "anp.summary.json").read_text())
    kept, total = summary["export"]["channels"]["fc1"]
    small = load_checkpoint(tmp_path / "anp")
    assert small.fc1.out_features == kept <= total
    assert small.robustcompress_defenses[-1]["params"]["lr_steps"] == []
    assert (tmp_path / "v.png").stat().st_size > 0
    rc = main(["advtrain", "--checkpoint", str(tmp_path / "base"), "--attack", "fgsm", "--eps", "0.1",
               "--epochs", "2", "--lr-step", "0.5", "--weight-decay", "1e-4", "--eval-steps", "5",
               "--eval-limit", "60", "--device", "cpu", "--out", str(tmp_path / "at")])
    assert rc == 0
    at = load_checkpoint(tmp_path / "at")
    rec = at.robustcompress_defenses[-1]
    assert rec["name"] == "adversarial_training"
    assert rec["params"]["lr_steps"] == [0.5] and rec["params"]["weight_decay"] == 1e-4
    assert "after fgsm-AT" in capsys.readouterr().out


def test_advtrain_rejects_lr_steps_outside_the_run_before_loading_anything(tmp_path, capsys):
    rc = main(["advtrain", "--checkpoint", str(tmp_path / "missing"), "--lr-step", "70",
               "--out", str(tmp_path / "at")])
    err = capsys.readouterr().err
    assert rc != 0 and "lr_steps" in err and "fractions of training" in err

"""`robustcompress prune` and `robustcompress quantize` end to end on the digits data."""

import json

import pytest
import torch

from robustcompress.cli import main
from robustcompress.data import load_dataset
from robustcompress.models import build_model
from robustcompress.training import TrainConfig, fit, load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck")
    ds = load_dataset("digits")
    torch.manual_seed(0)
    m = build_model("lenet300", ds.info)
    fit(m, ds, TrainConfig(epochs=2), progress=False)
    return save_checkpoint(m, d / "model")


def test_prune_cli_writes_rounds_curve_and_resumes(ckpt, tmp_path, capsys):
    args = ["prune", "--checkpoint", str(ckpt), "--rho", "0.5", "--rounds", "2",
            "--retrain-epochs", "1", "--eval-limit", "60", "--out", str(tmp_path), "--device", "cpu"]
    assert main(args) == 0
    curve = json.loads((tmp_path / "curve.json").read_text())
    assert [r["round"] for r in curve] == [0, 1, 2]
    assert curve[2]["sparsity"] == pytest.approx(0.75, abs=0.01)
    assert curve[2]["weight_sparsity"]["fc2"] == pytest.approx(0.75, abs=0.01)
    assert 0 <= curve[2]["act_zero_frac_last"] <= 1
    assert (tmp_path / "curve.png").is_file()
    m2 = load_checkpoint(tmp_path / "r2")
    assert float((m2.fc2.weight == 0).float().mean()) == pytest.approx(0.75, abs=0.01)
    out = capsys.readouterr().out
    assert "FGS" in out and "DeepFool" in out
    assert main(args) == 0  # resume: same curve
    assert json.loads((tmp_path / "curve.json").read_text()) == curve


def test_quantize_cli_reports_norms_and_packed_size(ckpt, tmp_path, capsys):
    assert main(["quantize", "--checkpoint", str(ckpt), "--bits", "3", "--mu-law-layers", "1",
                 "--out", str(tmp_path / "q"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "||dW||_2" in out and "packed" in out
    q = load_checkpoint(tmp_path / "q")
    assert q.fc3.weight.unique().numel() <= 7
    assert main(["quantize", "--checkpoint", str(ckpt), "--mu-mode", "bogus",
                 "--out", str(tmp_path / "x")]) == 2

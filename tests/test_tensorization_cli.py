"""`robustcompress tensorize` end to end on a tiny digits checkpoint."""

import torch

from robustcompress.cli import main
from robustcompress.data import load_dataset
from robustcompress.models import build_model
from robustcompress.nn.protocol import model_properties
from robustcompress.nn.tucker import TuckerConv2d
from robustcompress.training import TrainConfig, fit, load_checkpoint, save_checkpoint


def test_tensorize_cli_writes_rebuildable_checkpoint(tmp_path, capsys):
    data = load_dataset("digits", train_limit=200, test_limit=50)
    torch.manual_seed(0)
    net = build_model("lenet5", data.info)
    fit(net, data, TrainConfig(epochs=1), progress=False)
    save_checkpoint(net, tmp_path / "base" / "model")
    rc = main(["tensorize", "--checkpoint", str(tmp_path / "base"), "--rank", "0.5",
               "--theta", "0.9", "--out", str(tmp_path / "dt"), "--test-limit", "50",
               "--device", "cpu", "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "before" in out and "after (theta=0.9)" in out
    model = load_checkpoint(tmp_path / "dt")
    assert isinstance(model.conv2, TuckerConv2d) and model.conv2.ranks == (25, 10, 5, 5)
    assert model_properties(model).stochastic
    assert model.robustcompress_defenses[-1]["params"]["theta"] == 0.9


def test_tensorize_cli_bad_rank(tmp_path, capsys):
    rc = main(["tensorize", "--checkpoint", str(tmp_path / "nope"), "--rank", "abc",
               "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "--rank 'abc'" in capsys.readouterr().err

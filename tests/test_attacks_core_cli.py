"""`robustcompress attack` end to end on a small digits checkpoint, and its refusals."""

import json

import pytest
import torch

from robustcompress.cli import main
from robustcompress.commands.attack import parse_params
from robustcompress.errors import UserInputError


def test_parse_params():
    assert parse_params(["steps=40", "loss=dlr", "decay=0.5", "early-stop=false"]) == {
        "steps": 40, "loss": "dlr", "decay": 0.5, "early_stop": False}
    with pytest.raises(UserInputError, match="key=value"):
        parse_params(["steps"])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    data = pytest.importorskip("robustcompress.data")
    models = pytest.importorskip("robustcompress.models")
    training = pytest.importorskip("robustcompress.training")
    info = data.load_dataset("digits", test_limit=60).info
    torch.manual_seed(0)
    model = models.build_model("lenet300", info)
    path = tmp_path_factory.mktemp("ck") / "model"
    training.save_checkpoint(model, path)
    return path


def test_attack_command_reports_and_writes_json(checkpoint, tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = main(["attack", "--checkpoint", str(checkpoint), "--attack", "pgd", "--eps", "0.5",
               "--steps", "5", "--n", "40", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    rep = json.loads(out.read_text())
    assert rep["n"] == 40 and rep["attack"] == "pgd" and rep["params"]["steps"] == 5
    assert rep["threat"]["eps"] == pytest.approx(0.5) and rep["robust_accuracy"] <= rep["clean_accuracy"]
    assert rep["norm_max"] <= 0.5 + 1e-6
    assert "robust accuracy" in capsys.readouterr().out


def test_attack_command_refuses_wrong_units_and_parameters(checkpoint, capsys):
    assert main(["attack", "--checkpoint", str(checkpoint), "--eps", "8", "--n", "5"]) == 2
    assert "--eps-scale 255" in capsys.readouterr().err
    assert main(["attack", "--checkpoint", str(checkpoint), "--attack", "fgsm", "--eps", "8",
                 "--eps-scale", "255", "--steps", "3", "--n", "5"]) == 2
    assert "no parameter" in capsys.readouterr().err

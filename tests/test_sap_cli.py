"""`robustcompress sap`: applies SAP to a checkpoint, prints the sweep, saves a defended checkpoint."""

import torch

from robustcompress.cli import main


def test_sap_command_saves_a_defended_checkpoint(tmp_path, data_root, capsys):
    from robustcompress.data import load_dataset
    from robustcompress.models import build_model
    from robustcompress.nn.sap import SAP
    from robustcompress.training import TrainConfig, fit, load_checkpoint, save_checkpoint

    ds = load_dataset("digits", root=data_root, train_limit=300, test_limit=60)
    model = build_model("lenet5", ds.info)
    fit(model, ds, TrainConfig(epochs=1, seed=0), progress=False)
    save_checkpoint(model, tmp_path / "base")
    rc = main(["sap", "--checkpoint", str(tmp_path / "base"), "--fgsm", "0,16", "--eot", "2",
               "--mc", "3", "--n", "40", "--device", "cpu", "--data-dir", str(data_root),
               "--out", str(tmp_path / "sap")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "paper protocol" in text and "ECE" in text
    loaded = load_checkpoint(tmp_path / "sap")
    assert sum(isinstance(m, SAP) for m in loaded.modules()) == sum(
        isinstance(m, torch.nn.ReLU) for m in model.modules())
    assert loaded.robustcompress_defenses[0]["name"] == "sap"
    assert main(["sap", "--checkpoint", str(tmp_path / "base"), "--baseline", "nope"]) == 2
    assert main(["sap", "--checkpoint", str(tmp_path / "base"), "--baseline", "rnw", "--value", "-1",
                 "--data-dir", str(data_root)]) == 2

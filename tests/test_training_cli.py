"""CLI: train / evaluate / models on the embedded digits set, and their user errors."""

import json

import pytest

from robustcompress.cli import main


def test_models_lists_the_zoo(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("lenet5", "resnet20", "soundnet5", "vgg_sparse", "wrn"):
        assert name in out


def test_train_then_evaluate_digits(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--model", "lenet5", "--epochs", "3",
                 "--batch-size", "32", "--out", str(run), "--no-progress", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and (run / "model.safetensors").is_file()
    meta = json.loads((run / "model.json").read_text())
    assert meta["spec"]["model"] == "lenet5" and meta["config"]["epochs"] == 3
    assert meta["metrics"]["test_acc"] > 0.8
    assert main(["evaluate", "--checkpoint", str(run), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"accuracy {meta['metrics']['test_acc']:.4f}" in out
    assert "most confused" in out
    # same command again: the finished run is resumed, not retrained
    assert main(["train", "--dataset", "digits", "--model", "lenet5", "--epochs", "3",
                 "--batch-size", "32", "--out", str(run), "--no-progress"]) == 0
    assert json.loads((run / "state.json").read_text())["epoch"] == 3


def test_user_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "--model", "lenet6"]) == 2
    err = capsys.readouterr().err
    assert "choose one of" in err and "lenet5" in err and "Traceback" not in err
    assert main(["train", "--dataset", "imagenet", "--model", "lenet5"]) == 2
    assert "imagenet" in capsys.readouterr().err
    assert main(["train", "--dataset", "digits", "--model", "soundnet5"]) == 2
    assert "soundnet5" in capsys.readouterr().err
    assert main(["train", "--dataset", "digits", "--schedule", "weekly"]) == 2
    assert "schedule" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "nothing")]) == 2
    assert "not found" in capsys.readouterr().err


def test_evaluate_refuses_data_of_another_shape(tmp_path, capsys):
    from robustcompress.data.info import DatasetInfo
    from robustcompress.models import build_model
    from robustcompress.training import save_checkpoint

    info = DatasetInfo("digits", (1, 28, 28), 10, tuple("0123456789"))
    save_checkpoint(build_model("lenet5", info), tmp_path / "m")
    assert main(["evaluate", "--checkpoint", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "(1, 28, 28)" in err and "(1, 8, 8)" in err


def test_adaptive_seam_needs_a_budget(tmp_path, capsys):
    import robustcompress.attacks as attacks

    run = tmp_path / "r"
    main(["train", "--dataset", "digits", "--epochs", "1", "--out", str(run), "--no-progress"])
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(run), "--adaptive", "--limit", "20"]) == 2
    err = capsys.readouterr().err
    assert ("--eps" in err) if hasattr(attacks, "evaluate_robustness") else ("not available" in err)

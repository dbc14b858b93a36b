"""The README's "bring your own model" path end to end: a user's ResNet-18 file
(examples/foreign_model/my_resnet.py) with weights in a .pt state dict, through the shipped
config's five defenses on the CIFAR-10 copy, shrunk to seconds (same defenses, tiny budgets)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import yaml

from robustcompress.cli import main
from robustcompress.experiments.api import list_configs

REPO = Path(__file__).resolve().parents[1]


def test_foreign_resnet18_config_runs_every_defense(tmp_path, data_root, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(str(REPO / "examples" / "foreign_model"))
    from my_resnet import resnet18

    torch.manual_seed(0)
    torch.save(resnet18(num_classes=10, width=4).state_dict(), tmp_path / "mine.pt")
    cfg = yaml.safe_load(list_configs()["foreign-resnet18-cifar10-cpu"].read_text())
    cfg["model"].update(weights=str(tmp_path / "mine.pt"), kwargs={"num_classes": 10, "width": 4})
    cfg["dataset"].update(train_limit=200, test_limit=100, data_dir=str(data_root))
    cfg["training"].update(batch_size=50)
    shrink = {"tensorized": {"finetune_epochs": 0}, "pruned": {"rounds": 1, "retrain_epochs": 0},
              "anp_vs": {"steps": 1}}
    for d in cfg["defenses"]:
        d["params"].update(shrink.get(d["name"], {}))
    cfg["evaluation"].update(n_samples=20, batch_size=20, apgd_steps=2, eot_samples=2, mc_samples=2,
                             square_queries=5, check_samples=8, check_steps=2)
    cfg["evaluation"]["paper"] = [{"attack": "fgsm"}]
    cfg.update(output_dir=str(tmp_path / "run"), threads=1)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(tmp_path / "c.yaml"), "--no-progress"]) == 0
    capsys.readouterr()
    report = (tmp_path / "run" / "report.md").read_text()
    board = report.split("## Leaderboard", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("|")[1].strip() for line in board.splitlines() if line.startswith("| ")}
    assert {"base", "sap", "tensorized", "pruned/r1", "quant3", "anp_vs"} <= rows
    assert (tmp_path / "run" / "report.html").is_file()
    sys.modules.pop("my_resnet", None)

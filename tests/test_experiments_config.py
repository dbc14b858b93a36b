"""Config schema: every invalid config gives one clear message naming key, allowed values, line."""

from pathlib import Path

import pytest
import yaml

from robustcompress.errors import ConfigError
from robustcompress.experiments import expanded_dict, load_config, parse_config

GOOD = """\
name: t
dataset:
  name: digits
model:
  name: lenet5
training:
  epochs: 1
defenses:
  - name: sap
    method: sap
    grid:
      frac: [1.0, 0.5]
evaluation:
  n_samples: 20
  threats:
    - norm: linf
      eps: [0.1, "8/255"]
  paper:
    - attack: fgsm
"""


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_good_config_expands_grid(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    d = expanded_dict(cfg)
    assert [v["variant"] for v in d["variants"]] == ["sap[frac=1.0]", "sap[frac=0.5]"]
    assert d["variants"][1]["params"]["frac"] == 0.5
    assert d["training"]["epochs"] == 1  # defaults of TrainConfig are filled in
    assert cfg.output_dir.endswith("t")


def check_error(tmp_path, text, *needles):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    msg = str(e.value)
    for n in needles:
        assert n in msg, msg
    return msg


def test_unknown_key_names_key_and_line(tmp_path):
    text = GOOD.replace("  n_samples: 20", "  n_sampels: 20")
    check_error(tmp_path, text, "evaluation.n_sampels", "unknown key", "line 14")


def test_unknown_defense_lists_choices(tmp_path):
    text = GOOD.replace("method: sap", "method: sapp")
    check_error(tmp_path, text, "defenses[0].method", "'sapp'", "tensorization", "line 10")


def test_wrong_type(tmp_path):
    text = GOOD.replace("n_samples: 20", "n_samples: many")
    check_error(tmp_path, text, "evaluation.n_samples", "integer")


def test_unknown_defense_parameter_lists_parameters(tmp_path):
    text = GOOD.replace("      frac: [1.0, 0.5]", "      fraction: [1.0]")
    check_error(tmp_path, text, "fraction", "unknown parameter", "frac")


def test_eps_in_wrong_units(tmp_path):
    text = GOOD.replace('eps: [0.1, "8/255"]', "eps: [8]")
    check_error(tmp_path, text, "evaluation.threats[0].eps[0]", "8/255")


def test_missing_dataset(tmp_path):
    text = GOOD.replace("dataset:\n  name: digits\n", "")
    check_error(tmp_path, text, "dataset", "required")


def test_unknown_dataset_and_model(tmp_path):
    text = GOOD.replace("name: digits", "name: mnits").replace("name: lenet5", "name: lenet6")
    msg = check_error(tmp_path, text, "unknown dataset 'mnits'", "unknown model 'lenet6'")
    assert "mnist" in msg and "lenet5" in msg


def test_duplicate_names(tmp_path):
    data = yaml.safe_load(GOOD)
    data["defenses"].append(dict(data["defenses"][0]))
    with pytest.raises(ConfigError, match="duplicate defense name 'sap'"):
        parse_config(data)


def test_base_must_exist(tmp_path):
    data = yaml.safe_load(GOOD)
    data["defenses"][0]["base"] = "nothere"
    with pytest.raises(ConfigError, match="'nothere' is not 'base' or the name of another defense"):
        parse_config(data)


def test_unknown_attack(tmp_path):
    text = GOOD.replace("attack: fgsm", "attack: fgsmm")
    check_error(tmp_path, text, "evaluation.paper[0].attack", "pgd")


def test_bad_training_key(tmp_path):
    text = GOOD.replace("  epochs: 1", "  epoch: 1")
    check_error(tmp_path, text, "training.epoch")


def test_not_yaml(tmp_path):
    check_error(tmp_path, "name: [unclosed", "not valid YAML")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_shipped_configs_are_valid():
    from robustcompress.experiments.api import list_configs

    shipped = list_configs()
    assert "demo" in shipped
    for name, path in shipped.items():
        if name.startswith("foreign-"):  # its weights are made by an example script first
            continue
        load_config(path)  # raises on any problem


def test_shipped_foreign_model_config_is_valid_once_its_weights_exist(tmp_path, monkeypatch):
    import torch

    from robustcompress.experiments.api import list_configs

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)  # the config's paths fall back to the repository root
    text = list_configs()["foreign-resnet18-cifar10-cpu"].read_text()
    weights = "examples/foreign_model/my_resnet18.pt"
    assert weights in text
    sys_path = str(repo / "examples" / "foreign_model")
    monkeypatch.syspath_prepend(sys_path)
    from my_resnet import resnet18

    torch.save(resnet18(width=16).state_dict(), tmp_path / "w.pt")
    cfg_path = tmp_path / "foreign.yaml"
    cfg_path.write_text(text.replace(weights, str(tmp_path / "w.pt")))
    cfg = load_config(cfg_path)
    assert cfg.model.factory.startswith(str(repo / "examples" / "foreign_model" / "my_resnet.py"))


def test_transfer_surrogate_must_be_a_variant(tmp_path):
    text = GOOD.replace("    - attack: fgsm", "    - attack: transfer\n      surrogate: nothere")
    check_error(tmp_path, text, "evaluation.paper[0].surrogate", "'nothere'", "independent")


def test_transfer_without_any_surrogate_and_bad_transfer_from_are_reported(tmp_path):
    text = GOOD.replace("    - attack: fgsm", "    - attack: transfer").replace(
        "evaluation:\n", "evaluation:\n  transfer_from: null\n")
    check_error(tmp_path, text, "evaluation.paper[0]", "needs a surrogate", "transfer_from")
    text = GOOD.replace("evaluation:\n", "evaluation:\n  transfer_from: nothere\n")
    check_error(tmp_path, text, "evaluation.transfer_from", "'nothere'", "null")


def test_adaptive_and_main_eps_match_threat_eps_however_written(tmp_path):
    from robustcompress.experiments.config import eps_label, eps_matches

    assert eps_label(2, 255) == "2/255" and eps_label(2.0, 255) == "2.0/255"
    for wanted in ("2/255", 2, 2 / 255, "0.00784314"):
        assert eps_matches(wanted, "2.0/255"), wanted
    assert eps_matches(0.1, "0.1") and eps_matches("8/255", "8/255")
    assert not eps_matches("4/255", "2.0/255") and not eps_matches(0.3, "0.1")
    assert not eps_matches("nonsense", "0.1")
    # an adaptive_eps that names no threat eps used to skip the adaptive evaluation silently
    text = GOOD.replace("evaluation:\n", "evaluation:\n  adaptive_eps: ['4/255']\n")
    check_error(tmp_path, text, "evaluation.adaptive_eps", "'4/255'", "0.1, 8/255")
    load_config(write(tmp_path, GOOD.replace("evaluation:\n", "evaluation:\n  adaptive_eps: [0.1, 0.0313725]\n")))


def test_paper_comparison_shows_percent_and_finds_scaled_eps():
    # config eps 1 on a 0-255 threat is labelled "1.0/255" in the results; paper values are
    # fractions (0.663) shown in percent like ours
    from robustcompress.attacks.checks import EXPLANATIONS
    from robustcompress.experiments.report import FLAG_HELP, ReportData, paper_comparison

    row = {"variant": "base", "attack": "fgsm", "protocol": "paper", "eps_label": "1.0/255",
           "eps": 1 / 255, "robust_acc": 0.5, "clean_acc": None, "extra": {}}
    data = ReportData(title="t", variants=["base"], results=[row], metrics={},
                      paper_reference=[{"variant": "base", "attack": "fgsm", "eps": 1, "value": 0.663,
                                        "source": "Sec. 4"}])
    _, rows = paper_comparison(data)
    assert rows == [["base", "fgsm", "1", "66.3", "50.0", "Sec. 4"]]
    assert FLAG_HELP is EXPLANATIONS and "blackbox_stronger" in FLAG_HELP


def test_config_list_describes_every_shipped_config_and_pairs_cifar10_full_with_a_cpu_twin(capsys):
    """`config list`: one aligned line per shipped config from its own `description:`; each of the
    five papers ships a CIFAR-10 (or, for audio, Speech Commands) full config and its CPU twin."""
    import yaml as _yaml

    from robustcompress.cli import main as cli_main
    from robustcompress.experiments.api import list_configs

    shipped = list_configs()
    for name, path in shipped.items():
        assert _yaml.safe_load(path.read_text()).get("description"), f"{name} has no description"
    assert cli_main(["config", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(shipped)
    width = max(map(len, shipped))
    for line in lines:  # names padded to the longest one, then two spaces, then the description
        assert line[:width].rstrip() in shipped and line[width:width + 2] == "  " and line[width + 2] != " "
    for paper, model in (("tensorization", "resnet18"), ("sap", "resnet20"), ("pruning", "vgg_sparse"),
                         ("quantization", "wrn"), ("anp", "vgg16")):
        for scale in ("full", "cpu"):
            assert f"{paper}-cifar10-{model}-{scale}" in shipped, (paper, scale)

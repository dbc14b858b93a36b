"""Bring your own model: factories, weights, declared input, checkpoints, tensors data, config, CLI."""

import json
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from robustcompress.data.info import DatasetInfo
from robustcompress.errors import ConfigError, DataError, UserInputError
from robustcompress.models import build_foreign, build_from_spec, load_factory, load_weights, with_normalization

INFO = DatasetInfo(name="toy", shape=(3, 4, 4), num_classes=5, class_names=tuple("abcde"))
NETS = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes=5, width=8):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        return self.fc(h.mean((2, 3)))


def net(num_classes=5, width=8):
    return Net(num_classes, width)


def not_a_module():
    return 42

NOT_CALLABLE = 3
"""


@pytest.fixture
def nets(tmp_path):
    (tmp_path / "toy_nets.py").write_text(NETS)
    return tmp_path


def _trained(nets, **kw):
    torch.manual_seed(0)
    m = load_factory("toy_nets.py:net", base_dir=nets)(**kw)
    m.bn.running_mean.uniform_(-1, 1)  # non-default buffers, so a missed buffer would show
    return m.eval()


def _x(n=6):
    return torch.rand(n, *INFO.shape, generator=torch.Generator().manual_seed(1))


def test_factory_from_file_and_from_module(nets, monkeypatch):
    f = load_factory("toy_nets.py:net", base_dir=nets)
    assert isinstance(f(), nn.Module)
    monkeypatch.syspath_prepend(str(nets))
    g = load_factory("toy_nets:net")  # a module on sys.path
    assert isinstance(g(width=4), nn.Module)
    assert load_factory("torch.nn:Identity")() is not None
    sys.modules.pop("toy_nets", None)


@pytest.mark.parametrize("spec, words", [
    ("no_colon", ["no ':function' part"]),
    ("a b:c", ["malformed"]),
    ("missing_module_xyz:f", ["importing 'missing_module_xyz' failed", "ModuleNotFoundError"]),
    ("nope.py:net", ["not found"]),
    ("toy_nets.py:nothere", ["has no attribute 'nothere'", "net"]),
    ("toy_nets.py:NOT_CALLABLE", ["is a int, not a function"]),
])
def test_bad_factories_are_one_user_error(nets, spec, words):
    with pytest.raises(UserInputError) as e:
        load_factory(spec, base_dir=nets)
    for w in words:
        assert w in str(e.value)


def test_factory_that_does_not_import_names_the_cause(tmp_path):
    (tmp_path / "broken.py").write_text("import torch\nraise RuntimeError('boom in user code')\n")
    with pytest.raises(UserInputError, match="RuntimeError: boom in user code"):
        load_factory("broken.py:f", base_dir=tmp_path)


def test_factory_returning_no_module(nets):
    with pytest.raises(UserInputError, match="returned a int, not a torch nn.Module"):
        build_foreign("toy_nets.py:not_a_module", INFO, bounds=(0, 1), base_dir=nets)


@pytest.mark.parametrize("fmt", ["safetensors", "pt", "nested", "dataparallel"])
def test_weights_round_trip_give_identical_outputs(nets, tmp_path, fmt):
    src = _trained(nets)
    state = src.state_dict()
    path = tmp_path / ("w.safetensors" if fmt == "safetensors" else "w.pth")
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif fmt == "pt":
        torch.save(state, path)
    elif fmt == "nested":
        torch.save({"epoch": 3, "state_dict": state, "optimizer": {"lr": 0.1}}, path)
    else:
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    dst = load_weights(load_factory("toy_nets.py:net", base_dir=nets)(), path).eval()
    x = _x()
    assert torch.equal(src(x), dst(x))


def test_bad_weight_files_are_refused(nets, tmp_path):
    model = load_factory("toy_nets.py:net", base_dir=nets)()
    torch.save(_trained(nets), tmp_path / "whole.pt")  # a pickled module, not a state dict
    with pytest.raises(DataError, match=r"not a plain state dict.*Net.*torch.save\(model.state_dict\(\), path\)"):
        load_weights(model, tmp_path / "whole.pt")
    torch.save(_trained(nets, num_classes=7, width=4).state_dict(), tmp_path / "other.pt")
    with pytest.raises(DataError) as e:
        load_weights(model, tmp_path / "other.pt")
    assert "shape mismatches (file vs model) (8): conv.weight (4, 3, 3, 3) vs (8, 3, 3, 3)" in str(e.value)
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "keys.pt")
    with pytest.raises(DataError, match="missing keys.*unexpected keys \\(1\\): foo.weight"):
        load_weights(model, tmp_path / "keys.pt")
    bad = _trained(nets).state_dict()
    bad["conv.weight"][0, 0, 0, 0] = float("nan")
    torch.save(bad, tmp_path / "nan.pt")
    with pytest.raises(DataError, match="NaN or inf in 1 tensor\\(s\\): conv.weight"):
        load_weights(model, tmp_path / "nan.pt")
    (tmp_path / "w.ckpt").write_bytes(b"x")
    with pytest.raises(UserInputError, match="unknown file type '.ckpt'"):
        load_weights(model, tmp_path / "w.ckpt")
    with pytest.raises(DataError, match="not found"):
        load_weights(model, tmp_path / "absent.pt")


def test_with_normalization_equals_manual(nets):
    m = _trained(nets)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    wrapped = with_normalization(m, mean, std).eval()
    x = _x()
    manual = m((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    assert torch.allclose(wrapped(x), manual, atol=1e-6)
    assert wrapped.input_bounds == (0.0, 1.0)
    assert set(wrapped.state_dict()) == {f"model.{k}" for k in m.state_dict()}


def test_declared_input_is_required_and_must_be_the_datasets(nets):
    with pytest.raises(UserInputError, match="never guesses.*bounds: \\[0, 1\\]"):
        build_foreign("toy_nets.py:net", INFO, base_dir=nets)
    with pytest.raises(UserInputError, match="wrong scale.*std 0.00392"):
        build_foreign("toy_nets.py:net", INFO, bounds=(0, 255), base_dir=nets)
    with pytest.raises(UserInputError, match="both mean and std"):
        build_foreign("toy_nets.py:net", INFO, bounds=(0, 1), mean=[0.5], base_dir=nets)


def test_wrong_classes_and_wrong_input_shape(nets):
    with pytest.raises(UserInputError, match=r"outputs \(2, 7\).*\(2, 5\).*num_classes"):
        build_foreign("toy_nets.py:net", INFO, kwargs={"num_classes": 7}, bounds=(0, 1), base_dir=nets)
    gray = DatasetInfo(name="gray", shape=(1, 4, 4), num_classes=5, class_names=tuple("abcde"))
    with pytest.raises(UserInputError, match=r"does not accept gray inputs of shape \[B, 1, 4, 4\]"):
        build_foreign("toy_nets.py:net", gray, bounds=(0, 1), base_dir=nets)


def test_checkpoint_of_a_foreign_model_rebuilds_identically(nets, tmp_path):
    from robustcompress.training import load_checkpoint, save_checkpoint

    torch.save(_trained(nets).state_dict(), tmp_path / "w.pt")
    model = build_foreign("toy_nets.py:net", INFO, weights="w.pt", mean=[0.5, 0.5, 0.5],
                          std=[0.25, 0.25, 0.25], bounds=(0, 1), base_dir=nets)
    spec = model.robustcompress_spec
    assert spec["factory"].endswith("toy_nets.py:net") and spec["input"]["bounds"] == [0.0, 1.0]
    assert "weights" not in json.dumps(spec)
    save_checkpoint(model.eval(), tmp_path / "ck" / "model")
    back = load_checkpoint(tmp_path / "ck")
    x = _x()
    assert torch.equal(model(x), back(x))
    assert type(build_from_spec(spec)).__name__ == "Normalized"


def _arrays(rng, n=30, lo=0.0, hi=1.0):
    x = rng.uniform(lo, hi, (n, 3, 4, 4)).astype(np.float32)
    return {"x_train": x, "y_train": np.arange(n) % 5, "x_test": x[:10].copy(), "y_test": np.arange(10) % 5}


def test_tensors_dataset_from_npz_and_safetensors(tmp_path):
    from safetensors.numpy import save_file as save_np

    from robustcompress.data import load_dataset

    a = _arrays(np.random.default_rng(0))
    np.savez(tmp_path / "d.npz", **a)
    save_np({**a, "bounds": np.array([0.0, 1.0])}, str(tmp_path / "d.safetensors"))
    d1 = load_dataset("tensors", tmp_path / "d.npz", bounds=(0, 1))
    d2 = load_dataset("tensors", tmp_path / "d.safetensors")  # bounds stored in the file
    assert d1.info.shape == (3, 4, 4) and d1.info.num_classes == 5 and d1.info.modality == "image"
    assert torch.equal(d1.train.x, d2.train.x) and torch.equal(d1.test.y, d2.test.y)
    assert load_dataset("tensors", tmp_path / "d.npz", bounds=(0, 1), num_classes=8).info.num_classes == 8


@pytest.mark.parametrize("change, words", [
    (lambda a: a.pop("y_test"), "has no y_test"),
    (lambda a: a.update(x_train=(a["x_train"] * 255).astype(np.uint8)), "dtype uint8"),
    (lambda a: a["x_train"].__setitem__((0, 0, 0, 0), np.nan), "NaN/inf"),
    (lambda a: a["x_test"].__setitem__((0, 0, 0, 0), 2.0), "outside the declared bounds"),
    (lambda a: a.update(y_train=a["y_train"][:-1]), "same non-zero number"),
    (lambda a: a["y_test"].__setitem__(0, 9), "out of range for num_classes=5"),
    (lambda a: a.update(y_train=a["y_train"].astype(np.float32)), "integer array"),
])
def test_tensors_dataset_refuses_bad_files(tmp_path, change, words):
    from robustcompress.data import load_dataset

    a = _arrays(np.random.default_rng(0))
    change(a)
    np.savez(tmp_path / "d.npz", **a)
    with pytest.raises(UserInputError, match=words.replace("(", "\\(")):
        load_dataset("tensors", tmp_path / "d.npz", bounds=(0, 1), num_classes=5)


def test_tensors_dataset_needs_declared_bounds_and_no_pickle(tmp_path):
    from robustcompress.data import load_dataset

    np.savez(tmp_path / "d.npz", **_arrays(np.random.default_rng(0)))
    with pytest.raises(UserInputError, match="never guesses"):
        load_dataset("tensors", tmp_path / "d.npz")
    np.savez(tmp_path / "p.npz", x_train=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="Python objects"):
        load_dataset("tensors", tmp_path / "p.npz", bounds=(0, 1))


CONFIG = """\
name: byom
dataset: {{name: tensors, path: d.npz, bounds: [0, 1]}}
model:
  factory: {factory}
  weights: w.pt
  input: {{bounds: [0, 1], mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}}
evaluation: {{n_samples: 5, adaptive: false, threats: [{{norm: linf, eps: [0.03]}}], paper: [{{attack: fgsm}}]}}
metrics: {{compression: false, calibration: false, spectral: false}}
report: {{html: false}}
"""


def _config_dir(tmp_path, nets_src=NETS, factory="toy_nets.py:net"):
    (tmp_path / "toy_nets.py").write_text(nets_src)
    np.savez(tmp_path / "d.npz", **_arrays(np.random.default_rng(0)))
    torch.manual_seed(0)
    torch.save(load_factory("toy_nets.py:net", base_dir=tmp_path)().state_dict(), tmp_path / "w.pt")
    (tmp_path / "c.yaml").write_text(CONFIG.format(factory=factory))
    return tmp_path / "c.yaml"


def test_config_resolves_paths_and_reports_a_bad_factory(tmp_path, monkeypatch):
    from robustcompress.experiments import load_config

    path = _config_dir(tmp_path)
    monkeypatch.chdir("/")  # paths start at the config's folder, not the current one
    cfg = load_config(path)
    assert cfg.model.weights == str(tmp_path / "w.pt") and cfg.dataset.path == str(tmp_path / "d.npz")
    path.write_text(CONFIG.format(factory="nets_typo.py:net"))
    with pytest.raises(ConfigError, match=r"\(line 4\): model.factory: .*nets_typo.py.* not found"):
        load_config(path)
    path.write_text(CONFIG.format(factory="toy_nets.py:net").replace("bounds: [0, 1], mean", "bounds: [0, 255], mean"))
    with pytest.raises(ConfigError, match=r"model.input.bounds: .*not the dataset's box"):
        load_config(path)
    path.write_text(CONFIG.format(factory="toy_nets.py:net").replace("  input:", "  name: lenet5\n  input:"))
    with pytest.raises(ConfigError, match="either name .* or factory"):
        load_config(path)


def test_runner_uses_a_factory_model_with_weights_as_the_base(tmp_path):
    from robustcompress.experiments import load_config
    from robustcompress.experiments.runner import Runner

    cfg = load_config(_config_dir(tmp_path))
    cfg = cfg.model_copy(update={"output_dir": str(tmp_path / "run"), "device": "cpu"})
    runner = Runner(cfg, progress=False)
    from robustcompress.data import load_dataset

    runner.dataset = load_dataset("tensors", cfg.dataset.path, **cfg.dataset.loader_options())
    base = runner.train_base()
    ref = load_weights(load_factory("toy_nets.py:net", base_dir=tmp_path)(), tmp_path / "w.pt").eval()
    x = runner.dataset.test.x[:4]
    assert torch.allclose(base(x), ref((x - 0.5) / 0.25), atol=1e-6) and runner.units_run == 0


def test_import_model_cli_writes_a_loadable_checkpoint(tmp_path, capsys):
    from robustcompress.cli import main
    from robustcompress.training import load_checkpoint

    (tmp_path / "toy_nets.py").write_text(NETS)
    np.savez(tmp_path / "d.npz", **_arrays(np.random.default_rng(0)))
    torch.manual_seed(0)
    torch.save(load_factory("toy_nets.py:net", base_dir=tmp_path)().state_dict(), tmp_path / "w.pt")
    args = ["import-model", "--factory", str(tmp_path / "toy_nets.py") + ":net",
            "--weights", str(tmp_path / "w.pt"), "--dataset", "tensors", "--data-dir",
            str(tmp_path / "d.npz"), "--out", str(tmp_path / "run")]
    assert main(args) == 2
    assert "never guesses" in capsys.readouterr().err
    assert main(args + ["--bounds", "0", "1", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "clean accuracy" in out
    model = load_checkpoint(tmp_path / "run")
    assert type(model).__name__ == "Normalized"
    assert json.loads((tmp_path / "run" / "model.json").read_text())["spec"]["input"]["std"] == [0.25] * 3


def test_defenses_that_rebuild_the_architecture_call_the_factory_again(nets):
    from robustcompress.defenses.adversarial_training import _reinit
    from robustcompress.defenses.independent import fresh_copy

    model = build_foreign("toy_nets.py:net", INFO, mean=[0.5], std=[0.25], bounds=(0, 1), base_dir=nets)
    for fresh in (fresh_copy(model, INFO, seed=3), _reinit(model, seed=3)):
        assert type(fresh).__name__ == "Normalized" and fresh.robustcompress_spec == model.robustcompress_spec
        assert not torch.equal(fresh.model.conv.weight, model.model.conv.weight)

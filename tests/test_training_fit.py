"""fit(): learning, determinism, exact resume, checkpoints, objectives, bad input."""

import json
import traceback

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustcompress.data.info import Dataset, DatasetInfo, Split
from robustcompress.errors import ConfigError, UserInputError
from robustcompress.models import build_model
from robustcompress.training import (
    TrainConfig,
    confusion_matrix,
    confusion_summary,
    evaluate_accuracy,
    fit,
    load_checkpoint,
    lr_factor,
    save_checkpoint,
)


@pytest.fixture(scope="module")
def digits():
    """sklearn's 8x8 digits, deterministic 1437/360 split (independent of the data loaders)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.tensor(d.target)
    p = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[p], y[p]
    info = DatasetInfo("digits", (1, 8, 8), 10, tuple("0123456789"), mean=(float(x.mean()),),
                       std=(float(x.std()),))
    return Dataset(info, Split(x[360:], y[360:]), Split(x[:360], y[:360]))


def small(ds, n=256):
    return Dataset(ds.info, ds.train.subset(n), ds.test.subset(100))


def model_for(ds, name="lenet5", seed=0):
    torch.manual_seed(seed)
    return build_model(name, ds.info)


def test_lenet5_learns_digits(digits):
    m = model_for(digits)
    res = fit(m, digits, TrainConfig(epochs=6, batch_size=64), progress=False)
    assert res.metrics["test_acc"] >= 0.95
    assert len(res.history) == 6 and res.history[-1]["loss"] < res.history[0]["loss"]
    assert res.history[0]["train_acc"] < res.history[-1]["train_acc"]


def test_same_seed_same_weights_other_seed_other_order(digits):
    ds = small(digits)
    cfg = TrainConfig(epochs=2, batch_size=32, optimizer="sgd", lr=0.05)
    a = fit(model_for(ds), ds, cfg, progress=False).model.state_dict()
    b = fit(model_for(ds), ds, cfg, progress=False).model.state_dict()
    c = fit(model_for(ds), ds, cfg.model_copy(update={"seed": 1}), progress=False).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_fit_leaves_the_global_rng_alone(digits):
    ds = small(digits, 64)
    m = model_for(ds)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fit(m, ds, TrainConfig(epochs=1, batch_size=32), progress=False)
    assert torch.equal(torch.rand(3), expected)


class CrashAt:
    """Cross-entropy that raises at the n-th call (simulates a crash mid-epoch)."""

    def __init__(self, n):
        self.n, self.calls = n, 0

    def __call__(self, model, x, y):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt("simulated crash")
        return F.cross_entropy(model(x), y)


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_resume_after_crash_equals_uninterrupted_run(digits, tmp_path, opt):
    ds = small(digits)
    cfg = TrainConfig(epochs=2, batch_size=32, optimizer=opt, lr=0.01, schedule="step",
                      step_size=1, gamma=0.5, hflip=True)
    ref = fit(model_for(ds), ds, cfg, progress=False)
    batches = len(ds.train) // 32
    with pytest.raises(KeyboardInterrupt):
        fit(model_for(ds), ds, cfg, checkpoint_dir=tmp_path, progress=False,
            objective=CrashAt(batches + 3))  # crash inside epoch 2
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["epoch"] == 1
    other_init = model_for(ds, seed=7)  # resume must overwrite the initial weights
    res = fit(other_init, ds, cfg, checkpoint_dir=tmp_path, progress=False)
    a, b = ref.model.state_dict(), res.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["epoch"] for h in res.history] == [1, 2]
    assert res.history[1]["lr"] == pytest.approx(0.005)
    assert len(list(tmp_path.glob("state-e*.safetensors"))) == 1
    # a finished run is not retrained; a different config is refused
    again = fit(model_for(ds, seed=3), ds, cfg, checkpoint_dir=tmp_path, progress=False)
    assert all(torch.equal(a[k], again.model.state_dict()[k]) for k in a)
    with pytest.raises(ConfigError, match="different training config"):
        fit(model_for(ds), ds, cfg.model_copy(update={"lr": 0.1}), checkpoint_dir=tmp_path,
            progress=False)


def test_checkpoint_round_trip_reproduces_outputs(digits, tmp_path):
    ds = small(digits, 128)
    for name in ["lenet5", "resnet20"]:
        m = fit(model_for(ds, name), ds, TrainConfig(epochs=1, batch_size=32), progress=False).model
        m.eval()
        stem = save_checkpoint(m, tmp_path / name, {"metrics": {"test_acc": 0.5}})
        back = load_checkpoint(stem)
        x = ds.test.x[:16]
        assert torch.equal(m(x), back(x))
        assert back.robustcompress_meta["metrics"]["test_acc"] == 0.5
        assert not list(tmp_path.glob("*.pkl")) and (tmp_path / f"{name}.json").is_file()
    # fit's run folder is loadable directly
    fit(model_for(ds), ds, TrainConfig(epochs=1), checkpoint_dir=tmp_path / "run", progress=False)
    assert load_checkpoint(tmp_path / "run").robustcompress_meta["epoch"] == 1


def test_checkpoint_errors(tmp_path, digits):
    with pytest.raises(UserInputError, match="not found"):
        load_checkpoint(tmp_path / "missing")
    with pytest.raises(UserInputError, match="build_model"):
        save_checkpoint(nn.Linear(2, 2), tmp_path / "x")
    m = model_for(digits)
    stem = save_checkpoint(m, tmp_path / "m")
    stem.with_suffix(".safetensors").write_bytes(b"garbage")
    with pytest.raises(UserInputError, match="unreadable"):
        load_checkpoint(stem)


def test_nan_inputs_and_nan_loss_are_clear_errors(digits):
    ds = small(digits, 64)
    x = ds.train.x.clone()
    x[5, 0, 0, 0] = float("nan")
    bad = Dataset(ds.info, Split(x, ds.train.y), ds.test)
    with pytest.raises(UserInputError, match="NaN"):
        fit(model_for(ds), bad, TrainConfig(epochs=1), progress=False)
    with pytest.raises(RuntimeError, match="learning rate"):
        fit(model_for(ds), ds, TrainConfig(epochs=1), progress=False,
            objective=lambda m, x, y: m(x).sum() * float("nan"))
    with pytest.raises(UserInputError, match="expects"):
        fit(build_model("lenet5", DatasetInfo("mnist", (1, 28, 28), 10, tuple("0123456789"))), ds,
            TrainConfig(epochs=1), progress=False)


class TwoGroups:
    """Two losses on two disjoint parameter groups, one SGD and one Adam optimizer."""

    def __init__(self, lr_b):
        self.lr_b = lr_b

    def param_groups(self, model):
        return {"a": {"params": list(model.fc2.parameters()), "optimizer": "sgd", "lr": 0.1},
                "b": {"params": list(model.fc1.parameters()), "optimizer": "adam",
                      "lr": self.lr_b}}

    def train_mode(self, model):
        model.eval()

    def __call__(self, model, x, y):
        out = model(x)
        return {"a": F.cross_entropy(out, y), "b": out.pow(2).mean(), "extra": out.mean()}


def test_one_optimizer_per_group_each_on_its_own_loss(digits):
    ds = small(digits, 64)
    m = model_for(ds)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    res = fit(m, ds, TrainConfig(epochs=1, batch_size=32), objective=TwoGroups(1e-3),
              progress=False)
    after = m.state_dict()
    assert not torch.equal(before["fc2.weight"], after["fc2.weight"])
    assert not torch.equal(before["fc1.weight"], after["fc1.weight"])
    assert torch.equal(before["conv1.weight"], after["conv1.weight"])  # in no group
    assert {"loss_a", "loss_b", "loss_extra"} <= set(res.history[0])
    # group b's update follows loss b only: with loss b = mean(out^2) its gradient is not CE's
    m2 = model_for(ds)
    fit(m2, ds, TrainConfig(epochs=1, batch_size=32), objective=TwoGroups(1e-12), progress=False)
    assert torch.allclose(m2.fc1.weight, before["fc1.weight"], atol=1e-8)


def test_dict_loss_without_groups_is_refused(digits):
    ds = small(digits, 64)
    with pytest.raises(ConfigError, match="param_groups"):
        fit(model_for(ds), ds, TrainConfig(epochs=1), progress=False,
            objective=lambda m, x, y: {"x": F.cross_entropy(m(x), y)})


def test_lr_schedules():
    c = TrainConfig(epochs=10, schedule="multistep", milestones=[3, 6], gamma=0.1)
    assert [lr_factor(c, e) for e in (0, 2, 3, 5, 6)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    c = TrainConfig(epochs=4, schedule="cosine")
    assert [lr_factor(c, e) for e in range(4)] == pytest.approx([1, 0.853553, 0.5, 0.146447],
                                                                abs=1e-5)
    with pytest.raises(ValueError):
        TrainConfig(schedule="multistep")
    with pytest.raises(ValueError):
        TrainConfig(epochs=1, bogus=1)
    assert TrainConfig().flip_enabled("cifar10") and not TrainConfig().flip_enabled("mnist")


class Coin(nn.Module):
    """Stochastic toy model: logits favour class 0 with probability p, else class 1."""

    stochastic = True
    granularity = "batch"

    def __init__(self, p):
        super().__init__()
        self.p, self.generator = p, None
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        heads = torch.rand((), generator=self.generator) < self.p
        logits = torch.tensor([3.0, 0.0]) if heads else torch.tensor([0.0, 1.0])
        return logits.expand(x.shape[0], 2) + 0 * self.w


def test_stochastic_models_are_judged_by_mc_average():
    # E[softmax] favours class 0 when p = 0.6: softmax([3,0])[0] = .95, softmax([0,1])[0] = .27
    split = Split(torch.zeros(50, 1), torch.zeros(50, dtype=torch.long))
    g = torch.Generator().manual_seed(0)
    assert evaluate_accuracy(Coin(0.6), split, mc_samples=400, generator=g) == 1.0
    assert evaluate_accuracy(Coin(0.3), split, mc_samples=400, generator=g) == 0.0


def test_confusion_summary_oracle():
    cm = torch.tensor([[5, 1, 0], [3, 7, 0], [0, 0, 4]])
    s = confusion_summary(cm, ["a", "b", "c"], top=2)
    assert s["accuracy"] == pytest.approx(16 / 20)
    assert s["per_class"] == pytest.approx({"a": 5 / 6, "b": 0.7, "c": 1.0})
    assert s["most_confused"] == [{"true": "b", "predicted": "a", "count": 3},
                                  {"true": "a", "predicted": "b", "count": 1}]


def test_confusion_matrix_agrees_with_accuracy(digits):
    ds = small(digits, 128)
    m = fit(model_for(ds), ds, TrainConfig(epochs=2, batch_size=32), progress=False).model
    cm = confusion_matrix(m, ds.test, 10)
    assert int(cm.sum()) == len(ds.test)
    assert float(cm.diagonal().sum()) / len(ds.test) == pytest.approx(
        evaluate_accuracy(m, ds.test))


@pytest.mark.parametrize("defense", ["tensorization", "prune"])
def test_checkpoint_replays_recorded_defenses(digits, tmp_path, defense):
    from robustcompress.defenses import get_defense
    from robustcompress.nn import freeze_noise

    spec = get_defense(defense)
    params = spec.Params()
    m = spec.structure(model_for(digits), params)
    m.robustcompress_defenses = [{"name": defense, "params": params.model_dump()}]
    with torch.no_grad():  # make the state differ from a fresh structure()
        for p in m.parameters():
            p.add_(0.01 * torch.randn_like(p))
    m.eval()
    back = load_checkpoint(save_checkpoint(m, tmp_path / "d"))
    assert back.robustcompress_defenses == m.robustcompress_defenses
    assert type(back.conv2).__name__ == type(m.conv2).__name__ != "Conv2d"
    x = digits.test.x[:8]
    with freeze_noise(m), freeze_noise(back):
        assert torch.allclose(m(x), back(x), atol=1e-6)


class _HostReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts reads of tensor values by the host (item/bool/float/int go through
    ``_local_scalar_dense``); ``tolist`` is counted by a patch (it bypasses dispatch). Adam's
    reads of its step counters are not counted: those live on the CPU even when training on a
    GPU (no synchronisation)."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and not any(
                "torch/optim/" in f.filename for f in traceback.extract_stack(limit=12)):
            self.n += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("objective", [None, TwoGroups(1e-3)], ids=["one loss", "two groups"])
def test_a_training_step_reads_the_device_once_and_checks_the_loss_before_stepping(
        digits, monkeypatch, objective):
    import importlib

    fit_module = importlib.import_module("robustcompress.training.fit")  # the package exports fit()
    ds, reads, original = small(digits, 96), [], fit_module._step

    def counted(*args, **kw):
        mode = _HostReads()
        tolist = torch.Tensor.tolist

        def counting_tolist(t):
            mode.n += 1
            return tolist(t)
        monkeypatch.setattr(torch.Tensor, "tolist", counting_tolist)
        try:
            with mode:
                out = original(*args, **kw)
        finally:
            monkeypatch.setattr(torch.Tensor, "tolist", tolist)
        reads.append(mode.n)
        return out
    monkeypatch.setattr(fit_module, "_step", counted)
    fit(model_for(ds), ds, TrainConfig(epochs=1, batch_size=32), objective=objective, progress=False)
    assert reads == [1, 1, 1]  # losses and the correct count together, after the forward pass
    monkeypatch.setattr(fit_module, "_step", original)
    m = model_for(ds)
    calls = []

    def diverge(model, x, y):
        calls.append(1)
        return F.cross_entropy(model(x), y) * (float("nan") if len(calls) == 2 else 1.0)
    with pytest.raises(RuntimeError, match="became nan"):
        fit(m, ds, TrainConfig(epochs=1, batch_size=32), objective=diverge, progress=False)
    ref = model_for(ds)
    fit(ref, ds, TrainConfig(epochs=1, batch_size=32, max_batches_per_epoch=1), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), ref.state_dict().values()))

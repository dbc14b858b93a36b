"""Device-resident training data (TrainConfig.data_on_device) and the once-per-split finite check.

On CPU, ``data_on_device=True`` runs the resident code path (split placed once, the epoch's
permutation moved to the split's device, batches gathered there); it must give the weights and
history of host-resident training bit for bit, with and without crops/flips, and across a crash
and resume that switches the option. The CUDA tests compare the two paths on a GPU.
"""

import importlib
import json

import pytest
import torch
from torch import nn

from robustcompress.data.info import Dataset, DatasetInfo, Split
from robustcompress.errors import ConfigError, UserInputError
from robustcompress.training import TrainConfig, ddp, fit, resident
from robustcompress.training.augment import Augment
from test_training_fit import CrashAt

fit_module = importlib.import_module("robustcompress.training.fit")
evaluate_module = importlib.import_module("robustcompress.training.evaluate")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible)")
TIMING = ("seconds", "train_seconds")


def _data(n=96):
    g = torch.Generator().manual_seed(5)
    x, y = torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)
    info = DatasetInfo("cifar10", (3, 8, 8), 10, tuple("abcdefghij"))
    return Dataset(info, Split(x, y), Split(x[:24].clone(), y[:24].clone()))


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


def _cfg(**kw):
    return TrainConfig(**{"epochs": 2, "batch_size": 32, "optimizer": "sgd", "lr": 0.05,
                          "hflip": False, **kw})


@pytest.fixture
def placements(monkeypatch):
    """The splits resident.to_device placed during the test (spy, behaviour unchanged)."""
    seen = []
    real = resident.to_device

    def spy(split, dev):
        seen.append(real(split, dev))
        return seen[-1]
    monkeypatch.setattr(resident, "to_device", spy)
    return seen


def _same(a, b):
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    rows = [[{k: v for k, v in row.items() if k not in TIMING} for row in r.history]
            for r in (a, b)]
    assert rows[0] == rows[1] and len(rows[0]) == len(a.history) > 0


@pytest.mark.parametrize("aug", [{}, {"hflip": True, "crop_padding": 2}])
def test_resident_training_is_bit_identical_to_host(placements, aug):
    data = _data()
    host = fit(_net(), data, _cfg(data_on_device=False, **aug), progress=False)
    assert placements == []
    res = fit(_net(), data, _cfg(data_on_device=True, **aug), progress=False)
    assert len(placements) == 1 and len(placements[0]) == len(data.train)
    _same(host, res)
    assert data.train.x.device.type == "cpu"  # the caller's dataset is not replaced


def test_auto_on_cpu_stays_on_the_host(placements):
    fit(_net(), _data(), _cfg(epochs=1), progress=False)  # data_on_device="auto", the default
    assert TrainConfig().data_on_device == "auto" and placements == []


def test_crash_and_resume_across_the_option_equals_the_uninterrupted_run(tmp_path, placements):
    data, aug = _data(), {"hflip": True, "crop_padding": 4}
    ref = fit(_net(), data, _cfg(data_on_device=False, **aug), progress=False)
    for first, second, d in [(True, False, tmp_path / "a"), (False, True, tmp_path / "b")]:
        with pytest.raises(KeyboardInterrupt):
            fit(_net(), data, _cfg(data_on_device=first, **aug), checkpoint_dir=d,
                progress=False, objective=CrashAt(5))  # 3 batches per epoch: inside epoch 2
        assert json.loads((d / "state.json").read_text())["epoch"] == 1
        res = fit(_net(7), data, _cfg(data_on_device=second, **aug), checkpoint_dir=d,
                  progress=False)  # an execution option: may differ when resuming
        _same(ref, res)
    assert len(placements) == 2


def test_the_placement_rule():
    gpu, cpu, mib = torch.device("cuda", 0), torch.device("cpu"), 2**20
    assert resident.wants_resident("auto", gpu, 50 * mib, 100 * mib)
    assert not resident.wants_resident("auto", gpu, 51 * mib, 100 * mib)  # AUTO_FRACTION = 0.5
    assert not resident.wants_resident("auto", cpu, 1, None)
    assert resident.wants_resident(True, cpu, 10**12, None)
    assert resident.wants_resident(True, gpu, 100 * mib, 100 * mib)
    assert not resident.wants_resident(False, gpu, 1, 100 * mib)
    with pytest.raises(ConfigError, match=r"takes 101 MiB but cuda:0 has 100 MiB free.*"
                                          r"--data-on-device auto\|false"):
        resident.wants_resident(True, gpu, 101 * mib, 100 * mib)
    data = _data()
    assert resident.split_bytes(data.train) == 96 * 3 * 8 * 8 * 4 + 96 * 8  # float32 + int64


def test_a_forced_split_too_big_for_the_device_is_one_clear_error(monkeypatch, placements):
    monkeypatch.setattr(resident, "free_bytes", lambda dev: 1000)
    data = _data()
    with pytest.raises(ConfigError) as e:
        fit(_net(), data, _cfg(data_on_device=True), progress=False)
    msg = str(e.value)
    assert all(w in msg for w in ("data_on_device=true", "training.data_on_device",
                                  "train_limit"))
    fit(_net(), data, _cfg(epochs=1), progress=False)  # auto on CPU: host, whatever is free
    assert placements == []


@pytest.fixture
def finite_scans(monkeypatch):
    """How often fit scanned the training inputs for NaN/inf."""
    calls = []
    real = evaluate_module.check_finite_inputs

    def spy(x, what="inputs"):
        if what == "training inputs":
            calls.append(x)
        return real(x, what)
    monkeypatch.setattr(evaluate_module, "check_finite_inputs", spy)
    return calls


def test_the_finite_check_runs_once_per_split_and_again_after_an_edit(finite_scans):
    data, cfg = _data(), _cfg(epochs=1, max_batches_per_epoch=1)
    fit(_net(), data, cfg, progress=False)
    fit(_net(), data, cfg, progress=False)
    assert len(finite_scans) == 1
    data.train.x[0, 0, 0, 0] = 0.5  # in place: the version counter moves
    fit(_net(), data, cfg, progress=False)
    assert len(finite_scans) == 2
    data.train.x[:4].mul_(1.0)  # through a view (it shares the counter)
    fit(_net(), data, cfg, progress=False)
    assert len(finite_scans) == 3
    other = Dataset(data.info, Split(data.train.x, data.train.y), data.test)  # another split
    fit(_net(), other, cfg, progress=False)
    data.train.x = data.train.x.clone()  # another tensor in the same split
    fit(_net(), data, cfg, progress=False)
    assert len(finite_scans) == 5
    with torch.inference_mode():  # no version counter: checked every time
        inf = Dataset(data.info, Split(data.train.x.clone(), data.train.y.clone()), data.test)
    fit(_net(), inf, cfg, progress=False)
    fit(_net(), inf, cfg, progress=False)
    assert len(finite_scans) == 7


def test_a_nan_still_raises_after_a_clean_fit():
    data, cfg = _data(), _cfg(epochs=1, max_batches_per_epoch=1)
    fit(_net(), data, cfg, progress=False)
    data.train.x[3, 1, 2, 2] = float("nan")
    with pytest.raises(UserInputError, match="training inputs contain NaN or inf values "
                                             r"\(1 samples affected\)"):
        fit(_net(), data, cfg, progress=False)
    fresh = _data()
    fresh.train.x[0, 0, 0, 0] = float("inf")
    with pytest.raises(UserInputError, match="NaN or inf"):
        fit(_net(), fresh, _cfg(data_on_device=True), progress=False)


def test_train_cli_data_on_device_reaches_the_config(tmp_path, capsys):
    from robustcompress.cli import main

    run = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--model", "lenet5", "--epochs", "1",
                 "--train-limit", "64", "--test-limit", "32", "--data-on-device", "true",
                 "--out", str(run), "--no-progress", "--device", "cpu"]) == 0
    assert json.loads((run / "model.json").read_text())["config"]["data_on_device"] is True
    assert main(["train", "--dataset", "digits", "--data-on-device", "maybe"]) == 2
    assert "data_on_device" in capsys.readouterr().err
    assert main(["train", "--help"]) == 0
    assert "--data-on-device" in capsys.readouterr().out


def test_config_values():
    assert TrainConfig(data_on_device="false").data_on_device is False
    assert TrainConfig(data_on_device=True).data_on_device is True
    with pytest.raises(ValueError):
        TrainConfig(data_on_device="gpu")


# ----------------------------------------------------------------------------- on a GPU

@cuda
def test_cuda_resident_epoch_equals_the_host_fed_epoch(placements):
    data, aug = _data(512), {"hflip": True, "crop_padding": 4, "epochs": 1, "batch_size": 64}
    was = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        host = fit(_net(), data, _cfg(data_on_device=False, **aug), device="cuda", progress=False)
        auto = fit(_net(), data, _cfg(**aug), device="cuda", progress=False)
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = was
    assert len(placements) == 1 and placements[0].x.device.type == "cuda"  # auto: resident
    _same(host, auto)


@cuda
def test_a_resident_batch_is_gathered_and_augmented_without_a_host_sync():
    dev = torch.device("cuda")
    host = _data().train
    train = resident.to_device(host, dev)
    aug = Augment(flip=True, crop_padding=4)
    perm = resident.epoch_order(torch.randperm(len(host)), train)

    def batch(t, idx):
        return fit_module._batch(t, idx, aug, torch.Generator().manual_seed(0), ddp.World(),
                                 dev, True)

    want = batch(host, perm.cpu()[:32])
    batch(train, perm[:32])  # warm-up: allocations, pinned buffers
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = batch(train, perm[:32])
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])

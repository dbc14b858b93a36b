"""Dataset loaders on the real files in ../shared/data (see its README for the oracles)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from robustcompress.data import list_datasets, load_dataset
from robustcompress.data import digits as digits_mod
from robustcompress.data import speech_commands as sc
from robustcompress.errors import UserInputError


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    """One fresh cache for the session: the first load of a dataset decodes, later ones hit."""
    return tmp_path_factory.mktemp("rc-cache")


@pytest.fixture(scope="session")
def mnist(data_root, cache):
    return load_dataset("mnist", data_root, cache_dir=cache)


@pytest.fixture(scope="session")
def speech(data_root, cache):
    return load_dataset("speech_commands", data_root, cache_dir=cache)


def test_registry_names_and_unknown_name():
    assert set(list_datasets()) >= {"digits", "mnist", "cifar10", "speech_commands", "fsdd",
                                    "imagefolder"}
    with pytest.raises(UserInputError, match="choose one of.*mnist"):
        load_dataset("mnsit")
    with pytest.raises(UserInputError, match="no option"):
        load_dataset("digits", colour=True)
    with pytest.raises(UserInputError, match="positive integer"):
        load_dataset("digits", train_limit=0)


def test_mnist_matches_readme(mnist):
    ds = mnist
    assert (len(ds.train), len(ds.test)) == (60000, 10000)
    assert ds.info.shape == (1, 28, 28) and ds.train.x.shape == (60000, 1, 28, 28)
    assert ds.train.x.dtype == torch.float32 and ds.train.y.dtype == torch.int64
    assert ds.train.y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert ds.test.y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert torch.bincount(ds.train.y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265,
                                                   5851, 5949]
    assert torch.bincount(ds.test.y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974,
                                                  1009]
    assert float(ds.train.x.min()) == 0.0 and float(ds.train.x.max()) == 1.0
    assert abs(float(ds.train.x.mean()) - 0.1307) < 5e-4
    assert ds.info.mean == (0.1307,) and abs(ds.info.std[0] - 0.3081) < 1e-3
    # 255 grey levels: every value is k/255
    assert torch.equal(torch.round(ds.test.x[:50] * 255) / 255, ds.test.x[:50])


def test_mnist_cache_hit_is_identical(mnist, data_root, cache):
    """The second load comes from the cache and equals the first (its speed is measured in
    bench/data_cache.py, not asserted here: wall-clock comparisons flake on a loaded machine)."""
    first = mnist
    again = load_dataset("mnist", data_root, cache_dir=cache)
    assert again.extra["cache_hit"] and not first.extra["cache_hit"]
    assert torch.equal(again.train.x, first.train.x) and torch.equal(again.test.y, first.test.y)
    assert again.info == first.info


def test_limits_are_stratified_prefixes(mnist, data_root, cache):
    full = mnist
    ds = load_dataset("mnist", data_root, cache_dir=cache, train_limit=1000, test_limit=95)
    assert len(ds.train) == 1000 and len(ds.test) == 95
    assert torch.bincount(ds.train.y, minlength=10).tolist() == [100] * 10
    counts = torch.bincount(ds.test.y, minlength=10)
    assert counts.max() - counts.min() <= 1 and counts[:5].tolist() == [10] * 5
    # the first k of every class, in stored order
    for c in range(10):
        idx = (full.train.y == c).nonzero().flatten()[:100]
        assert torch.equal(ds.train.x[ds.train.y == c], full.train.x[idx])


def test_digits_split_is_fixed_and_stratified():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert (len(a.train), len(a.test)) == (1437, 360)
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.train.y, b.train.y)
    assert a.info.shape == (1, 8, 8) and float(a.train.x.max()) == 1.0 and float(a.train.x.min()) == 0
    from sklearn.datasets import load_digits

    tr, te = digits_mod.split_indices(np.asarray(load_digits().target))
    assert not set(tr) & set(te) and len(tr) + len(te) == 1797
    frac = torch.bincount(a.test.y, minlength=10).float() / (torch.bincount(a.train.y, minlength=10)
                                                            + torch.bincount(a.test.y, minlength=10))
    assert torch.all((frac - 360 / 1797).abs() < 0.01)  # stratified: each class ~20% in test


def test_fsdd_split_by_index(data_root, cache):
    ds = load_dataset("fsdd", data_root, cache_dir=cache)
    assert (len(ds.train), len(ds.test)) == (2700, 300)
    assert ds.info.shape == (1, 8000) and ds.info.sample_rate == 8000 and ds.info.bounds == (-1.0, 1.0)
    assert set(ds.extra["indices"]["test"].tolist()) == set(range(5))
    assert set(ds.extra["indices"]["train"].tolist()) == set(range(5, 50))
    assert torch.bincount(ds.test.y).tolist() == [30] * 10
    assert float(ds.train.x.abs().max()) <= 1.0
    # padded with zeros at the end: short clips end in exact zeros
    assert (ds.train.x[:, 0, -1] == 0).float().mean() > 0.9


def test_speech_commands_split_is_speaker_disjoint_and_deterministic(speech):
    ds = speech
    assert ds.info.class_names[-2:] == ("_unknown_", "_silence_") and ds.info.num_classes == 12
    assert ds.info.shape == (1, 16000) and ds.info.sample_rate == 16000
    assert len(ds.train) + len(ds.test) + len(ds.extra.get("val", [])) == 3000
    spk = ds.extra["speakers"]
    assert not set(spk["train"]) & set(spk["test"])
    assert ds.extra["split_rule"] == "resplit"
    # recomputing the pure split rule from the recorded speakers gives the same assignment
    assert all(sc.resplit_set(s) == "train" for s in spk["train"])
    assert all(sc.resplit_set(s) == "test" for s in spk["test"])
    assert 0.7 < len(ds.train) / 3000 < 0.9
    assert torch.bincount(ds.test.y, minlength=12).min() > 0
    assert float(ds.train.x.abs().max()) <= 1.0


def test_official_rule_reproduces_the_official_test_list(speech):
    """The shared subset *is* the official test set: TF's which_set must call every word clip test."""
    speakers = [s for s in np.concatenate([speech.extra["speakers"][k] for k in ("train", "test")])
                if "_silence_" not in s]
    assert len(speakers) == 2750
    assert all(sc.which_set(s) == "test" for s in speakers)
    assert sc.speaker_of("_unknown_/backward_0c540988_nohash_0.wav.wav") == "0c540988"


def test_cifar_jpeg_limited_load(data_root, cache):
    ds = load_dataset("cifar10", data_root, cache_dir=cache, train_limit=200, test_limit=100)
    assert "JPEG" in ds.info.note and ds.info.shape == (3, 32, 32)
    assert torch.bincount(ds.train.y).tolist() == [20] * 10
    assert torch.bincount(ds.test.y).tolist() == [10] * 10
    assert ds.train.x.shape == (200, 3, 32, 32) and 0 <= float(ds.train.x.min()) <= float(ds.train.x.max()) <= 1
    again = load_dataset("cifar10", data_root, cache_dir=cache, train_limit=200, test_limit=100)
    assert again.extra["cache_hit"] and torch.equal(again.train.x, ds.train.x)


@pytest.mark.slow
def test_cifar_jpeg_full_counts_and_mean(data_root):
    """Full decode of the 60,000 JPEGs (about a minute once; the default cache keeps it)."""
    ds = load_dataset("cifar10", data_root)
    assert torch.bincount(ds.train.y).tolist() == [5000] * 10
    assert torch.bincount(ds.test.y).tolist() == [1000] * 10
    assert np.allclose(ds.info.mean, (0.4913, 0.4821, 0.4465), atol=2e-4)
    again = load_dataset("cifar10", data_root)  # timing is asserted on MNIST (less noisy)
    assert again.extra["cache_hit"] and torch.equal(again.test.x, ds.test.x)
    lim = load_dataset("cifar10", data_root, train_limit=200, test_limit=100)
    for c in range(10):  # a limited load is the first k per class of the full load
        assert torch.equal(lim.train.x[lim.train.y == c], ds.train.x[ds.train.y == c][:20])


def test_split_sample_is_class_stratified_where_subset_is_not():
    # FSDD / CIFAR-10 folders are stored sorted by class: the first n test points can be a single
    # class, so every evaluation on "n points" uses Split.sample
    import torch

    from robustcompress.data.info import Split

    y = torch.arange(10).repeat_interleave(30)  # sorted by class, 30 each
    x = torch.arange(300, dtype=torch.float32).view(300, 1)
    split = Split(x, y)
    assert split.subset(60).y.unique().tolist() == [0, 1]
    s = split.sample(60)
    assert torch.bincount(s.y, minlength=10).tolist() == [6] * 10
    assert torch.equal(s.x.view(-1).long(), torch.sort(s.x.view(-1).long()).values)  # stored order
    assert torch.equal(s.y, y[s.x.view(-1).long()])  # inputs and labels stay paired
    assert split.sample(None) is split and split.sample(500) is split

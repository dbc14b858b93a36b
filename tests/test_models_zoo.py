"""Model zoo: every model builds for every dataset shape of its modality and keeps the contract."""

import pytest
import torch
from torch import nn

from robustcompress.data.info import DatasetInfo
from robustcompress.errors import UserInputError
from robustcompress.models import Normalize, build_model, check_contract, features, list_models

DIGITS = DatasetInfo("digits", (1, 8, 8), 10, tuple("0123456789"), mean=(0.3,), std=(0.4,))
MNIST = DatasetInfo("mnist", (1, 28, 28), 10, tuple("0123456789"), mean=(0.13,), std=(0.31,))
CIFAR = DatasetInfo("cifar10", (3, 32, 32), 10, tuple("abcdefghij"), mean=(0.49, 0.48, 0.45),
                    std=(0.25, 0.24, 0.26))
FSDD = DatasetInfo("fsdd", (1, 8000), 10, tuple("0123456789"), bounds=(-1.0, 1.0), modality="audio",
                   sample_rate=8000)
SPEECH = DatasetInfo("speech_commands", (1, 16000), 12, tuple("abcdefghijkl"), bounds=(-1.0, 1.0),
                     modality="audio", sample_rate=16000)
IMAGE_MODELS = ["lenet300", "lenet5", "cnn4", "vgg", "vgg_sparse", "vgg16", "resnet20", "resnet32",
                "resnet18", "wrn"]
CASES = [(m, i) for m in IMAGE_MODELS for i in (DIGITS, MNIST, CIFAR)] + [
    ("soundnet5", FSDD), ("soundnet5", SPEECH), ("lenet300", FSDD)]


def test_registry_lists_every_family():
    assert set(IMAGE_MODELS + ["soundnet5"]) <= set(list_models())


@pytest.mark.parametrize("name,info", CASES, ids=[f"{m}-{i.name}" for m, i in CASES])
def test_builds_runs_and_keeps_contract(name, info):
    torch.manual_seed(0)
    model = build_model(name, info).eval()
    check_contract(model)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len({id(m) for m in relus}) == len(relus) >= 2
    lo, hi = info.bounds
    x = lo + (hi - lo) * torch.rand(2, *info.shape)
    y = model(x)
    assert y.shape == (2, info.num_classes) and torch.isfinite(y).all()
    # every ReLU really executes (no functional relu bypassing the modules)
    acts = features(model, x, "relu")
    assert len(acts) == len(relus)
    assert model.robustcompress_spec["model"] == name


@pytest.mark.parametrize("name", ["lenet5", "resnet20", "soundnet5"])
def test_normalize_lives_inside_the_model(name):
    info = FSDD if name == "soundnet5" else CIFAR
    model = build_model(name, info).eval()
    assert isinstance(model.normalize, Normalize)
    x = torch.rand(3, *info.shape)
    mean = torch.tensor(info.mean).view(1, -1, *([1] * (x.dim() - 2)))
    std = torch.tensor(info.std).view(1, -1, *([1] * (x.dim() - 2)))
    ref = model.normalize(x)
    assert torch.allclose(ref, (x - mean) / std)
    # replacing normalisation by identity on pre-normalised inputs gives the same logits
    out = model(x)
    model.normalize = nn.Identity()
    model.input_shape = info.shape
    assert torch.allclose(model((x - mean) / std), out, atol=1e-5)


@pytest.mark.parametrize("name", ["lenet5", "resnet20", "vgg_sparse", "soundnet5"])
def test_wrong_input_shape_names_expected_and_got(name):
    info = FSDD if name == "soundnet5" else MNIST
    model = build_model(name, info)
    bad = torch.rand(2, 3, 32, 32)
    with pytest.raises(UserInputError, match=r"expects.*\(B, .*got \(2, 3, 32, 32\)"):
        model(bad)


def test_slices_of_sequential_models_still_work():
    model = build_model("lenet5", MNIST).eval()
    x = torch.rand(2, 1, 28, 28)
    head = model[:4]  # normalize, conv1, relu1, pool1
    assert head(x).shape == (2, 20, 12, 12)
    assert torch.equal(model[4:](head(x)), model(x))


def test_modality_mismatch_and_unknown_name_are_user_errors():
    with pytest.raises(UserInputError, match="soundnet5"):
        build_model("lenet5", FSDD)
    with pytest.raises(UserInputError, match="lenet5"):
        build_model("soundnet5", MNIST)
    with pytest.raises(UserInputError, match="choose one of"):
        build_model("lenet6", MNIST)
    with pytest.raises(UserInputError, match="6n"):
        build_model("wrn", CIFAR, depth=11)


def test_paper_shapes():
    # LeNet-5 Caffe: 20@5x5 and 50@5x5, fc 800 -> 500 on MNIST (no padding), 200 on 8x8 (padding 2)
    m = build_model("lenet5", MNIST)
    assert (m.conv1.out_channels, m.conv2.out_channels, m.fc1.in_features) == (20, 50, 800)
    assert build_model("lenet5", DIGITS).fc1.in_features == 50 * 2 * 2
    # LeNet-300-100
    assert [l.out_features for l in build_model("lenet300", MNIST).modules()
            if isinstance(l, nn.Linear)] == [300, 100, 10]
    # ResNet-20 has 0.27M parameters (He et al. table 6)
    n = sum(p.numel() for p in build_model("resnet20", CIFAR).parameters())
    assert 0.26e6 < n < 0.28e6
    # VGG-like of Guo et al.: 12 conv + 2 fc; VGG-16: 13 conv + 3 fc
    for name, c, f in [("vgg_sparse", 12, 2), ("vgg16", 13, 3)]:
        mods = list(build_model(name, CIFAR).modules())
        assert sum(isinstance(x, nn.Conv2d) for x in mods) == c
        assert sum(isinstance(x, nn.Linear) for x in mods) == f
    # ResNet-18: 17 3x3 convs + 3 shortcut convs + fc; WRN-32-10 (6n+2): 5 blocks per stage
    r18 = build_model("resnet18", CIFAR)
    assert sum(isinstance(x, nn.Conv2d) for x in r18.modules()) == 20
    w = build_model("wrn", CIFAR, depth=32, widen=1)
    assert len(w.layer1) == 5 and w.layer3[0].conv1.out_channels == 64


# Published parameter counts on CIFAR-10 (10 classes), checked within 2%:
# ResNet-20 / -32: He et al. 2016, table 6 (0.27 M / 0.46 M; option-A shortcuts are parameter-free).
# VGG-16 with BN and the CIFAR head 512-512-10: 13 conv layers = 14.71 M (the VGG-16 conv stack,
# Simonyan & Zisserman; BN replaces the conv biases, + 8 448 BN affine) + 2 x (512*512 + 512) +
# 5 130 = 0.53 M for the head: 15.25 M (the usual "VGG-16 ~15 M" of CIFAR robustness papers).
# WRN-28-10 36.5 M (Zagoruyko & Komodakis 2016, table 1); WRN-34-10 46.2 M (Madry et al. 2018's
# CIFAR-10 model), which is also wrn(depth=32, widen=10) under He's 6n+2 count (n = 5).
PAPER_PARAMS = [("resnet20", {}, 0.27e6), ("resnet32", {}, 0.46e6),
                ("resnet20", {"depth": 32}, 0.46e6), ("vgg16", {}, 15.25e6),
                ("wrn", {"depth": 28, "widen": 10}, 36.5e6), ("wrn", {"depth": 34, "widen": 10}, 46.2e6),
                ("wrn", {"depth": 32, "widen": 10}, 46.2e6)]


@pytest.mark.parametrize("name,kwargs,expected", PAPER_PARAMS,
                         ids=[f"{n}-{'-'.join(map(str, k.values())) or 'default'}" for n, k, _ in PAPER_PARAMS])
def test_parameter_counts_match_published_figures(name, kwargs, expected):
    with torch.device("meta"):  # shapes only: WRN-34-10 is never allocated
        model = build_model(name, CIFAR, **kwargs)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - expected) / expected < 0.02, f"{name} {kwargs}: {n} parameters, expected ~{expected:.3g}"


def test_resnet32_is_the_31_conv_resnet_of_guo_et_al():
    m = build_model("resnet32", CIFAR)
    mods = list(m.modules())
    assert sum(isinstance(x, nn.Conv2d) for x in mods) == 31  # option A: no shortcut convs
    assert sum(isinstance(x, nn.Linear) for x in mods) == 1
    assert m.robustcompress_spec["model"] == "resnet32"


def test_vgg_width_multiplier_keeps_the_layer_plan():
    full, quarter = build_model("vgg_sparse", CIFAR), build_model("vgg_sparse", CIFAR, width=0.25)
    for m in (full, quarter):
        mods = list(m.modules())
        assert (sum(isinstance(x, nn.Conv2d) for x in mods), sum(isinstance(x, nn.Linear) for x in mods)) == (12, 2)
    assert (quarter.conv1.out_channels, quarter.conv12.out_channels, quarter.fc1.out_features) == (16, 128, 128)
    n_full, n_q = (sum(p.numel() for p in m.parameters()) for m in (full, quarter))
    assert 0.05 < n_q / n_full < 0.08  # ~1/16: weights scale with width^2
    assert build_model("vgg16", CIFAR, width=0.5).conv13.out_channels == 256
    with pytest.raises(UserInputError, match="width"):
        build_model("vgg_sparse", CIFAR, width=0)


@pytest.mark.parametrize("info", [FSDD, SPEECH])
def test_soundnet5_keeps_paper_layers_at_8k_and_16k(info):
    m = build_model("soundnet5", info)
    convs = [x for x in m.modules() if isinstance(x, nn.Conv1d)]
    assert [(c.out_channels, c.kernel_size[0], c.stride[0], c.padding[0]) for c in convs] == [
        (16, 64, 2, 32), (32, 32, 2, 16), (64, 16, 2, 8), (128, 8, 2, 4), (256, 4, 2, 2)]
    assert (m.fc1.in_features, m.fc1.out_features, m.fc2.out_features) == (512, 256,
                                                                           info.num_classes)


def test_features_keep_the_graph_and_select_by_name():
    model = build_model("lenet5", MNIST)
    x = torch.rand(4, 1, 28, 28, requires_grad=True)
    logits, acts = features(model, x, ["relu1", "fc1"], return_logits=True)
    assert list(acts) == ["relu1", "fc1"] and acts["relu1"].shape == (4, 20, 24, 24)
    assert (acts["relu1"] >= 0).all()
    acts["fc1"].abs().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not model.conv1._forward_hooks  # hooks removed
    with pytest.raises(UserInputError, match="no module named"):
        features(model, x, ["conv9"])

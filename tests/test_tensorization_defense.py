"""tensorize / binarize / set_theta / the registered defenses / checkpoint rebuild / training recipe."""

import pytest
import torch
from torch import nn

from robustcompress.data import load_dataset
from robustcompress.defenses import get_defense
from robustcompress.defenses.base import DefenseContext
from robustcompress.defenses.tensorization import (
    binarize,
    eligible_layers,
    set_theta,
    tensorize,
    train_tensorized,
    tucker_layers,
)
from robustcompress.errors import UserInputError
from robustcompress.models import build_model
from robustcompress.nn.protocol import freeze_noise, model_properties, use_generator
from robustcompress.nn.tucker import TuckerConv1d, TuckerConv2d, TuckerLinear


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", train_limit=400, test_limit=200)


@pytest.fixture
def lenet(digits):
    torch.manual_seed(0)
    return build_model("lenet5", digits.info).eval()


def test_full_rank_theta1_model_equals_dense(lenet, digits):
    t = tensorize(lenet, rank=1.0, theta=1.0, keep_first_last=False)
    x = digits.test.x[:16]
    assert not model_properties(t).stochastic
    assert torch.allclose(t(x), lenet(x), atol=1e-4, rtol=1e-4)
    assert len(tucker_layers(t)) == 4


def test_input_model_untouched_and_first_last_kept(lenet):
    before = {k: v.clone() for k, v in lenet.state_dict().items()}
    t = tensorize(lenet, rank=0.5, theta=0.8)
    assert type(lenet.conv2) is nn.Conv2d
    assert all(torch.equal(v, lenet.state_dict()[k]) for k, v in before.items())
    assert type(t.conv1) is nn.Conv2d and type(t.fc2) is nn.Linear
    assert isinstance(t.conv2, TuckerConv2d) and isinstance(t.fc1, TuckerLinear)
    assert t.robustcompress_defenses[-1]["name"] == "tensorization"
    assert model_properties(t).stochastic_modules == ("conv2", "fc1")


def test_binary_keeps_first_last_real_even_when_tensorized(lenet):
    t = tensorize(lenet, theta=0.9, binary=True, keep_first_last=False)
    assert isinstance(t.conv1, TuckerConv2d) and not t.conv1.binary
    assert not t.fc2.binary and t.conv2.binary and t.fc1.binary
    assert model_properties(t).non_differentiable_modules == ("conv2", "fc1")


def test_binarize_baseline(lenet, digits):
    b = binarize(lenet).eval()
    props = model_properties(b)
    assert props.non_differentiable and not props.stochastic
    assert b(digits.test.x[:4]).shape == (4, 10)


def test_soundnet_conv1d_full_rank_equals_dense():
    from robustcompress.data.info import DatasetInfo

    info = DatasetInfo("fsdd", (1, 8000), 10, tuple("0123456789"), bounds=(-1.0, 1.0),
                       modality="audio", sample_rate=8000)
    torch.manual_seed(0)
    net = build_model("soundnet5", info).eval()
    t = tensorize(net, theta=1.0, keep_first_last=False).eval()
    assert sum(isinstance(m, TuckerConv1d) for m in t.modules()) == 5
    x = torch.rand(2, 1, 8000) * 2 - 1
    assert torch.allclose(t(x), net(x), atol=1e-4, rtol=1e-3)


def test_set_theta_and_errors(lenet):
    t = tensorize(lenet, theta=1.0)
    set_theta(t, 0.7)
    assert all(m.theta == 0.7 for m in tucker_layers(t))
    assert t.robustcompress_defenses[-1]["params"]["theta"] == 0.7
    with pytest.raises(UserInputError, match="theta"):
        set_theta(t, 1.5)
    with pytest.raises(UserInputError, match="no Tucker layer"):
        set_theta(lenet, 0.5)
    with pytest.raises(UserInputError, match="no layer to convert"):
        tensorize(nn.Sequential(nn.ReLU()))


def test_grouped_conv_is_skipped():
    net = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 2, 1),
                        nn.Conv2d(2, 2, 1))
    assert eligible_layers(net) == ["1", "2", "3"]


def test_checkpoint_rebuild_roundtrip(lenet, digits, tmp_path):
    from robustcompress.training import load_checkpoint, save_checkpoint

    spec = get_defense("tensorization")
    params = spec.Params(rank=0.5, theta=0.8, binary=True)
    out = spec.apply(lenet, params, DefenseContext(dataset=digits, device=torch.device("cpu")))
    model = out[""].eval()
    save_checkpoint(model, tmp_path / "t")
    back = load_checkpoint(tmp_path / "t")
    x = digits.test.x[:8]
    with use_generator(model, torch.Generator().manual_seed(1)):
        a = model(x)
    with use_generator(back, torch.Generator().manual_seed(1)):
        b = back(x)
    assert torch.allclose(a, b, atol=1e-5)
    assert back.robustcompress_defenses[-1]["params"]["theta"] == 0.8


def test_whole_model_under_torch_func(lenet, digits):
    t = tensorize(lenet, rank=0.5, theta=0.8, granularity="sample", keep_first_last=False)
    x = digits.test.x[:3]

    def loss(xi):
        return t(xi.unsqueeze(0)).logsumexp(-1).sum()

    g = torch.func.vmap(torch.func.grad(loss), randomness="different")(x)
    assert g.shape == x.shape and torch.isfinite(g).all()
    with freeze_noise(t):
        g1 = torch.func.vmap(torch.func.grad(loss))(x)
        xr = x.clone().requires_grad_(True)
        (ref,) = torch.autograd.grad(t(xr).logsumexp(-1).sum(), xr)
    assert torch.allclose(g1, ref, atol=1e-5)


@pytest.mark.slow
def test_train_tensorized_recipe_keeps_accuracy(digits):
    """theta=1 start then training at theta=0.8: the stochastic model stays accurate."""
    from robustcompress.training import TrainConfig, evaluate_accuracy, fit

    torch.manual_seed(0)
    base = build_model("lenet5", digits.info)
    fit(base, digits, TrainConfig(epochs=10, batch_size=64, lr=3e-3), progress=False)
    assert evaluate_accuracy(base, digits.test) > 0.9
    t = train_tensorized(base, digits, 0.8, config=TrainConfig(epochs=3, batch_size=64, lr=1e-3),
                         progress=False)
    assert all(m.theta == 0.8 for m in tucker_layers(t))
    assert model_properties(t).stochastic
    acc = evaluate_accuracy(t, digits.test, mc_samples=4, generator=torch.Generator().manual_seed(0))
    assert acc > 0.78

"""Feature-squeezing defense: squeezed classifier, joint detector at 5% FPR, BPDA, rebuild."""

import pytest
import torch

from robustcompress.attacks import ThreatModel, run_attack
from robustcompress.data import load_dataset
from robustcompress.defenses import DefenseContext, get_defense
from robustcompress.defenses.feature_squeezing import FeatureSqueezing, calibrate_threshold, make_squeezers
from robustcompress.errors import UserInputError
from robustcompress.models import build_model
from robustcompress.nn import model_properties, straight_through
from robustcompress.nn.squeeze import bit_depth, median_filter
from robustcompress.training import TrainConfig, fit, load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def trained():
    ds = load_dataset("digits")
    torch.manual_seed(0)
    model = build_model("lenet300", ds.info, hidden=(64,))
    fit(model, ds, TrainConfig(epochs=4, lr=3e-3), progress=False)
    return ds, model.eval()


def test_squeezed_forward_and_score_definitions(trained):
    ds, model = trained
    fs = FeatureSqueezing(model, make_squeezers(ds.info, bits=3, median=2))
    x = ds.test.x[:20]
    torch.testing.assert_close(fs(x), model(median_filter(bit_depth(x, 3), 2)))
    p = torch.softmax(model(x), 1)
    s1 = (p - torch.softmax(model(bit_depth(x, 3)), 1)).abs().sum(1)
    s2 = (p - torch.softmax(model(median_filter(x, 2)), 1)).abs().sum(1)
    torch.testing.assert_close(fs.score(x), torch.maximum(s1, s2))
    assert make_squeezers(ds.info)[0].bits == 1  # grayscale default of the paper
    with pytest.raises(UserInputError):
        fs.detect(x)


def test_threshold_gives_5_percent_fpr_and_flags_adversarials(trained):
    ds, model = trained
    # on 8x8 digits a 2x2 median changes clean predictions as much as an attack: bit depth only
    fs = FeatureSqueezing(model, make_squeezers(ds.info, bits=4, median=0), classify="original")
    calib = ds.train.x[-800:]
    t = calibrate_threshold(fs, calib, fpr=0.05)
    with torch.no_grad():
        fpr_calib = float((fs.score(calib) > t).float().mean())
        fpr_test = float(fs.detect(ds.test.x).float().mean())
    assert 0.04 <= fpr_calib <= 0.05 + 1e-6
    assert fpr_test < 0.12
    x, y = ds.test.x[:200], ds.test.y[:200]
    res = run_attack("fgsm", model, x, y, ThreatModel(eps=0.05, shape=(1, 8, 8)))
    with torch.no_grad():
        flagged = float(fs.detect(res.x_adv[res.success]).float().mean())
    assert int(res.success.sum()) > 10 and flagged > fpr_test + 0.2


def test_bpda_gives_nonzero_input_gradient(trained):
    ds, model = trained
    fs = FeatureSqueezing(model, make_squeezers(ds.info, bits=5))
    assert model_properties(fs).non_differentiable
    x = ds.test.x[:8].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(fs(x), ds.test.y[:8]), x)
    assert torch.count_nonzero(g) == 0  # the true gradient of round() masks the attack
    with straight_through(fs):
        (g2,) = torch.autograd.grad(torch.nn.functional.cross_entropy(fs(x), ds.test.y[:8]), x)
    assert torch.count_nonzero(g2) > 0


def test_defense_spec_apply_and_checkpoint_rebuild(trained, tmp_path):
    ds, model = trained
    spec = get_defense("feature_squeezing")
    ctx = DefenseContext(dataset=ds, device=torch.device("cpu"), progress=False)
    out = spec.apply(model, spec.Params(n_calibration=300), ctx)[""]
    assert isinstance(out, FeatureSqueezing) and not torch.isnan(out.threshold)
    assert out.robustcompress_defenses[-1]["name"] == "feature_squeezing"
    save_checkpoint(out, tmp_path / "fs", {})
    loaded = load_checkpoint(tmp_path / "fs").eval()
    x = ds.test.x[:16]
    torch.testing.assert_close(loaded(x), out(x))
    assert float(loaded.threshold) == pytest.approx(float(out.threshold))
